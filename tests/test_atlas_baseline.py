"""The atlas baseline's robust start on a small synthetic head (fast, no data files).

The atlas is a head-like phantom on an anisotropic 2.5 x 3 x 3.5 mm grid with a
non-identity direction: a bright scalp, a dark skull, and a brain with asymmetric structures
(ventricles, bright and dark nuclei). A target is that head moved by a known similarity
transform (rotation, translation, scale) onto an isotropic 3 mm grid with fresh noise, so the
true landmark positions in the target are known exactly. A "skull-stripped" target is 0
outside the brain; a "T2-like" target has the brain's contrast inverted.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from agents.baselines import AtlasConfig, atlas_transfer
from agents.baselines.foreground import CT_WINDOW, auto_window, foreground_mask
from agents.baselines.sitk_common import prepare_image
from envs.core import Volume

SHAPE_ZYX = (46, 54, 62)  # x: 62 * 2.5 = 155 mm, y: 54 * 3 = 162 mm, z: 46 * 3.5 = 161 mm
SPACING_XYZ_MM = (2.5, 3.0, 3.5)
# An RAS-like direction (x to the right, y anterior), as NIfTI files usually have.
DIRECTION = np.diag([-1.0, -1.0, 1.0])
HEAD_SEMI_AXES_MM = np.array([62.0, 72.0, 64.0])
BRAIN_SEMI_AXES_MM = HEAD_SEMI_AXES_MM - 12.0
# Landmarks relative to the head centre (LPS mm): the centres of four asymmetric structures.
LANDMARK_OFFSETS_MM = {
    "bright_nucleus": (-20.0, -25.0, 10.0),
    "dark_nucleus": (18.0, 20.0, -12.0),
    "ventricle": (8.0, -5.0, 15.0),
    "bar_end": (-5.0, 30.0, 30.0),
}
# A few mm: the target's 3 mm voxels, the atlas's up to 3.5 mm.
TOLERANCE_MM = 3.0
FAST = {
    "deformable": False,
    "threads": 1,
    "metric_samples": 8000,
    "shrink_factors": (2, 1),
    "smoothing_sigmas_mm": (3.0, 0.0),
}


def _ellipsoid(points: np.ndarray, centre: tuple, semi_axes: tuple | np.ndarray) -> np.ndarray:
    return np.sum(((points - np.asarray(centre)) / np.asarray(semi_axes)) ** 2, axis=-1) <= 1.0


def _head(seed: int = 0) -> tuple[Volume, dict[str, np.ndarray], np.ndarray]:
    """The atlas head (T1w-like intensities 0..100), its landmarks and its brain mask (z, y, x)."""
    geometry = Volume(np.zeros(SHAPE_ZYX, np.float32), SPACING_XYZ_MM, (80.0, 70.0, -75.0), DIRECTION)
    centre = geometry.center_lps_mm
    index = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij")[::-1], axis=-1)
    points = geometry.index_to_lps(index.astype(np.float64)) - centre  # (z, y, x, 3) LPS mm
    rng = np.random.default_rng(seed)
    intensity = np.zeros(SHAPE_ZYX)
    intensity[_ellipsoid(points, (0, 0, 0), HEAD_SEMI_AXES_MM)] = 85.0  # scalp
    intensity[_ellipsoid(points, (0, 0, 0), HEAD_SEMI_AXES_MM - 5.0)] = 8.0  # skull
    brain = _ellipsoid(points, (0, 0, 0), BRAIN_SEMI_AXES_MM)
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE_ZYX), 2.0) * 20.0
    intensity[brain] = 60.0 + texture[brain]
    offsets = LANDMARK_OFFSETS_MM
    intensity[_ellipsoid(points, offsets["bright_nucleus"], (9, 7, 6))] = 95.0
    intensity[_ellipsoid(points, offsets["dark_nucleus"], (6, 10, 8))] = 30.0
    intensity[_ellipsoid(points, offsets["ventricle"], (5, 14, 7))] = 15.0
    bar = np.all(np.abs(points - np.array([-5.0, 30.0, 15.0])) <= (3.0, 3.0, 15.0), axis=-1)
    intensity[bar] = 90.0
    intensity += rng.normal(0.0, 1.0, SHAPE_ZYX)
    atlas = Volume(
        np.clip(intensity, 0.0, None).astype(np.float32), SPACING_XYZ_MM, geometry.origin_lps_mm, DIRECTION
    )
    landmarks = {name: centre + np.asarray(offset) for name, offset in offsets.items()}
    return atlas, landmarks, brain


def _move(
    angles_deg: tuple, translation_mm: tuple, scale: float, centre: np.ndarray
) -> sitk.Similarity3DTransform:
    """A similarity that maps TARGET points to ATLAS points (SimpleITK's resampling direction)."""
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*np.deg2rad(angles_deg).tolist())
    move = sitk.Similarity3DTransform()
    move.SetCenter(centre.tolist())
    move.SetMatrix(euler.GetMatrix())
    move.SetScale(scale)
    move.SetTranslation(translation_mm)
    return move


