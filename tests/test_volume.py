"""Volume geometry, intensity presets, resampling, pyramids and patches."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import OBLIQUE_DIRECTION as DIRECTION
from conftest import OBLIQUE_ORIGIN_LPS_MM as ORIGIN_LPS
from conftest import OBLIQUE_SHAPE_ZYX as SHAPE_ZYX
from conftest import OBLIQUE_SPACING_XYZ_MM as SPACING_XYZ
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.core import (
    PRESETS,
    IntensityPreset,
    Volume,
    build_pyramid,
    crop_patch,
    finest_level_warning,
    resample_isotropic,
    to_uint8,
)


@pytest.fixture
def oblique(oblique_volume: Volume) -> Volume:
    """The shared tiny oblique volume (three edge lengths, anisotropic spacing, rotated axes)."""
    return oblique_volume


def blob_volume(center_lps: np.ndarray, direction: np.ndarray = DIRECTION) -> Volume:
    """A dark oblique volume with one bright Gaussian blob at ``center_lps``."""
    shape = (40, 44, 48)
    spacing = np.array([1.1, 0.9, 1.6])
    probe = Volume(np.zeros(shape, np.float32), spacing, (0.0, 0.0, 0.0), direction)
    origin = center_lps - probe.index_to_lps(np.array(probe.size_xyz) / 2.0 - 3.0)
    probe = Volume(np.zeros(shape, np.float32), spacing, origin, direction)
    zz, yy, xx = np.indices(shape)
    points = probe.index_to_lps(np.stack([xx, yy, zz], axis=-1))
    distance_sq = np.sum((points - center_lps) ** 2, axis=-1)
    voxels = -1000.0 + 2000.0 * np.exp(-distance_sq / (2 * 3.0**2))
    return probe.with_voxels(voxels.astype(np.float32))


def test_repr_names_shape_spacing_and_orientation(oblique: Volume) -> None:
    text = repr(oblique)
    assert "shape_zyx=(5, 7, 9)" in text
    assert "spacing_xyz_mm=(0.7, 1.3, 2.9)" in text
    assert "oblique" in text


def test_sizes_follow_simpleitk_axis_order(oblique: Volume) -> None:
    image = oblique.to_sitk()
    assert image.GetSize() == oblique.size_xyz == (9, 7, 5)
    assert sitk.GetArrayViewFromImage(image).shape == oblique.shape_zyx


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-3.0, 12.0, allow_nan=False), min_size=3, max_size=3),
)
def test_index_to_lps_matches_simpleitk(index: list[float]) -> None:
    volume = Volume(np.zeros(SHAPE_ZYX, np.int16), SPACING_XYZ, ORIGIN_LPS, DIRECTION)
    image = volume.to_sitk()
    expected = image.TransformContinuousIndexToPhysicalPoint(index)
    np.testing.assert_allclose(volume.index_to_lps(index), expected, atol=1e-9)
    np.testing.assert_allclose(volume.lps_to_index(expected), index, atol=1e-9)
    np.testing.assert_allclose(
        volume.lps_to_index(expected), image.TransformPhysicalPointToContinuousIndex(expected), atol=1e-9
    )


def test_vectorised_geometry_matches_pointwise(oblique: Volume) -> None:
    index = np.random.default_rng(1).uniform(-1, 12, size=(5, 4, 3))
    points = oblique.index_to_lps(index)
    assert points.shape == (5, 4, 3)
    np.testing.assert_allclose(points[2, 3], oblique.index_to_lps(index[2, 3]))
    np.testing.assert_allclose(oblique.lps_to_index(points), index, atol=1e-9)


def test_sitk_round_trip_keeps_voxels_and_geometry(oblique: Volume) -> None:
    back = Volume.from_sitk(oblique.to_sitk())
    np.testing.assert_array_equal(back.voxels, oblique.voxels)
    np.testing.assert_allclose(back.spacing_xyz_mm, SPACING_XYZ)
    np.testing.assert_allclose(back.origin_lps_mm, ORIGIN_LPS)
    np.testing.assert_allclose(back.direction, DIRECTION, atol=1e-12)


def test_contains_uses_voxel_edges(oblique: Volume) -> None:
    inside = oblique.index_to_lps([-0.49, 0.0, 4.49])
    outside = oblique.index_to_lps([-0.51, 0.0, 3.0])
    assert oblique.contains(inside)
    assert not oblique.contains(outside)
    assert not oblique.contains(inside, margin_vox=1.0)


def test_voxels_are_read_only_and_caller_array_untouched() -> None:
    array = np.zeros((3, 4, 5), np.float32)
    volume = Volume(array)
    with pytest.raises(ValueError, match="read-only"):
        volume.voxels[0, 0, 0] = 1
    array[0, 0, 0] = 2.0  # the caller's own array stays writable
    assert array.flags.writeable


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"voxels": np.zeros((4, 5))}, "expected a 3-D array"),
        ({"voxels": np.zeros((2, 3, 4, 5))}, "expected a 3-D array"),
        ({"voxels": np.array([[[np.nan, 0.0]]])}, "NaN or infinite"),
        ({"voxels": np.array([[[np.inf, 0.0]]])}, "NaN or infinite"),
        ({"voxels": np.zeros((2, 2, 2)), "spacing_xyz_mm": (1.0, 0.0, 1.0)}, "spacing must be positive"),
        ({"voxels": np.zeros((2, 2, 2)), "spacing_xyz_mm": (1.0, -1.0, 1.0)}, "spacing must be positive"),
        ({"voxels": np.zeros((2, 2, 2)), "direction": np.diag([2.0, 1.0, 1.0])}, "orthonormal"),
        ({"voxels": np.zeros((2, 2, 2), bool)}, "real numeric"),
    ],
)
def test_invalid_volumes_are_rejected_with_a_reason(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        Volume(**kwargs)


def test_ct_preset_maps_the_window_linearly() -> None:
    volume = Volume(np.array([[[-2000, -1000, 0, 1000, 3000]]], np.int16))
    low, high = PRESETS["ct"].low, PRESETS["ct"].high
    assert (low, high) == (-1000.0, 1000.0)
    np.testing.assert_array_equal(to_uint8(volume, "ct").voxels.ravel(), [0, 0, 128, 255, 255])


def test_mr_preset_is_robust_to_outliers() -> None:
    rng = np.random.default_rng(0)
    voxels = rng.normal(300.0, 50.0, size=(20, 20, 20))
    voxels[0, 0, 0] = 1e6  # one hot pixel must not squash the rest of the range
    out = to_uint8(Volume(voxels), "mr").voxels
    assert out.dtype == np.uint8
    assert 100 < np.median(out) < 160
    assert np.percentile(out, 99) < 255


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="ct_soft"):
        to_uint8(Volume(np.zeros((2, 2, 2))), "bone")


def test_resampling_keeps_a_feature_at_its_physical_point() -> None:
    center = np.array([12.0, -40.0, 75.0])
    volume = blob_volume(center)
    iso = resample_isotropic(volume, 1.0, fill_value=-1000.0)
    assert iso.is_axis_aligned
    np.testing.assert_allclose(iso.spacing_xyz_mm, 1.0)
    peak_zyx = np.unravel_index(np.argmax(iso.voxels), iso.shape_zyx)
    peak_lps = iso.index_to_lps(np.array(peak_zyx[::-1], dtype=float))
    assert np.linalg.norm(peak_lps - center) <= np.sqrt(3) * 0.5 + 1e-6


def test_resampled_grid_covers_the_original_extent(oblique: Volume) -> None:
    iso = resample_isotropic(oblique, 2.0)
    lower, upper = oblique.extent_lps_mm
    iso_lower, iso_upper = iso.extent_lps_mm
    assert np.all(iso_lower <= lower + 1e-6)
    assert np.all(iso_upper >= upper - 1e-6)
    assert np.all(iso_upper - iso_lower < upper - lower + 2.0 + 1e-6)


def test_pyramid_levels_are_isotropic_uint8_and_aligned() -> None:
    center = np.array([-5.0, 20.0, 33.0])
    pyramid = build_pyramid(blob_volume(center), (4.0, 2.0, 1.0), "ct")
    assert pyramid.spacings_mm == (4.0, 2.0, 1.0)
    for spacing, level in zip(pyramid.spacings_mm, pyramid.levels, strict=True):
        assert level.voxels.dtype == np.uint8
        assert level.is_axis_aligned
        np.testing.assert_allclose(level.spacing_xyz_mm, spacing)
        peak_zyx = np.unravel_index(np.argmax(level.voxels), level.shape_zyx)
        peak_lps = pyramid.lps_of_index(pyramid.spacings_mm.index(spacing), peak_zyx)
        assert np.linalg.norm(peak_lps - center) <= spacing
        index = pyramid.index_zyx(pyramid.spacings_mm.index(spacing), center)
        assert level.voxels[tuple(index)] >= 0.8 * level.voxels.max() > 100
    np.testing.assert_allclose(pyramid.levels[0].center_lps_mm, pyramid.levels[2].center_lps_mm, atol=2.0)


@pytest.mark.parametrize("spacings", [(1.0, 2.0), (2.0, 2.0), (4.0, 0.0), ()])
def test_pyramid_rejects_bad_spacings(spacings: tuple) -> None:
    with pytest.raises(ValueError, match="pyramid"):
        build_pyramid(Volume(np.zeros((4, 4, 4))), spacings)


def test_custom_preset_is_accepted() -> None:
    volume = Volume(np.array([[[0.0, 50.0, 100.0]]]))
    out = to_uint8(volume, IntensityPreset("window", 0.0, 100.0)).voxels.ravel()
    np.testing.assert_array_equal(out, [0, 128, 255])


def test_patch_inside_is_the_centred_slice() -> None:
    voxels = np.arange(20 * 21 * 22, dtype=np.int32).reshape(20, 21, 22)
    patch = crop_patch(voxels, (10, 10, 11), 5)
    np.testing.assert_array_equal(patch, voxels[8:13, 8:13, 9:14])
    assert patch[2, 2, 2] == voxels[10, 10, 11]
    assert patch.flags.c_contiguous
    patch[0, 0, 0] = -1  # a copy, never a view into the level
    assert voxels[8, 8, 9] != -1


def test_patch_at_the_border_is_padded_with_fill() -> None:
    voxels = np.ones((6, 7, 8), np.uint8)
    patch = crop_patch(voxels, (0, 0, 7), 5, fill=9)
    assert patch.shape == (5, 5, 5)
    # Voxels before index 0 (z, y) and after the last x are outside.
    assert np.all(patch[:2] == 9)
    assert np.all(patch[:, :2] == 9)
    assert np.all(patch[:, :, 3:] == 9)
    assert np.all(patch[2:, 2:, :3] == 1)
    far = crop_patch(voxels, (100, 100, 100), (3, 5, 7))
    assert far.shape == (3, 5, 7)
    assert not far.any()


def test_progressive_pyramid_matches_the_direct_one_closely() -> None:
    from envs.phantom import PhantomConfig, generate_phantom

    volume = generate_phantom(2, PhantomConfig(spacing_mm=4.0)).volume
    direct = build_pyramid(volume, (16.0, 8.0, 4.0), "ct")
    progressive = build_pyramid(volume, (16.0, 8.0, 4.0), "ct", progressive=True)
    for a, b in zip(direct.levels, progressive.levels, strict=True):
        assert a.shape_zyx == b.shape_zyx
        np.testing.assert_allclose(a.origin_lps_mm, b.origin_lps_mm, atol=1e-6)
        assert np.abs(a.voxels.astype(int) - b.voxels.astype(int)).mean() < 2.0


@pytest.mark.parametrize(
    ("spacing_xyz", "warned"),
    [
        ((1.047, 1.014, 1.03), False),  # 1-5 % coarser than a 1 mm level: taken silently
        ((0.6, 0.6, 1.4), False),
        ((0.6, 0.6, 5.0), True),  # thick slices: taken, with a warning naming the axis
        ((3.0, 3.0, 3.0), True),
    ],
)
def test_any_spacing_is_taken_and_much_coarser_scans_are_warned(
    spacing_xyz: tuple[float, float, float], warned: bool
) -> None:
    volume = Volume(np.zeros((12, 10, 8), np.float32), spacing_xyz_mm=spacing_xyz)
    message = finest_level_warning(volume, "case 'a'", (4.0, 2.0, 1.0))
    assert (message is not None) == warned
    if warned:
        assert "case 'a'" in message
        assert f"{max(spacing_xyz):g} mm axis" in message
    # and a pyramid at 1 mm is built from it whatever its spacing
    volume = Volume(np.arange(12 * 10 * 8, dtype=np.float32).reshape(12, 10, 8), spacing_xyz_mm=spacing_xyz)
    finest = build_pyramid(volume, (4.0, 1.0), preset="mr").levels[-1]
    assert finest.spacing_xyz_mm.tolist() == [1.0, 1.0, 1.0]
