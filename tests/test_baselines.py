"""Tests for the atlas-registration baseline on a small synthetic CT with a known rigid motion.

The atlas is a CT-like torso (air -1000 HU, body ~20 HU, a one-sided lung -800 HU and
asymmetric bones 500-700 HU) on an anisotropic 2 x 2.5 x 3 mm grid; the target is that
volume resampled under a known rigid motion (10 deg, ~12 mm) onto a different, isotropic
2.5 mm grid, with fresh noise. The exact landmark positions in the target are known.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from agents.baselines import AtlasConfig, AtlasResult, atlas_transfer, multi_atlas_transfer
from envs.core import Volume

SHAPE_ZYX = (48, 56, 64)
SPACING_XYZ_MM = (2.0, 2.5, 3.0)
# Sub-voxel accuracy: the finest atlas spacing is 2 mm and the target's 2.5 mm, and the motion
# is exactly rigid, so every landmark must land within one (finest) voxel of the truth.
TOLERANCE_MM = 2.0
# Landmarks relative to the volume centre (LPS mm): top of the spine, a bone blob, the lung
# apex and the sternum; all inside distinct structures so the alignment is unambiguous.
LANDMARK_OFFSETS_MM = {
    "spine_top": (0.0, 25.0, 45.0),
    "blob": (-22.0, -10.0, -25.0),
    "lung_apex": (18.0, -5.0, 40.0),
    "sternum": (0.0, -32.0, 10.0),
}
# Non-default, fast settings shared by the tests that need no deformable stage.
RIGID_AFFINE = AtlasConfig(deformable=False)


def _ellipsoid(points: np.ndarray, centre: tuple, semi_axes: tuple) -> np.ndarray:
    return np.sum(((points - np.asarray(centre)) / np.asarray(semi_axes)) ** 2, axis=-1) <= 1.0


def _make_atlas(seed: int = 0) -> tuple[Volume, dict[str, np.ndarray]]:
    geometry = Volume(np.zeros(SHAPE_ZYX, np.int16), SPACING_XYZ_MM, origin_lps_mm=(-63.0, -68.75, -70.5))
    centre = geometry.center_lps_mm
    index = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij")[::-1], axis=-1)
    points = geometry.index_to_lps(index.astype(np.float64)) - centre  # (z, y, x, 3) LPS mm
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE_ZYX, -1000.0)
    body = _ellipsoid(points, (0, 0, 0), (42, 40, 58))
    # Smooth soft-tissue texture gives mutual information structure inside the body as well.
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE_ZYX), 2.0) * 150.0
    hu[body] = 20.0 + texture[body]
    hu[_ellipsoid(points, (18, -5, 15), (14, 18, 28))] = -800.0  # left lung only: breaks symmetry
    spine = (np.hypot(points[..., 0], points[..., 1] - 25.0) <= 7.0) & (np.abs(points[..., 2]) <= 48.0)
    hu[spine] = 700.0
    hu[_ellipsoid(points, (-22, -10, -25), (8, 6, 10))] = 700.0
    hu[np.all(np.abs(points - np.array([0.0, -32.0, 10.0])) <= (4.0, 3.0, 20.0), axis=-1)] = 500.0
    hu += rng.normal(0.0, 10.0, SHAPE_ZYX)
    atlas = Volume(hu.astype(np.int16), SPACING_XYZ_MM, geometry.origin_lps_mm, name="atlas")
    landmarks = {name: centre + np.asarray(offset) for name, offset in LANDMARK_OFFSETS_MM.items()}
    return atlas, landmarks


def _rigid(angles_deg: tuple, translation_mm: tuple, centre: np.ndarray) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre.tolist())
    transform.SetRotation(*np.deg2rad(angles_deg).tolist())
    transform.SetTranslation(translation_mm)
    return transform


def _moved(
    source: Volume, landmarks: dict, transform: sitk.Transform, spacing_mm: float, seed: int
) -> tuple[Volume, dict[str, np.ndarray]]:
    """Resample ``source`` through ``transform`` onto an isotropic grid over the same box.

    SimpleITK's resampling transform maps *output* (target) points to *input* (source) points:
    target(x) = source(T(x)). A landmark p of the source therefore sits at T^-1(p) in the target.
    """
    lower, upper = source.extent_lps_mm
    size = np.ceil((upper - lower) / spacing_mm).astype(int)
    origin = lower + spacing_mm / 2.0 + 1.3  # a grid that does not share the source's voxel centres
    image = sitk.Resample(
        sitk.Cast(source.to_sitk(), sitk.sitkFloat32),
        size.tolist(),
        transform,
        sitk.sitkLinear,
        origin.tolist(),
        [spacing_mm] * 3,
        np.eye(3).reshape(-1).tolist(),
        -1000.0,
        sitk.sitkFloat32,
    )
    voxels = sitk.GetArrayFromImage(image) + np.random.default_rng(seed).normal(
        0.0, 10.0, image.GetSize()[::-1]
    )
    target = Volume.from_sitk(sitk.GetImageFromArray(voxels.astype(np.int16)), name="target")
    target = Volume(target.voxels, [spacing_mm] * 3, origin, name="target")
    inverse = transform.GetInverse()
    truth = {name: np.asarray(inverse.TransformPoint(p.tolist())) for name, p in landmarks.items()}
    return target, truth


def _errors_mm(found: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> np.ndarray:
    assert sorted(found) == sorted(truth)
    return np.array([np.linalg.norm(found[name] - truth[name]) for name in truth])


@pytest.fixture(scope="module")
def case() -> dict:
    atlas, landmarks = _make_atlas()
    motion = _rigid((4.0, -3.0, 10.0), (8.0, -6.0, 6.5), atlas.center_lps_mm)
    target, truth = _moved(atlas, landmarks, motion, spacing_mm=2.5, seed=1)
    result = atlas_transfer(atlas, landmarks, target)  # default config: rigid, affine, B-spline
    return {"atlas": atlas, "landmarks": landmarks, "target": target, "truth": truth, "result": result}


def test_atlas_transfer_recovers_the_rigid_motion(case: dict) -> None:
    result: AtlasResult = case["result"]
    errors = _errors_mm(result.landmarks, case["truth"])
    identity_errors = _errors_mm(case["landmarks"], case["truth"])
    assert identity_errors.min() > 10.0  # the motion is large enough to matter
    assert errors.max() < TOLERANCE_MM, errors
    assert errors.max() < identity_errors.min() / 5.0
    assert [stage.name for stage in result.stages] == ["search", "similarity", "affine", "bspline"]
    assert result.metric_value == result.stages[-1].metric_value < 0.0  # Mattes MI: negative is good
    assert result.seconds > 0.0


def test_result_transform_maps_atlas_landmarks_to_reported_points(case: dict) -> None:
    result: AtlasResult = case["result"]
    for name, point in case["landmarks"].items():
        mapped = np.asarray(result.transform.TransformPoint(point.tolist()))
        np.testing.assert_allclose(result.landmarks[name], mapped, atol=1e-9)
        assert result.landmarks[name].shape == (3,)
    # The transform points from atlas to target: resampling the target through it onto the
    # atlas grid must reproduce the atlas (far better than the unregistered target does).
    atlas_image = sitk.Cast(case["atlas"].to_sitk(), sitk.sitkFloat32)
    target_image = sitk.Cast(case["target"].to_sitk(), sitk.sitkFloat32)
    aligned = sitk.GetArrayFromImage(
        sitk.Resample(target_image, atlas_image, result.transform, sitk.sitkLinear, -1000.0)
    )
    unaligned = sitk.GetArrayFromImage(
        sitk.Resample(target_image, atlas_image, sitk.Transform(), sitk.sitkLinear, -1000.0)
    )
    reference = sitk.GetArrayFromImage(atlas_image)
    assert np.abs(aligned - reference).mean() < 0.3 * np.abs(unaligned - reference).mean()


def test_rigid_affine_only_is_accurate_and_repeatable(case: dict) -> None:
    config = AtlasConfig(deformable=False, threads=1)
    first = atlas_transfer(case["atlas"], case["landmarks"], case["target"], config=config)
    second = atlas_transfer(case["atlas"], case["landmarks"], case["target"], config=config)
    assert [stage.name for stage in first.stages] == ["search", "similarity", "affine"]
    assert isinstance(first.transform, sitk.AffineTransform)
    assert _errors_mm(first.landmarks, case["truth"]).max() < TOLERANCE_MM
    # The metric's samples are seeded, but ITK's optimiser-scale estimation draws from its global
    # random generator, so repeated runs agree to a fraction of a voxel, not bit for bit.
    assert _errors_mm(first.landmarks, second.landmarks).max() < 0.5


def test_moments_initialisation_recovers_a_far_off_header(case: dict) -> None:
    # A target whose origin is 400 mm off (a wrong header) still registers: the moments
    # initialiser aligns the centres of mass first.
    shift = np.array([400.0, -250.0, 300.0])
    target = Volume(
        case["target"].voxels, case["target"].spacing_xyz_mm, case["target"].origin_lps_mm + shift
    )
    result = atlas_transfer(case["atlas"], case["landmarks"], target, config=RIGID_AFFINE)
    truth = {name: point + shift for name, point in case["truth"].items()}
    assert _errors_mm(result.landmarks, truth).max() < TOLERANCE_MM


def test_multi_atlas_median_survives_one_bad_atlas(case: dict) -> None:
    atlas, landmarks = case["atlas"], case["landmarks"]
    # A second atlas: the same anatomy seen in another pose (landmarks carried exactly).
    pose = _rigid((-5.0, 6.0, -8.0), (-7.0, 5.0, -4.0), atlas.center_lps_mm)
    second, second_landmarks = _moved(atlas, landmarks, pose, spacing_mm=2.0, seed=2)
    # A third atlas with mislabelled landmarks (25 mm off): the median must ignore it.
    wrong = {name: point + np.array([25.0, 0.0, 0.0]) for name, point in landmarks.items()}
    atlases = [(atlas, landmarks), (second, second_landmarks), (atlas, wrong)]
    fused = multi_atlas_transfer(atlases, case["target"], RIGID_AFFINE)
    assert len(fused.per_atlas) == 3
    assert not fused.failures
    assert _errors_mm(fused.per_atlas[2].landmarks, case["truth"]).min() > 20.0
    assert _errors_mm(fused.landmarks, case["truth"]).max() < TOLERANCE_MM
    for name, estimates in ((n, [r.landmarks[n] for r in fused.per_atlas]) for n in fused.landmarks):
        np.testing.assert_allclose(fused.landmarks[name], np.median(estimates, axis=0))
        # spread is a median too: two agreeing atlases outvote the mislabelled one.
        assert fused.spread_mm[name] < 1.0


def test_multi_atlas_records_a_failed_atlas_and_fails_when_all_fail(case: dict) -> None:
    slab = Volume(np.full((2, 56, 64), -1000, np.int16), SPACING_XYZ_MM)
    fused = multi_atlas_transfer(
        [(slab, case["landmarks"]), (case["atlas"], case["landmarks"])], case["target"], RIGID_AFFINE
    )
    assert fused.per_atlas[0] is None
    assert [index for index, _ in fused.failures] == [0]
    assert "3-D" in fused.failures[0][1]
    assert _errors_mm(fused.landmarks, case["truth"]).max() < TOLERANCE_MM
    with pytest.raises(ValueError, match="all 2 atlas registrations failed"):
        multi_atlas_transfer([(slab, case["landmarks"])] * 2, case["target"], RIGID_AFFINE)
    with pytest.raises(ValueError, match="at least one"):
        multi_atlas_transfer([], case["target"], RIGID_AFFINE)


def test_rejects_inputs_that_are_not_3d(case: dict) -> None:
    slice_2d = sitk.GetImageFromArray(np.zeros((56, 64), np.float32))
    with pytest.raises(ValueError, match="target must be a 3-D image, got a 2-D"):
        atlas_transfer(case["atlas"], case["landmarks"], slice_2d)
    one_slice = Volume(case["atlas"].voxels[:1], SPACING_XYZ_MM)
    with pytest.raises(ValueError, match=r"atlas is not a 3-D volume"):
        atlas_transfer(one_slice, case["landmarks"], case["target"])
    with pytest.raises(ValueError, match=r"must be an envs\.core\.Volume"):
        atlas_transfer(np.asarray(case["atlas"].voxels), case["landmarks"], case["target"])
    with pytest.raises(ValueError, match=r"landmark 'bad'"):
        atlas_transfer(case["atlas"], {"bad": [1.0, np.nan, 2.0]}, case["target"])


def test_constant_target_is_rejected(case: dict) -> None:
    air = Volume(np.full((40, 40, 40), -1000, np.int16), (2.5, 2.5, 2.5))
    with pytest.raises(ValueError, match=r"target .* is constant"):
        atlas_transfer(case["atlas"], case["landmarks"], air)


def test_no_overlap_raises_a_value_error_that_says_what_to_try(case: dict) -> None:
    # Trusting the headers ("none") with a target 5 m away: no atlas sample maps into it.
    far = Volume(case["target"].voxels, case["target"].spacing_xyz_mm, case["target"].origin_lps_mm + 5000.0)
    with pytest.raises(ValueError, match="similarity stage failed") as info:
        atlas_transfer(case["atlas"], case["landmarks"], far, config=AtlasConfig(initializer="none"))
    assert "initializer='moments'" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smoothing_sigmas_mm": (2.0, 1.0)}, "smoothing_sigmas_mm"),
        ({"sampling_fraction": 1.5}, "sampling_fraction"),
        ({"rigid_iterations": 0}, "iteration"),
        ({"initializer": "centre"}, "initializer"),
        ({"intensity_window": (100.0, -100.0)}, "intensity_window"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AtlasConfig(**kwargs)
