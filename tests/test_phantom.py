"""Synthetic CT phantoms: landmarks sit in the anatomy they name, and the mapping is known."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from envs import io
from envs.core import Volume
from envs.phantom import (
    LABELS,
    LANDMARK_NAMES,
    MODE_STD_MM,
    Phantom,
    PhantomConfig,
    deformation_modes,
    generate_phantom,
    main,
    mean_phantom,
)

SEEDS = (0, 1, 2)
NO_POSE = {"size_std": 0.0, "rotation_deg": 0.0, "translation_mm": 0.0}


@pytest.fixture(scope="module")
def mean() -> Phantom:
    return mean_phantom(PhantomConfig(spacing_mm=2.0))


@pytest.fixture(scope="module")
def subjects() -> dict[int, Phantom]:
    return {seed: generate_phantom(seed, PhantomConfig(spacing_mm=2.0)) for seed in SEEDS}


def _labels_near(labels: Volume, point_lps_mm: np.ndarray, radius_vox: int) -> set[str]:
    """Structure names within ``radius_vox`` voxels (a cube) of the voxel nearest to the point."""
    i, j, k = np.rint(labels.lps_to_index(point_lps_mm)).astype(int)
    nz, ny, nx = labels.shape_zyx
    block = labels.voxels[
        max(k - radius_vox, 0) : min(k + radius_vox + 1, nz),
        max(j - radius_vox, 0) : min(j + radius_vox + 1, ny),
        max(i - radius_vox, 0) : min(i + radius_vox + 1, nx),
    ]
    names = {value: name for name, value in LABELS.items()}
    return {names[int(v)] for v in np.unique(block)}


def _mean_hu_near(volume: Volume, point_lps_mm: np.ndarray) -> float:
    i, j, k = np.rint(volume.lps_to_index(point_lps_mm)).astype(int)
    return float(volume.voxels[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].astype(np.float64).mean())


def _check_anatomy(phantom: Phantom) -> None:
    """Each landmark inside the volume lies in (or on the surface of) the structure it names."""
    for name, point in phantom.landmarks.items():
        at = _labels_near(phantom.labels, point, 0)
        near1 = _labels_near(phantom.labels, point, 1)
        near2 = _labels_near(phantom.labels, point, 2)
        if name.endswith("_body"):
            assert at == {"bone_cancellous"}, (name, at)
            assert _mean_hu_near(phantom.volume, point) > 150.0, name
        elif name == "carina":
            assert "airway" in near1, near1
        elif name.endswith("kidney_hilum"):
            assert "renal_sinus" in near1, (name, near1)
            assert "kidney" in _labels_near(phantom.labels, point, 3), name
        elif name == "heart_apex":
            assert "myocardium" in near1, near1
            assert near2 - {"myocardium", "blood_pool"}, "apex should be on the heart surface"
        elif name == "xiphoid_tip":
            assert "sternum" in near1, near1
        elif name == "liver_dome":
            assert "liver" in near1, near1
            assert "lung" in _labels_near(phantom.labels, point, 3), "dome should touch the lung base"
        else:
            pytest.fail(f"no anatomy check for landmark {name}")


def _landmark_axes_hold(landmarks: dict[str, np.ndarray]) -> None:
    # LPS: +x patient left, +y posterior, +z superior.
    assert landmarks["left_kidney_hilum"][0] > landmarks["right_kidney_hilum"][0] + 60.0
    assert (
        landmarks["T6_body"][2] > landmarks["T9_body"][2] > landmarks["T12_body"][2] > landmarks["L2_body"][2]
    )
    assert landmarks["xiphoid_tip"][1] < landmarks["T9_body"][1] - 80.0


def test_public_constants() -> None:
    assert len(LANDMARK_NAMES) >= 8
    assert len(set(LABELS.values())) == len(LABELS)
    assert LABELS["air"] == 0
    assert list(MODE_STD_MM) == sorted(MODE_STD_MM, reverse=True)


def test_mean_phantom_landmarks_in_anatomy(mean: Phantom) -> None:
    assert set(mean.landmarks) == set(LANDMARK_NAMES)
    assert not mean.landmarks_outside
    _check_anatomy(mean)
    _landmark_axes_hold(mean.landmarks)
    assert mean.volume.voxels.dtype == np.int16
    assert mean.labels.voxels.dtype == np.uint8
    assert mean.volume.shape_zyx == (150, 120, 160)  # 300 x 240 x 320 mm field of view at 2 mm
    assert np.all(mean.displacement_lps_mm == 0.0)


def test_tissue_intensities_are_ct_like(mean: Phantom) -> None:
    labels, hu = mean.labels.voxels, mean.volume.voxels
    # Interior voxels only (eroded masks), so partial-volume blur does not matter.
    for name, low, high in (
        ("lung", -900, -800),
        ("liver", 40, 80),
        ("fat", -120, -80),
        ("bone_cancellous", 200, 300),
        ("air", -1001, -999),
    ):
        mask = ndimage.binary_erosion(labels == LABELS[name], iterations=2)
        assert mask.any(), name
        assert low < float(np.median(hu[mask])) < high, name


@pytest.mark.parametrize("seed", SEEDS)
def test_subject_landmarks_in_anatomy(subjects: dict[int, Phantom], seed: int) -> None:
    phantom = subjects[seed]
    assert set(phantom.landmarks) | set(phantom.landmarks_outside) == set(LANDMARK_NAMES)
    assert len(phantom.landmarks) >= 8
    for point in phantom.landmarks.values():
        assert point.shape == (3,)
        assert bool(phantom.volume.contains(point))
    _check_anatomy(phantom)


def test_same_seed_same_subject(subjects: dict[int, Phantom]) -> None:
    again = generate_phantom(0, PhantomConfig(spacing_mm=2.0))
    np.testing.assert_array_equal(again.volume.voxels, subjects[0].volume.voxels)
    np.testing.assert_array_equal(again.labels.voxels, subjects[0].labels.voxels)
    assert again.landmarks.keys() == subjects[0].landmarks.keys()
    for name, point in again.landmarks.items():
        np.testing.assert_array_equal(point, subjects[0].landmarks[name])


def test_different_seeds_differ(subjects: dict[int, Phantom]) -> None:
    first, second = subjects[0], subjects[1]
    shared = set(first.landmarks) & set(second.landmarks)
    assert len(shared) >= 5
    for name in shared:
        assert np.linalg.norm(first.landmarks[name] - second.landmarks[name]) > 1.0, name
    assert np.mean(first.labels.voxels != second.labels.voxels) > 0.05
    assert not np.array_equal(first.mode_coefficients, second.mode_coefficients)


def _interpolate_displacement(phantom: Phantom, point_lps_mm: np.ndarray) -> np.ndarray:
    index_xyz = phantom.volume.lps_to_index(point_lps_mm)
    coords = index_xyz[::-1].reshape(3, 1)
    return np.array(
        [ndimage.map_coordinates(phantom.displacement_lps_mm[..., c], coords, order=1)[0] for c in range(3)]
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_displacement_maps_subject_onto_mean(mean: Phantom, subjects: dict[int, Phantom], seed: int) -> None:
    phantom = subjects[seed]
    assert phantom.displacement_lps_mm.shape == (*phantom.volume.shape_zyx, 3)
    assert phantom.displacement_lps_mm.dtype == np.float32
    # Voxels: subject(p) == mean(p + D(p)).
    nz, ny, nx = phantom.volume.shape_zyx
    kk, jj, ii = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    points = phantom.volume.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(np.float64))
    mean_index = mean.labels.lps_to_index(points + phantom.displacement_lps_mm)
    sampled = ndimage.map_coordinates(
        mean.labels.voxels, np.moveaxis(mean_index[..., ::-1], -1, 0), order=0, mode="nearest"
    )
    # Two nearest-neighbour resamplings (template -> mean grid -> subject) disagree by up to a
    # voxel at tissue boundaries, so demand near-perfect agreement away from boundaries.
    interior = ndimage.minimum_filter(phantom.labels.voxels, size=3) == ndimage.maximum_filter(
        phantom.labels.voxels, size=3
    )
    agree = sampled == phantom.labels.voxels
    assert interior.mean() > 0.6
    assert agree[interior].mean() >= 0.99
    assert agree.mean() >= 0.93
    # Without the displacement (pose and modes ignored) the labels would not match.
    unmapped = ndimage.map_coordinates(
        mean.labels.voxels,
        np.moveaxis(mean.labels.lps_to_index(points)[..., ::-1], -1, 0),
        order=0,
        mode="nearest",
    )
    assert (unmapped == phantom.labels.voxels)[interior].mean() < 0.97
    # Landmarks: p_landmark + D(p_landmark) is the mean phantom's landmark.
    for name, point in phantom.landmarks.items():
        mapped = point + _interpolate_displacement(phantom, point)
        assert np.linalg.norm(mapped - mean.landmarks[name]) < 1.0, name


def test_no_variation_gives_the_mean(mean: Phantom) -> None:
    still = generate_phantom(5, PhantomConfig(spacing_mm=2.0, mode_scale=0.0, noise_hu=0.0, **NO_POSE))
    assert still.scale == 1.0
    assert np.abs(still.displacement_lps_mm).max() < 1e-4
    assert np.mean(still.labels.voxels == mean.labels.voxels) > 0.999
    for name, point in mean.landmarks.items():
        np.testing.assert_allclose(still.landmarks[name], point, atol=1e-6)
    # Only the per-tissue jitter and smooth texture remain.
    difference = np.abs(still.volume.voxels.astype(np.float64) - mean.volume.voxels)
    assert float(np.median(difference)) < 25.0


def test_deformation_modes_are_the_displacement() -> None:
    config = PhantomConfig(spacing_mm=4.0, n_modes=3, noise_hu=0.0, **NO_POSE)
    modes, std_mm = deformation_modes(config)
    assert modes.shape == (3, 75, 60, 80, 3)
    np.testing.assert_array_equal(std_mm, MODE_STD_MM[:3])
    rms_mm = np.sqrt((modes.astype(np.float64) ** 2).sum(axis=-1).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(rms_mm, std_mm, rtol=0.1)
    # Orthogonal over the field of view: a PCA of subjects can recover them.
    flat = modes.reshape(3, -1).astype(np.float64)
    gram = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    assert np.abs(gram - np.eye(3)).max() < 0.05
    subject = generate_phantom(11, config)
    expected = np.tensordot(subject.mode_coefficients, modes, axes=1)
    assert np.abs(subject.displacement_lps_mm - expected).max() < 0.1
    assert np.abs(expected).max() > 2.0  # the check above compares real displacements


def test_partial_fov_moves_landmarks_outside() -> None:
    config = PhantomConfig(spacing_mm=4.0, partial_fov=True)
    phantoms = [generate_phantom(seed, config) for seed in range(4)]
    assert any(p.landmarks_outside for p in phantoms)
    for phantom in phantoms:
        assert set(phantom.landmarks) | set(phantom.landmarks_outside) == set(LANDMARK_NAMES)
        assert phantom.volume.shape_zyx[0] < 75
        for point in phantom.landmarks_outside.values():
            assert not bool(phantom.volume.contains(point))
    # Same seed, same anatomy: cropping does not redraw the subject.
    full = generate_phantom(0, PhantomConfig(spacing_mm=4.0))
    cropped = {**phantoms[0].landmarks, **phantoms[0].landmarks_outside}
    for name, point in {**full.landmarks, **full.landmarks_outside}.items():
        np.testing.assert_allclose(cropped[name], point, atol=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_oblique_grid_keeps_landmarks_in_anatomy(seed: int) -> None:
    phantom = generate_phantom(seed, PhantomConfig(spacing_mm=2.0, oblique=True))
    assert not phantom.volume.is_axis_aligned
    assert np.allclose(phantom.labels.direction, phantom.volume.direction)
    assert len(phantom.landmarks) >= 6
    _check_anatomy(phantom)


def test_cli_writes_phantoms_and_manifest(tmp_path) -> None:
    out = tmp_path / "phantoms"
    assert main(["--out", str(out), "--n", "3", "--seed", "7", "--spacing", "4"]) == 0
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ["phantom_000", "phantom_001", "phantom_002"]
    assert set(rows[0]) == {"case_id", "image", "landmarks", "split", "modality"}
    assert {row["split"] for row in rows} <= {"train", "val", "test"}
    assert all(row["modality"] == "ct" for row in rows)
    expected = generate_phantom(8, PhantomConfig(spacing_mm=4.0))
    image = io.read_volume(out / rows[1]["image"])
    np.testing.assert_array_equal(image.voxels, expected.volume.voxels)
    np.testing.assert_allclose(image.origin_lps_mm, expected.volume.origin_lps_mm, atol=1e-4)
    labels = io.read_volume(out / "phantom_001_labels.nii.gz")
    np.testing.assert_array_equal(labels.voxels, expected.labels.voxels)
    landmarks = io.read_landmarks(out / rows[1]["landmarks"])
    assert set(landmarks) == set(expected.landmarks)
    for name, point in expected.landmarks.items():
        np.testing.assert_allclose(landmarks[name], point, atol=1e-3)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "argv",
    [
        ["--n", "0"],
        ["--n", "2", "--val-fraction", "0.6", "--test-fraction", "0.5"],
        ["--n", "2", "--spacing", "-1"],
        ["--n", "two"],
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv: list[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        main(["--out", str(out), *argv])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert not out.exists()