def _target(
    atlas: Volume, landmarks: dict, move: sitk.Transform, seed: int, voxels_of=None
) -> tuple[Volume, dict[str, np.ndarray]]:
    """``atlas`` (or ``voxels_of(atlas)``) seen through ``move`` on a 3 mm grid; the moved landmarks."""
    source = atlas if voxels_of is None else atlas.with_voxels(voxels_of(np.asarray(atlas.voxels)))
    lower, upper = atlas.extent_lps_mm
    margin = 40.0  # room for the moved head
    size = np.ceil((upper - lower + 2 * margin) / 3.0).astype(int)
    image = sitk.Resample(
        sitk.Cast(source.to_sitk(), sitk.sitkFloat32),
        size.tolist(),
        move,
        sitk.sitkLinear,
        (lower - margin + 1.5).tolist(),
        [3.0] * 3,
        np.eye(3).ravel().tolist(),
        0.0,
        sitk.sitkFloat32,
    )
    voxels = sitk.GetArrayFromImage(image)
    voxels = np.where(voxels > 0, voxels + np.random.default_rng(seed).normal(0.0, 1.0, voxels.shape), 0.0)
    target = Volume(
        np.clip(voxels, 0.0, None).astype(np.float32), [3.0] * 3, image.GetOrigin(), name="target"
    )
    inverse = move.GetInverse()
    truth = {name: np.asarray(inverse.TransformPoint(p.tolist())) for name, p in landmarks.items()}
    return target, truth


