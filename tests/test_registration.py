"""Registration envs, the SDM and the alignment search: contracts, exactness, oracle, bad input."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import SimpleITK as sitk
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.search import AlignConfig, AlignmentOracle, align, refine_alignment, register, write_registration
from envs import io
from envs.core import Volume, euler_matrix, euler_transform, params_from_transform, rigid_fit
from envs.data import Dataset, multimodal_lut
from envs.phantom import PhantomConfig, deformation_modes, generate_phantom, mean_phantom, phantom_dataset
from envs.tasks import (
    RIGID_ACTION_NAMES,
    UNIT,
    DeformableWorld,
    RigidRegistrationEnv,
    RigidWorld,
    StatisticalDeformationModel,
    dice_scores,
    fit_sdm_from_volumes,
    phantom_sdm,
    phantom_structures,
    shape_only_config,
)

SMALL = {"levels_mm": (8.0, 4.0), "obs_size": 17}
RIGID = {**SMALL, "translation_steps_mm": (6.0, 0.5), "rotation_steps_deg": (6.0, 0.5)}
REAL_CT = Path(__file__).parent / "data" / "real_ct" / "lung2_ct_3mm.nrrd"


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return phantom_dataset(2, 1, 2, seed=5, config=PhantomConfig(spacing_mm=4.0))


@pytest.fixture(scope="module")
def shape_dataset() -> Dataset:
    return phantom_dataset(2, 1, 2, seed=5, config=shape_only_config(PhantomConfig(spacing_mm=4.0)))


@pytest.fixture(scope="module")
def sdm() -> StatisticalDeformationModel:
    return phantom_sdm(n_fields=12, k=6, spacing_mm=8.0)


@pytest.fixture(scope="module")
def atlas() -> tuple[Volume, Volume, dict]:
    template = mean_phantom(PhantomConfig(spacing_mm=4.0))
    return template.volume, template.labels, template.landmarks


def rigid_env(dataset: Dataset, **kwargs) -> gym.Env:
    return gym.make(envs.RIGID_ENV_ID, dataset=dataset, **{**RIGID, **kwargs})


def sdm_env(shape_dataset: Dataset, sdm, atlas, **kwargs) -> gym.Env:
    volume, labels, landmarks = atlas
    return gym.make(
        envs.DEFORMABLE_ENV_ID,
        dataset=shape_dataset,
        sdm=sdm,
        atlas=volume,
        atlas_labels=labels,
        atlas_landmarks=landmarks,
        **{**SMALL, **kwargs},
    )


def run_oracle(env: gym.Env, options: dict) -> dict:
    """Greedy on the true error under the coarse-to-fine schedule; returns the final info."""
    base = env.unwrapped
    _, info = env.reset(options=options)
    for _ in range(400):
        rewards = base.world.candidate_rewards(base._pair, base._level, base._params)
        _, _, terminated, _, info = env.step(int(np.argmax(rewards)))
        if terminated:
            return info
    raise AssertionError("the oracle did not converge in 400 steps")


# ---------------------------------------------------------------------- contracts
@pytest.mark.parametrize("which", ["rigid", "sdm"])
def test_registered_ids_pass_gymnasium_and_sb3_checks(which, dataset, shape_dataset, sdm, atlas) -> None:
    env = rigid_env(dataset) if which == "rigid" else sdm_env(shape_dataset, sdm, atlas)
    check_env(env.unwrapped, skip_render_check=True)
    with pytest.warns(UserWarning, match="unconventional shape"):  # 4-D uint8 boxes, see FACTS.md
        sb3_check_env(env.unwrapped)


@pytest.mark.parametrize("env_id", [envs.RIGID_ENV_ID, envs.DEFORMABLE_ENV_ID])
def test_zero_argument_make_works_on_phantoms(env_id: str) -> None:
    env = gym.make(env_id)
    observation, info = env.reset(seed=0)
    assert observation["patch"].shape == (2, 25, 25, 25)
    assert observation["patch"].dtype == np.uint8
    assert env.observation_space.contains(observation)
    _, reward, _terminated, _truncated, info = env.step(0)
    assert np.isfinite(reward)
    assert info["error_mm"] >= 0
    assert env.spec.max_episode_steps == 50


@pytest.mark.parametrize("which", ["rigid", "sdm"])
def test_same_seed_gives_the_same_rollout(which, dataset, shape_dataset, sdm, atlas) -> None:
    def rollout() -> list:
        env = rigid_env(dataset) if which == "rigid" else sdm_env(shape_dataset, sdm, atlas)
        env.action_space.seed(3)
        observation, info = env.reset(seed=11)
        trace = [observation["patch"].sum(), info["error_mm"]]
        for _ in range(8):
            observation, reward, *_, info = env.step(env.action_space.sample())
            trace += [int(observation["patch"].sum()), reward, tuple(info["params"])]
        return trace

    assert rollout() == rollout()


def test_actions_follow_the_table_and_rewards_are_the_error_decrease(dataset: Dataset) -> None:
    env = rigid_env(dataset, schedule="random")  # no level change: the steps stay those of level 0
    base = env.unwrapped
    assert len(RIGID_ACTION_NAMES) == env.action_space.n == 12
    _, info = env.reset(options={"case_id": "phantom_train_000", "level": 0, "offset": [10, -5, 3, 8, -4, 6]})
    for action, name in enumerate(RIGID_ACTION_NAMES):
        before_params, before_error = info["params"].copy(), info["error_mm"]
        _, reward, _, _, info = env.step(action)
        moved = info["params"] - before_params
        index, sign = divmod(action, 2)
        expected = np.zeros(6)
        expected[index] = -6.0 if sign else 6.0  # level 0: 6 mm and 6 deg steps
        np.testing.assert_allclose(moved, expected, atol=1e-9, err_msg=name)
        assert reward == pytest.approx((before_error - info["error_mm"]) / 6.0)
    assert base.world.levels_mm == (8.0, 4.0)


# ---------------------------------------------------------------------- exactness
def test_euler_parameters_match_simpleitk_both_ways() -> None:
    params = np.array([12.5, -3.0, 7.25, 21.0, -13.0, 37.0])
    center = np.array([5.0, -20.0, 30.0])
    transform = euler_transform(params, center)
    np.testing.assert_allclose(
        np.array(transform.GetMatrix()).reshape(3, 3), euler_matrix(params[3:]), atol=1e-12
    )
    np.testing.assert_allclose(params_from_transform(transform, center), params, atol=1e-9)
    points = np.random.default_rng(0).uniform(-100, 100, (20, 3))
    moved = np.array([transform.TransformPoint(p.tolist()) for p in points])
    fitted, rms = rigid_fit(points, moved, center)
    np.testing.assert_allclose(fitted, params, atol=1e-8)
    assert rms < 1e-9


@pytest.mark.parametrize("level", [0, 1])
def test_env_resampling_equals_simpleitk_resample(dataset: Dataset, level: int) -> None:
    """The moving channel after actions == sitk.Resample(moving level, obs grid, transform)."""
    env = rigid_env(dataset, schedule="random")
    base = env.unwrapped
    observation, _ = env.reset(options={"case_id": "phantom_train_001", "level": level, "params": [0] * 6})
    for action in (0, 0, 3, 6, 9, 10, 11, 4):  # +tx +tx -ty +rx -ry +rz -rz +tz
        observation, *_ = env.step(action)
    pair, world = base._pair, base.world
    reference = sitk.Image([world.obs_size] * 3, sitk.sitkFloat32)
    reference.SetSpacing([world.levels_mm[level]] * 3)
    reference.SetOrigin(pair.grid_origins_lps_mm[level].tolist())
    moving = sitk.Cast(pair.moving.levels[level].to_sitk(), sitk.sitkFloat32)
    expected = sitk.GetArrayFromImage(
        sitk.Resample(moving, reference, base.transform(), sitk.sitkLinear, 0.0)
    )
    assert base.params.tolist() != [0] * 6
    difference = np.abs(np.rint(expected) - observation["patch"][1].astype(float))
    assert difference.max() <= 1.0  # rounding of .5 ties at most
    assert observation["patch"][1].any()


def test_moving_copy_is_the_fixed_volume_through_the_truth(dataset: Dataset) -> None:
    """Variant pairs carry a known rigid motion: at the true parameters the channels agree."""
    world = RigidWorld(dataset, "train", variants_per_case=2, variant_motion=(15.0, 10.0), **RIGID)
    pair = world.pair(1)
    assert np.abs(pair.truth).max() > 1.0
    aligned = world.observation(pair, 1, np.rint(pair.truth * UNIT))["patch"].astype(float)
    shifted = np.rint((pair.truth + np.array([8, 0, 0, 0, 6, 0])) * UNIT)
    off = world.observation(pair, 1, shifted)["patch"].astype(float)
    inside = aligned[1] > 0
    error_aligned = np.abs(aligned[0] - aligned[1])[inside].mean()
    error_off = np.abs(off[0] - off[1])[off[1] > 0].mean()
    assert error_aligned < 0.5 * error_off
    assert world.errors_mm(pair, np.rint(pair.truth * UNIT))[0] < 0.01


# ---------------------------------------------------------------------- oracle
@pytest.mark.parametrize(("contrast", "misalignment"), [("same", 30.0), ("multimodal", 60.0)])
def test_oracle_takes_every_test_pair_below_1mm(dataset: Dataset, contrast: str, misalignment: float) -> None:
    env = RigidRegistrationEnv(dataset, split="test", schedule="coarse", contrast=contrast, **RIGID)
    rng = np.random.default_rng(2)
    for case in env.world.cases:
        for _ in range(2):
            offset = np.concatenate(
                [rng.uniform(-1, 1, 3) * misalignment, rng.uniform(-1, 1, 3) * misalignment]
            )
            info = run_oracle(env, {"case_id": case.case_id, "offset": offset})
            assert info["error_mm"] < 1.0


def test_sdm_oracle_takes_every_test_case_below_1mm(shape_dataset, sdm, atlas) -> None:
    env = sdm_env(shape_dataset, sdm, atlas, split="test", schedule="coarse", coefficient_steps=(0.4, 0.05))
    for case in env.unwrapped.world.cases:
        info = run_oracle(env, {"case_id": case.case_id, "params": np.zeros(6)})
        start = env.unwrapped._trajectory[0]
        assert info["error_mm"] < 1.0 < start


def test_align_with_the_oracle_matches_the_env(dataset: Dataset) -> None:
    world = RigidWorld(dataset, "test", **RIGID)
    pair = world.pair(0)
    result = align(world, pair, AlignmentOracle(world), pair.truth + np.array([20, -15, 10, 25, -20, 15]))
    assert result.initial_error_mm > 30
    assert result.error_mm < 1.0
    assert result.trajectory_params.shape == (result.steps + 1, 6)
    assert result.trajectory_levels[0] == 0
    assert result.trajectory_levels[-1] == 1


def test_training_episodes_terminate_below_the_threshold_at_the_finest_level(dataset: Dataset) -> None:
    env = rigid_env(dataset, schedule="random")
    _, info = env.reset(options={"case_id": "phantom_train_000", "level": 1, "offset": [0.7, 0, 0, 0, 0, 0]})
    assert 0.5 < info["error_mm"] < 1.0
    _, _, terminated, _, info = env.step(1)  # -tx by 0.5 mm
    assert terminated
    assert info["error_mm"] < 0.3
    _, info = env.reset(options={"case_id": "phantom_train_000", "level": 0, "offset": [0.7, 0, 0, 0, 0, 0]})
    _, _, terminated, _, info = env.step(1)  # the same move at the coarse level: not the finest
    assert not terminated


# ---------------------------------------------------------------------- SDM
def test_sdm_fit_recovers_the_generators_modes(sdm: StatisticalDeformationModel) -> None:
    true_modes, true_std = deformation_modes(PhantomConfig(spacing_mm=8.0))
    a = np.linalg.qr(true_modes.reshape(6, -1).T.astype(np.float64))[0]
    b = np.linalg.qr(sdm.modes.reshape(6, -1).T.astype(np.float64))[0]
    cosines = np.linalg.svd(a.T @ b, compute_uv=False)
    angles = np.degrees(np.arccos(np.clip(cosines, -1, 1)))
    assert angles.max() < 5.0  # subspace angles (12 fields, 6 modes)
    assert sdm.explained_variance_ratio.sum() > 0.99
    assert sdm.std_mm[0] == pytest.approx(true_std[0], rel=0.35)
    # A subject's own field is reproduced by projecting it on the model (< 0.3 mm RMS).
    subject = generate_phantom(12345, shape_only_config(PhantomConfig(spacing_mm=8.0)))
    points = subject.volume.index_to_lps(
        np.argwhere(np.ones(subject.volume.shape_zyx))[:, ::-1].astype(float)
    )
    field = subject.displacement_lps_mm.reshape(-1, 3)
    coefficients = sdm.project(points, field)
    residual = sdm.displacement(coefficients, points) - field
    assert np.sqrt(np.mean(np.sum(residual**2, axis=1))) < 0.3


def test_sdm_save_load_round_trip_and_warp(tmp_path: Path, sdm, atlas) -> None:
    path = sdm.save(tmp_path / "model.npz")
    loaded = StatisticalDeformationModel.load(path)
    np.testing.assert_array_equal(loaded.modes, sdm.modes)
    assert loaded.spacing_mm == sdm.spacing_mm
    assert loaded.k == sdm.k
    _volume, labels, _ = atlas
    # Warping the atlas labels by a subject's coefficients reproduces the subject's labels.
    subject = generate_phantom(777, shape_only_config(PhantomConfig(spacing_mm=4.0)))
    points = subject.volume.index_to_lps(
        np.argwhere(np.ones(subject.volume.shape_zyx))[:, ::-1].astype(float)
    )
    coefficients = sdm.project(points[::7], subject.displacement_lps_mm.reshape(-1, 3)[::7])
    warped = loaded.warp(labels, subject.labels, coefficients, labels=True)
    unwarped = loaded.warp(labels, subject.labels, -coefficients, labels=True)
    structures = phantom_structures()
    good = np.nanmean(list(dice_scores(subject.labels.voxels, warped.voxels, structures).values()))
    bad = np.nanmean(list(dice_scores(subject.labels.voxels, unwarped.voxels, structures).values()))
    assert good > 0.85
    assert good > bad + 0.05


def test_sdm_from_registered_volumes_uses_the_given_registration() -> None:
    grid = Volume(np.zeros((6, 7, 8), np.int16), (10.0, 10.0, 10.0), (-35.0, -30.0, -25.0))
    rng = np.random.default_rng(0)
    bumps = [rng.normal(0, 2, 3) for _ in range(4)]

    def register(fixed: Volume, moving: Volume) -> np.ndarray:
        return np.broadcast_to(bumps[int(fixed.name)], (*fixed.shape_zyx, 3)).copy()

    volumes = [grid.with_voxels(grid.voxels, name=str(i)) for i in range(4)]
    model = fit_sdm_from_volumes(grid, volumes, 2, register, spacing_mm=10.0)
    np.testing.assert_allclose(model.mean[0, 0, 0], np.mean(bumps, axis=0), atol=1e-5)
    assert model.k == 2
    assert model.n_fields == 4


# ---------------------------------------------------------------------- bad input
def test_k_larger_than_the_training_fields_is_a_clear_error() -> None:
    grid = Volume(np.zeros((4, 4, 4), np.uint8), (8.0, 8.0, 8.0))
    fields = np.random.default_rng(0).normal(size=(3, 4, 4, 4, 3))
    with pytest.raises(ValueError, match=r"k=5 modes is larger than the 3 training fields allow"):
        StatisticalDeformationModel.fit(fields, grid, 5)


def test_sdm_whose_grid_does_not_match_the_volume_is_a_clear_error(sdm, atlas) -> None:
    volume, _labels, _ = atlas
    far = Volume(volume.voxels, volume.spacing_xyz_mm, volume.origin_lps_mm + 900.0, name="elsewhere.nii.gz")
    with pytest.raises(ValueError, match=r"SDM grid .* covers only 0% of .*elsewhere.nii.gz"):
        sdm.warp(volume, far, np.zeros(sdm.k))


def test_not_an_sdm_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a medgym SDM file"):
        StatisticalDeformationModel.load(path)


def test_register_rejects_other_dimensionality_and_empty_overlap(dataset: Dataset) -> None:
    world = RigidWorld(dataset, "test", **RIGID)
    phantom = dataset.load("phantom_test_000").volume
    flat = sitk.Image([32, 32], sitk.sitkInt16)
    with pytest.raises(ValueError, match="moving image is 2-D; expected two 3-D volumes"):
        register(phantom, flat, AlignmentOracle(world), world)
    with pytest.raises(ValueError, match="does not overlap the fixed volume's region of interest"):
        register(phantom, phantom, AlignmentOracle(world), world, initial=[900, 0, 0, 0, 0, 0])


def test_bad_env_arguments_name_the_field(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="contrast: expected one of"):
        RigidWorld(dataset, "train", contrast="pet")
    with pytest.raises(ValueError, match="translation_steps_mm / rotation_steps_deg"):
        RigidWorld(dataset, "train", levels_mm=(8.0, 4.0), translation_steps_mm=(1.0,))
    # any spacing is taken (resampled to the levels); a much coarser scan is only a warning
    with pytest.warns(UserWarning, match=r"much coarser than the finest level \(1 mm\)"):
        RigidWorld(
            dataset, "train", levels_mm=(8.0, 1.0), translation_steps_mm=(4, 1), rotation_steps_deg=(4, 1)
        ).pair(0)


# ---------------------------------------------------------------------- real data, files
def test_multimodal_map_is_non_monotonic_and_keeps_zero() -> None:
    lut = multimodal_lut()
    assert lut[0] == 0
    assert np.any(np.diff(lut.astype(int)) < 0)
    assert np.any(np.diff(lut.astype(int)) > 0)
    assert lut[115] > lut[128] > lut[220]  # fat brighter than water, bone dark


def test_real_ct_registers_to_its_moved_copy_and_files_are_readable(tmp_path: Path) -> None:
    """A real chest CT (pyradiomics test data) against itself under a large known rigid motion."""
    fixed = io.read_volume(REAL_CT)
    world = RigidWorld(
        phantom_dataset(1, 0, 0), "train", levels_mm=(9.0, 4.5, 3.0), obs_size=21,
        translation_steps_mm=(6.0, 2.0, 0.5), rotation_steps_deg=(6.0, 2.0, 0.5),
    )  # fmt: skip
    truth = np.array([25.0, -18.0, 12.0, 20.0, -15.0, 25.0])
    center = fixed.center_lps_mm
    transform = euler_transform(truth, center)
    from envs.core import resample_isotropic

    moving = resample_isotropic(fixed, 3.0, transform=transform.GetInverse(), fill_value=-1024.0)
    points = fixed.index_to_lps(np.argwhere(fixed.voxels[::8, ::8, ::8] > -300)[:, ::-1] * 8.0)
    moved_points = np.array([transform.TransformPoint(p.tolist()) for p in points])
    pair = world.pair_from_volumes(fixed, moving, points, moved_points)
    result = align(world, pair, AlignmentOracle(world), np.zeros(6))
    assert result.initial_error_mm > 30
    assert result.error_mm < 1.0
    answer = world.transform(pair, np.rint(result.params * UNIT))
    written = write_registration(tmp_path, fixed, moving, answer, result, param_names=world.param_names)
    reread = io.read_transform(written["transform"])
    mapped = np.array(reread.TransformPoint(points[0].tolist()))
    assert np.linalg.norm(mapped - moved_points[0]) < 1.5
    warped = io.read_volume(written["warped"])
    assert warped.shape_zyx == fixed.shape_zyx
    assert (tmp_path / "trajectory.csv").read_text().startswith("step,level,tx_mm")


def test_sdm_registration_writes_a_displacement_field(tmp_path: Path, shape_dataset, sdm, atlas) -> None:
    volume, labels, landmarks = atlas
    world = DeformableWorld(shape_dataset, "test", sdm, volume, labels, landmarks, **SMALL)
    fixed = shape_dataset.load("phantom_test_000").volume
    field, result = register(fixed, None, AlignmentOracle(world), world)
    assert field.shape == (*fixed.shape_zyx, 3)
    written = write_registration(tmp_path, fixed, volume, field, result, labels=labels)
    image = sitk.ReadImage(str(written["displacement"]))
    assert image.GetNumberOfComponentsPerPixel() == 3
    assert io.read_volume(written["warped_labels"]).voxels.dtype == labels.voxels.dtype


@pytest.mark.parametrize("levels", [1, 2])
def test_refinement_polishes_a_nearby_answer(dataset: Dataset, levels: int) -> None:
    world = RigidWorld(dataset, "test", **RIGID)
    pair = world.pair(0)
    config = AlignConfig(max_steps_per_level=1, refine="sitk", refine_levels=levels)
    rough = align(
        world, pair, AlignmentOracle(world), pair.truth + np.array([2.0, -1.5, 1.0, 1.5, -1.0, 1.0]), config
    )
    assert rough.error_mm > 2.0
    refined = refine_alignment(world, pair, rough, config)
    assert refined.error_mm < 0.5 * rough.error_mm
    assert refined.trajectory_levels[-1] == world.n_levels
    assert refined.seconds > rough.seconds
    with pytest.raises(ValueError, match="refine_levels"):
        AlignConfig(refine="sitk", refine_levels=3)


def test_landmark_pairs_take_their_truth_from_shared_landmarks(dataset: Dataset) -> None:
    """Two different phantoms: the truth is the rigid fit of their landmarks, errors are at them."""
    world = RigidWorld(dataset, "train", pairing="landmarks", **RIGID)
    pair = world.pair(0)
    assert pair.case_id == "phantom_train_000->phantom_train_001"
    fixed = dataset.load("phantom_train_000").landmarks
    assert len(pair.control_fixed_lps_mm) == len(fixed)
    fitted, rms = rigid_fit(pair.control_fixed_lps_mm, pair.control_moving_lps_mm, pair.center_lps_mm)
    np.testing.assert_allclose(fitted, pair.truth, atol=1e-9)
    at_truth = world.errors_mm(pair, np.rint(pair.truth * UNIT))[0]
    assert at_truth <= rms * 1.5 + 0.01  # the residual of different anatomy, no better
    result = align(world, pair, AlignmentOracle(world), pair.truth + np.array([15, -10, 5, 10, -5, 8]))
    assert result.error_mm < result.initial_error_mm
    assert result.error_mm < at_truth + 1.0
