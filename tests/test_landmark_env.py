"""LandmarkEnv: the Gymnasium contract and every claim of its docstring; search on its own."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.search import OraclePolicy, SearchConfig, detect_landmarks
from envs.core import Volume
from envs.data import AugmentConfig, Dataset, appearance_bank, augmented_pyramid
from envs.phantom import LANDMARK_NAMES, phantom_dataset
from envs.tasks import ACTION_NAMES, ACTIONS_ZYX, LandmarkEnv, LandmarkWorld

LEVELS = (8.0, 4.0, 2.0)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return phantom_dataset(2, 1, 1, seed=3)


def make(dataset: Dataset, **kwargs) -> gym.Env:
    return gym.make(envs.LANDMARK_ENV_ID, dataset=dataset, **kwargs)


def test_registered_id_passes_gymnasium_and_sb3_checks(dataset: Dataset) -> None:
    env = make(dataset)
    check_env(env.unwrapped, skip_render_check=True)
    with pytest.warns(UserWarning, match="unconventional shape"):  # 4-D uint8 patches: see FACTS.md
        sb3_check_env(env.unwrapped)


def test_zero_argument_make_works_on_phantoms() -> None:
    env = gym.make(envs.LANDMARK_ENV_ID)
    observation, info = env.reset(seed=1)
    assert observation["patch"].shape == (1, 25, 25, 25)
    assert info["landmark"] in LANDMARK_NAMES


@pytest.mark.parametrize(("patch_size", "frames"), [(25, 1), (45, 4)])
def test_observation_space_matches_the_docstring(dataset: Dataset, patch_size: int, frames: int) -> None:
    env = make(dataset, patch_size=patch_size, frames=frames)
    space = env.observation_space
    assert space["patch"].shape == (frames, patch_size, patch_size, patch_size)
    assert space["patch"].dtype == np.uint8
    assert space["landmark"].n == len(LANDMARK_NAMES)
    assert space["level"].n == 3
    observation, _ = env.reset(seed=0)
    assert space.contains(observation)
    for _ in range(3):
        observation, *_ = env.step(0)
    assert space.contains(observation)
    if frames > 1:
        # Frame 0 is the newest position: after three moves the oldest frames still show the start.
        assert not np.array_equal(observation["patch"][0], observation["patch"][-1])


def test_actions_move_one_level_voxel_in_the_named_lps_direction(dataset: Dataset) -> None:
    env = make(dataset)
    assert ACTION_NAMES == ("superior", "inferior", "posterior", "anterior", "left", "right")
    lps_axis = {0: (2, 1), 1: (2, -1), 2: (1, 1), 3: (1, -1), 4: (0, 1), 5: (0, -1)}
    for action, (axis, sign) in lps_axis.items():
        _, info = env.reset(seed=action, options={"level": 1})
        _, _, _, _, after = env.step(action)
        delta = after["position_lps_mm"] - info["position_lps_mm"]
        expected = np.zeros(3)
        expected[axis] = sign * LEVELS[1]
        np.testing.assert_allclose(delta, expected, atol=1e-9)
    assert len(ACTIONS_ZYX) == env.action_space.n == 6


def test_reward_is_the_distance_decrease_in_steps(dataset: Dataset) -> None:
    env = make(dataset)
    _, info = env.reset(seed=4, options={"level": 2})
    for action in [0, 2, 4, 1, 3, 5, 0, 0]:
        _, reward, terminated, truncated, after = env.step(action)
        expected = (info["distance_mm"] - after["distance_mm"]) / after["spacing_mm"]
        assert reward == pytest.approx(expected, abs=1e-9)
        assert -1.0 <= reward <= 1.0
        assert not terminated
        assert not truncated
        assert after["previous_pose"][2] == 2
        info = after


def test_moves_out_of_the_volume_are_blocked_and_penalised(dataset: Dataset) -> None:
    env = make(dataset)
    env.reset(seed=0, options={"level": 0})
    world = env.unwrapped.world
    shape = world.variant(env.unwrapped.pose()[0]).pyramid.levels[0].shape_zyx
    for _ in range(shape[0] + 2):  # walk inferior (-z) until the border
        _, reward, _, _, info = env.step(1)
    assert info["blocked"]
    assert reward == -1.0
    assert env.unwrapped.pose()[3] == 0


def test_truncation_comes_from_the_registered_time_limit(dataset: Dataset) -> None:
    env = make(dataset, max_episode_steps=7)
    env.reset(seed=0)
    ends = [env.step(env.action_space.sample())[2:4] for _ in range(7)]
    assert ends[-1] == (False, True)
    assert all(end == (False, False) for end in ends[:-1])
    assert gym.spec(envs.LANDMARK_ENV_ID).max_episode_steps == 50


def test_same_seed_gives_the_same_rollout(dataset: Dataset) -> None:
    def rollout(seed: int) -> list:
        env = make(dataset, augment=AugmentConfig(variants_per_case=1))
        env.action_space.seed(seed)
        observation, info = env.reset(seed=seed)
        trace = [(observation["patch"].sum(), info["pose"].tolist())]
        for _ in range(20):
            observation, reward, *_, info = env.step(env.action_space.sample())
            trace.append((observation["patch"].sum(), reward, info["pose"].tolist()))
        return trace

    assert rollout(11) == rollout(11)
    assert rollout(11) != rollout(12)


def test_poses_rebuild_the_observations_exactly(dataset: Dataset) -> None:
    env = make(dataset, frames=3)
    observation, info = env.reset(seed=2)
    poses, observations = [info["pose"]], [observation]
    for action in [0, 0, 2, 5, 4]:
        observation, *_, info = env.step(action)
        poses.append(info["pose"])
        observations.append(observation)
    rebuilt = env.unwrapped.observations_from_poses(np.stack(poses))
    for row, observation in enumerate(observations):
        np.testing.assert_array_equal(rebuilt["patch"][row], observation["patch"])
        assert rebuilt["landmark"][row] == observation["landmark"]
        assert rebuilt["level"][row] == observation["level"]


def test_info_carries_position_distance_level_and_name(dataset: Dataset) -> None:
    env = make(dataset)
    _, info = env.reset(seed=0, options={"landmark": "T9_body", "level": 2, "case_id": "phantom_train_001"})
    assert info["landmark"] == "T9_body"
    assert info["level"] == 2
    assert info["spacing_mm"] == 2.0
    assert info["case_id"] == "phantom_train_001"
    truth = dataset.load("phantom_train_001").landmarks["T9_body"]
    assert info["distance_mm"] == pytest.approx(np.linalg.norm(info["position_lps_mm"] - truth), abs=1e-6)


def test_finer_levels_start_near_the_target(dataset: Dataset) -> None:
    env = make(dataset)
    distances = {0: [], 2: []}
    for seed in range(20):
        for level in distances:
            _, info = env.reset(seed=seed, options={"level": level})
            distances[level].append(info["distance_mm"])
    assert max(distances[2]) <= np.sqrt(3) * 5 * 2.0 + 2.0  # +-5 voxels of 2 mm per axis
    assert np.median(distances[0]) > 40.0  # anywhere in the body


def test_coarse_schedule_descends_on_oscillation_and_ends_at_the_finest(dataset: Dataset) -> None:
    env = make(dataset, schedule="coarse")
    _, info = env.reset(seed=0, options={"landmark": "carina"})
    assert info["level"] == 0
    levels, terminated, steps = [0], False, 0
    for steps in range(1, 201):  # noqa: B007 (the count is reported below)
        # The oracle's greedy move: the action that reduces the distance most.
        unwrapped = env.unwrapped
        target = unwrapped._target()
        after = np.linalg.norm(unwrapped._position + ACTIONS_ZYX - target, axis=1)
        _, _, terminated, truncated, info = env.step(int(np.argmin(after)))
        levels.append(info["level"])
        if terminated or truncated:
            break
    assert terminated, f"no termination after {steps} steps"
    assert levels == sorted(levels)
    assert set(levels) == {0, 1, 2}
    # The env ends where the oscillation is detected: at most one finest voxel from the best
    # voxel (the search then picks the best point of the cycle, see test_oracle_search_...).
    assert info["distance_mm"] <= np.sqrt(3) * 2.0 * 1.5


def test_render_gives_three_slices_with_the_target(dataset: Dataset) -> None:
    env = make(dataset, render_mode="rgb_array")
    env.reset(seed=0, options={"level": 2})
    env.step(0)
    frame = env.render()
    assert frame.dtype == np.uint8
    assert frame.ndim == 3
    assert frame.shape[2] == 3
    assert frame.shape[0] == 192
    red = (frame[..., 0] == 255) & (frame[..., 1] == 40)
    assert red.any()  # the landmark is drawn


def test_bad_arguments_are_explained(dataset: Dataset) -> None:
    for size in (24, 3, 25.0):
        with pytest.raises(ValueError, match="patch_size"):
            LandmarkEnv(dataset, patch_size=size)
    with pytest.raises(ValueError, match="not in the data"):
        LandmarkEnv(dataset, landmarks=["nose_tip"])
    with pytest.raises(ValueError, match="coarse to fine"):
        LandmarkEnv(dataset, levels_mm=(2.0, 4.0))
    # any spacing is taken: a 2 mm phantom at a 0.5 mm finest level is resampled, with a warning
    env = LandmarkEnv(dataset, levels_mm=(4.0, 0.5))
    with pytest.warns(UserWarning, match=r"phantom_train.*much coarser than the finest level \(0.5 mm\)"):
        env.reset(seed=0)
    assert env.world.variant(0).pyramid.levels[-1].spacing_xyz_mm.tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="unknown option"):
        LandmarkEnv(dataset).reset(options={"lvl": 1})


def test_augmentation_moves_landmarks_exactly_with_the_image() -> None:
    # A dark volume with one bright blob at a landmark: after any warp, the blob's peak must be
    # where the warped landmark says.
    shape, spacing = (40, 48, 44), np.array([2.0, 1.5, 2.5])
    origin = np.array([-50.0, -40.0, -30.0])
    point = np.array([-5.0, 2.0, 12.0])
    zz, yy, xx = np.indices(shape)
    probe = Volume(np.zeros(shape, np.float32), spacing, origin)
    positions = probe.index_to_lps(np.stack([xx, yy, zz], axis=-1))
    voxels = -1000 + 2000 * np.exp(-np.sum((positions - point) ** 2, axis=-1) / (2 * 2.5**2))
    volume = probe.with_voxels(voxels.astype(np.float32))
    config = AugmentConfig(rotation_deg=15, scale=0.1, translation_mm=8, elastic_mm=3.0, noise=0.0, bias=0.0)
    for seed in range(3):
        pyramid, moved = augmented_pyramid(volume, {"spot": point}, (2.0,), "ct", config, seed)
        level = pyramid.levels[0]
        peak = np.unravel_index(np.argmax(level.voxels), level.shape_zyx)
        peak_lps = pyramid.lps_of_index(0, peak)
        assert np.linalg.norm(moved["spot"] - point) > 1.0  # it really moved
        assert np.linalg.norm(peak_lps - moved["spot"]) <= 2.0  # within one 2 mm voxel


def test_oracle_search_reaches_every_landmark_from_the_corners(dataset: Dataset) -> None:
    world = LandmarkWorld(dataset, "test", LANDMARK_NAMES, LEVELS, 25, 1, None, None)
    variant = world.variant(0)
    coarse = variant.pyramid.levels[0]
    corners = np.array(
        [
            [z, y, x]
            for z in (0, coarse.shape_zyx[0] - 1)
            for y in (0, coarse.shape_zyx[1] - 1)
            for x in (0, coarse.shape_zyx[2] - 1)
        ]
    )
    starts = variant.pyramid.lps_of_index(0, corners)
    for start in starts:
        detections = detect_landmarks(world, variant, OraclePolicy(), starts_lps_mm=start[np.newaxis])
        for row, name in enumerate(LANDMARK_NAMES):
            error = np.abs(detections[name].position_lps_mm - variant.landmarks_lps_mm[row])
            assert detections[name].found
            assert np.all(error <= LEVELS[-1] / 2 + 1e-6), (name, error)  # the nearest finest voxel


def test_search_reports_an_agent_that_leaves_the_volume_as_not_found(dataset: Dataset) -> None:
    world = LandmarkWorld(dataset, "test", LANDMARK_NAMES, LEVELS, 25, 1, None, None)
    variant = world.variant(0)

    def always_inferior(observations, variant, state, active):
        q = np.zeros((len(active), 6))
        q[:, 1] = 1.0
        return q

    detections = detect_landmarks(
        world, variant, always_inferior, landmarks=["carina"], config=SearchConfig(starts=2)
    )
    assert not detections["carina"].found
    assert np.isnan(detections["carina"].position_lps_mm).all()


def test_search_batches_all_landmarks_and_is_reproducible(dataset: Dataset) -> None:
    world = LandmarkWorld(dataset, "test", LANDMARK_NAMES, LEVELS, 25, 1, None, None)
    variant = world.variant(0)
    calls = []

    def counting_oracle(observations, variant, state, active):
        calls.append(len(active))
        return OraclePolicy()(observations, variant, state, active)

    first = detect_landmarks(world, variant, counting_oracle, config=SearchConfig(starts=3), seed=5)
    again = detect_landmarks(world, variant, OraclePolicy(), config=SearchConfig(starts=3), seed=5)
    assert calls[0] == len(LANDMARK_NAMES) * 3  # one forward pass for all agents
    for name in LANDMARK_NAMES:
        np.testing.assert_array_equal(first[name].position_lps_mm, again[name].position_lps_mm)
        assert first[name].confidence > 0.5


def test_landmarks_outside_the_field_of_view_are_never_sought(tmp_path) -> None:
    from envs import io
    from envs.phantom import generate_phantom

    phantom = generate_phantom(7)
    volume = phantom.volume
    # Keep the lower 60 slices (z is superior): the carina and the upper vertebrae fall outside.
    cropped = Volume(volume.voxels[:60], volume.spacing_xyz_mm, volume.origin_lps_mm, volume.direction)
    io.write_volume(cropped, tmp_path / "crop.nii.gz")
    io.write_landmarks(phantom.landmarks, tmp_path / "crop.fcsv")  # all 10, some outside
    (tmp_path / "manifest.csv").write_text(
        "case_id,image,landmarks,split\ncrop,crop.nii.gz,crop.fcsv,train\n"
    )
    env = LandmarkEnv(str(tmp_path / "manifest.csv"), landmarks=list(LANDMARK_NAMES))
    with pytest.raises(ValueError, match=r"'carina' is not in the field of view of case 'crop'"):
        env.reset(seed=0, options={"landmark": "carina"})
    seen = set()
    for seed in range(30):
        _, info = env.reset(seed=seed)
        seen.add(info["landmark"])
        for _ in range(5):
            _, reward, *_ = env.step(env.action_space.sample())
            assert np.isfinite(reward)
    assert "carina" not in seen
    assert "L2_body" in seen


# ---------------------------------------------------------------------- per-episode appearance
def test_poses_rebuild_observations_exactly_with_appearances(dataset: Dataset) -> None:
    augment = AugmentConfig(variants_per_case=0, appearances=8)  # appearances need no spatial variant
    env = make(dataset, frames=3, augment=augment)
    poses, observations, appearances = [], [], set()
    for seed in range(6):
        observation, info = env.reset(seed=seed)
        poses.append(info["pose"])
        observations.append(observation)
        appearances.add(info["appearance"])
        for action in [0, 2, 5]:
            observation, *_, info = env.step(action)
            poses.append(info["pose"])
            observations.append(observation)
    assert len(poses[0]) == env.unwrapped.world.pose_dim == 4 + 3 * 3
    assert [pose[-1] for pose in poses[::4]] == [pose[-1] for pose in poses[3::4]]  # fixed per episode
    assert len(appearances - {0}) >= 2  # drawn per episode, not one for all
    rebuilt = env.unwrapped.observations_from_poses(np.stack(poses))
    for row, observation in enumerate(observations):
        np.testing.assert_array_equal(rebuilt["patch"][row], observation["patch"])
    # an appearance really changes the patch, and keeps "outside the field of view" at 0
    pose = next(pose for pose in poses if pose[-1] != 0)
    plain = env.unwrapped.observations_from_poses(np.concatenate([pose[:-1], [0]])[np.newaxis])["patch"]
    changed = env.unwrapped.observations_from_poses(pose[np.newaxis])["patch"]
    assert not np.array_equal(plain, changed)
    np.testing.assert_array_equal(changed == 0, plain == 0)


def test_appearance_zero_renders_what_an_env_without_appearances_renders(dataset: Dataset) -> None:
    plain = make(dataset, augment=AugmentConfig(variants_per_case=1))
    varied = make(dataset, augment=AugmentConfig(variants_per_case=1, appearances=16))
    for seed in range(3):
        observation, info = plain.reset(seed=seed)
        # the appearance is drawn after everything else: same case, landmark, level and start
        _, drawn_info = varied.reset(seed=seed)
        assert drawn_info["pose"][:-1].tolist() == info["pose"][:-1].tolist()
        other, other_info = varied.reset(seed=seed, options={"appearance": 0})
        for action in [0, 3, 4, 4]:
            np.testing.assert_array_equal(other["patch"], observation["patch"])
            assert other_info["pose"].tolist() == info["pose"].tolist()
            observation, reward, *_, info = plain.step(action)
            other, other_reward, *_, other_info = varied.step(action)
            assert other_reward == reward
    with pytest.raises(ValueError, match=r"appearance must be in 0\.\.15"):
        varied.reset(seed=0, options={"appearance": 16})
    with pytest.raises(ValueError, match=r"appearance must be in 0\.\.0"):
        plain.reset(seed=0, options={"appearance": 1})


def test_appearance_bank_is_seeded_and_keeps_outside_the_field_of_view_at_zero() -> None:
    config = AugmentConfig(appearances=32, contrast=0.5, invert=0.3)
    bank = appearance_bank(config, seed=4, edge_vox=9)
    again = appearance_bank(config, seed=4, edge_vox=9)
    other = appearance_bank(config, seed=5, edge_vox=9)
    np.testing.assert_array_equal(bank.tables, again.tables)
    np.testing.assert_array_equal(bank.codes, again.codes)
    assert not np.array_equal(bank.tables, other.tables)
    np.testing.assert_array_equal(bank.lut(0), np.arange(256))
    patch = np.random.default_rng(0).integers(0, 256, (9, 9, 9)).astype(np.uint8)
    patch[:3] = 0
    monotonic = 0
    for appearance in range(len(bank)):
        rendered = bank.render(patch, appearance)
        assert rendered.dtype == np.uint8
        np.testing.assert_array_equal(rendered == 0, patch == 0)  # 0 stays 0, tissue never becomes 0
        monotonic += bool(np.all(np.diff(bank.lut(appearance)[1:].astype(int)) >= 0))
    assert 0 < monotonic < len(bank)  # some maps reorder the tissues (T1-vs-T2-like), some do not


# ---------------------------------------------------------------------- field of view and mask
def test_cropped_variants_make_landmarks_outside_the_box_absent(dataset: Dataset) -> None:
    augment = AugmentConfig(variants_per_case=2, elastic_mm=0.0, fov_crop=1.0, fov_keep=(0.4, 0.5))
    levels = (8.0, 4.0)  # no 2 mm level: each warped variant resamples less
    world = LandmarkWorld(dataset, "train", LANDMARK_NAMES, levels, 25, 1, None, augment)
    original = world.variant(world.variant_index("phantom_train_000", 0))
    absent = 0
    for aug_id in (1, 2):
        variant = world.variant(world.variant_index("phantom_train_000", aug_id))
        finest = variant.pyramid.levels[-1]
        nonzero = np.argwhere(finest.voxels > 0)
        kept_fraction = np.ptp(nonzero, axis=0) / np.array(finest.shape_zyx)
        assert np.all(kept_fraction <= 0.5 + 0.05)  # only the box is left
        lower, upper = nonzero.min(axis=0) - 1, nonzero.max(axis=0) + 1
        for row, present in enumerate(variant.present()):
            if present:  # a present landmark lies in the kept box
                target = variant.targets_zyx[-1][row]
                assert np.all(target >= lower), LANDMARK_NAMES[row]
                assert np.all(target <= upper), LANDMARK_NAMES[row]
            else:
                assert np.isnan(variant.targets_zyx[0][row]).all()
        absent += int((~variant.present()).sum())
    assert original.present().all()
    assert absent > 0
    # the variants built above (cached by the dataset): phantom_train_000's only
    env = LandmarkEnv(dataset, augment=augment, levels_mm=levels, case_ids=["phantom_train_000"])
    for seed in range(12):
        _, info = env.reset(seed=seed)
        variant = env.world.variant(int(info["pose"][0]))
        assert variant.present()[LANDMARK_NAMES.index(info["landmark"])]
        _, reward, *_ = env.step(env.action_space.sample())
        assert np.isfinite(reward)


def test_masked_variants_keep_an_eroded_body_only(dataset: Dataset) -> None:
    subject = dataset.load("phantom_train_000")
    plain = AugmentConfig(rotation_deg=0, scale=0, translation_mm=0, elastic_mm=0, bias=0, noise=0)
    masked = AugmentConfig(
        rotation_deg=0,
        scale=0,
        translation_mm=0,
        elastic_mm=0,
        bias=0,
        noise=0,
        mask=1.0,
        mask_erosion_mm=(8, 8),
    )
    before, _ = augmented_pyramid(subject.volume, subject.landmarks, (4.0,), "ct", plain, seed=1)
    after, kept = augmented_pyramid(subject.volume, subject.landmarks, (4.0,), "ct", masked, seed=1)
    voxels_before, voxels_after = before.levels[0].voxels, after.levels[0].voxels
    assert np.all((voxels_after == voxels_before) | (voxels_after == 0))  # only removes
    removed = (voxels_before > 0) & (voxels_after == 0)
    assert 0.05 < removed.sum() / (voxels_before > 0).sum() < 0.6  # a rim, not everything
    # the lungs (dark, but inside the body) are kept: the mask fills holes before eroding
    centre = tuple(np.array(voxels_before.shape) // 2)
    assert voxels_after[centre] == voxels_before[centre]
    assert set(kept) <= set(subject.landmarks)