def _errors_mm(found: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([np.linalg.norm(found[name] - truth[name]) for name in truth])


@pytest.fixture(scope="module")
def head() -> tuple[Volume, dict[str, np.ndarray], np.ndarray]:
    return _head()


def test_robust_start_recovers_a_large_rotation_that_the_old_start_misses(head: tuple) -> None:
    atlas, landmarks, _ = head
    move = _move((10.0, -15.0, 55.0), (25.0, -30.0, 12.0), 1.05, atlas.center_lps_mm)
    target, truth = _target(atlas, landmarks, move, seed=1)
    before = _errors_mm(landmarks, truth)
    assert before.min() > 20.0  # the move is large enough to matter
    old = atlas_transfer(atlas, landmarks, target, config=AtlasConfig.legacy(**FAST))
    new = atlas_transfer(atlas, landmarks, target, config=AtlasConfig(**FAST))
    assert [stage.name for stage in old.stages] == ["rigid", "affine"]
    assert [stage.name for stage in new.stages] == ["search", "similarity", "affine"]
    assert _errors_mm(old.landmarks, truth).mean() > 10.0  # moments + local descent: a wrong optimum
    assert _errors_mm(new.landmarks, truth).max() < TOLERANCE_MM
    # The search picked a start that the metric prefers, and the result's metric is better still.
    assert new.metric_value < old.metric_value


def test_skull_stripped_target_against_an_unstripped_atlas(head: tuple) -> None:
    atlas, landmarks, brain = head
    move = _move((-8.0, 6.0, -12.0), (-15.0, 10.0, 20.0), 0.94, atlas.center_lps_mm)
    target, truth = _target(atlas, landmarks, move, seed=2, voxels_of=lambda v: np.where(brain, v, 0.0))
    assert np.mean(np.asarray(target.voxels) == 0.0) > 0.6  # mostly background, like a stripped scan
    result = atlas_transfer(atlas, landmarks, target, config=AtlasConfig(**FAST))
    assert _errors_mm(result.landmarks, truth).max() < TOLERANCE_MM


def test_t2_like_contrast_is_registered_by_mutual_information(head: tuple) -> None:
    atlas, landmarks, brain = head
    move = _move((5.0, 12.0, -10.0), (10.0, 15.0, -8.0), 1.06, atlas.center_lps_mm)
    same, truth = _target(atlas, landmarks, move, seed=3)
    # Inside the brain dark becomes bright and bright dark (CSF-like structures light up),
    # the scalp stays bright: no monotonic map relates the two images.
    inverted, _ = _target(
        atlas, landmarks, move, seed=3, voxels_of=lambda v: np.where(brain, np.clip(110.0 - v, 0.0, None), v)
    )
    errors = {
        name: _errors_mm(
            atlas_transfer(atlas, landmarks, target, config=AtlasConfig(**FAST)).landmarks, truth
        )
        for name, target in (("same", same), ("inverted", inverted))
    }
    assert _errors_mm(landmarks, truth).min() > 15.0
    # Within a few mm, and about as close as with the atlas's own contrast (on this coarse
    # 2.5-3.5 mm phantom both land ~2 mm off; mean squares would not register it at all).
    assert errors["inverted"].max() < 6.0, errors
    assert errors["inverted"].mean() < errors["same"].mean() + 1.5, errors


def test_auto_window_keeps_mr_intensities_and_windows_ct() -> None:
    mr = np.r_[np.zeros(1000), np.linspace(1000.0, 10000.0, 5000)]  # a 0..10000 MR template
    low, high = auto_window(mr)
    assert low == 0.0
    assert 9900.0 < high < 10000.0
    assert auto_window(np.r_[np.full(100, -1000.0), np.linspace(-100.0, 1500.0, 100)]) == CT_WINDOW
    volume = Volume(np.linspace(0.0, 10000.0, 8000).reshape(20, 20, 20).astype(np.float32))
    prepared = sitk.GetArrayFromImage(prepare_image(volume, "target", "auto"))
    assert prepared.max() > 9000.0
    with pytest.raises(ValueError, match="intensity_window"):
        AtlasConfig(intensity_window="percentile")  # type: ignore[arg-type]


def test_foreground_mask_covers_the_stripped_brain_and_a_margin(head: tuple) -> None:
    atlas, _, brain = head
    stripped = atlas.with_voxels(np.where(brain, atlas.voxels, 0.0).astype(np.float32))
    image = prepare_image(stripped, "target", "auto")
    mask = foreground_mask(image, dilation_mm=5.0)
    assert mask is not None
    # The mask lives on a coarse (~2 mm) grid; ITK reads it at physical points, so compare there.
    inside = sitk.GetArrayFromImage(sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    assert inside[brain].all()  # every brain voxel counts
    index = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij")[::-1], axis=-1)
    points = stripped.index_to_lps(index.astype(np.float64)) - stripped.center_lps_mm
    # ... and about 5 mm beyond it, never out to the scalp (6-12 mm outside the brain).
    assert inside[_ellipsoid(points, (0, 0, 0), BRAIN_SEMI_AXES_MM + 2.0)].mean() > 0.99
    assert not inside[~_ellipsoid(points, (0, 0, 0), BRAIN_SEMI_AXES_MM + 9.0)].any()
    # Data everywhere (nothing but one dark voxel): no mask beats a mask of everything.
    everywhere = np.ones(SHAPE_ZYX, np.float32)
    everywhere[0, 0, 0] = 0.0
    assert foreground_mask(prepare_image(atlas.with_voxels(everywhere), "x", None), 5.0) is None
