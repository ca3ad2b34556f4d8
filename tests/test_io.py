"""envs.io: volume, landmark and transform files (geometry, Slicer dialects, errors, atomicity)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from envs.core import Volume
from envs.io import (
    LANDMARK_SUFFIXES,
    VOLUME_SUFFIXES,
    headers,
    read_landmarks,
    read_transform,
    read_volume,
    write_landmarks,
    write_transform,
    write_volume,
)

NIBABEL_DATA = Path(nibabel.testing.data_path)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# A point whose three coordinates differ in sign and size, so a flipped or swapped axis shows.
POINT_LPS = np.array([-12.25, 33.5, 101.75])


def assert_message(error: pytest.ExceptionInfo, path: Path, *phrases: str) -> None:
    """The message names the file and contains each key phrase (case-insensitive)."""
    message = str(error.value)
    assert str(path) in message, message
    for phrase in phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} not in {message!r}"


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a writer may have left behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ====================================================================== volume round trips
@pytest.mark.parametrize("suffix", VOLUME_SUFFIXES)
def test_round_trip_keeps_voxels_and_geometry(oblique_volume: Volume, tmp_path: Path, suffix: str) -> None:
    path = write_volume(oblique_volume, tmp_path / "sub" / f"ct{suffix}")
    volume = read_volume(path)
    assert volume.voxels.dtype == np.int16
    np.testing.assert_array_equal(volume.voxels, oblique_volume.voxels)
    np.testing.assert_allclose(volume.spacing_xyz_mm, oblique_volume.spacing_xyz_mm, atol=1e-5)
    np.testing.assert_allclose(volume.origin_lps_mm, oblique_volume.origin_lps_mm, atol=1e-5)
    np.testing.assert_allclose(volume.direction, oblique_volume.direction, atol=1e-5)
    assert volume.name == str(path)
    assert leftovers(path.parent) == []


def test_float_round_trip_is_exact(oblique_float_volume: Volume, tmp_path: Path) -> None:
    volume = read_volume(write_volume(oblique_float_volume, tmp_path / "mr.nii.gz"))
    assert volume.voxels.dtype == np.float32
    np.testing.assert_array_equal(volume.voxels, oblique_float_volume.voxels)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_world_index_mapping_matches_simpleitk_on_the_same_file(
    oblique_volume: Volume, tmp_path: Path, suffix: str
) -> None:
    path = write_volume(oblique_volume, tmp_path / f"ct{suffix}")
    volume = read_volume(path)
    image = sitk.ReadImage(str(path))
    indices_xyz = np.array([[0, 0, 0], [8, 0, 0], [0, 6, 0], [0, 0, 4], [8.0, 6.0, 4.0], [2.5, -1.25, 3.75]])
    for index in indices_xyz:
        expected = image.TransformContinuousIndexToPhysicalPoint(index.tolist())
        np.testing.assert_allclose(volume.index_to_lps(index), expected, atol=1e-6)
        np.testing.assert_allclose(volume.lps_to_index(expected), index, atol=1e-6)


def test_nibabel_oblique_ras_affine_becomes_lps(tmp_path: Path) -> None:
    rotation = Rotation.from_euler("zyx", [23.0, -11.0, 37.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.7, 3.1])
    affine[:3, 3] = [40.0, -25.0, 12.0]
    data = np.arange(6 * 4 * 3, dtype=np.int16).reshape(6, 4, 3)  # nibabel order (i, j, k)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)

    volume = read_volume(path)
    assert volume.shape_zyx == (3, 4, 6)
    np.testing.assert_allclose(volume.spacing_xyz_mm, [0.8, 1.7, 3.1], atol=1e-5)
    for i, j, k in [(0, 0, 0), (5, 0, 0), (0, 3, 0), (0, 0, 2), (5, 3, 2), (2, 1, 1)]:
        expected_lps = RAS_TO_LPS @ (affine @ [i, j, k, 1.0])[:3]
        np.testing.assert_allclose(volume.index_to_lps([i, j, k]), expected_lps, atol=1e-4)
        assert volume.voxels[k, j, i] == data[i, j, k]


def test_reads_real_nibabel_anatomical_t1() -> None:
    path = NIBABEL_DATA / "anatomical.nii"  # big-endian int16, written by someone else
    reference = nib.load(path)
    volume = read_volume(path)
    assert volume.size_xyz == reference.shape == (33, 41, 25)
    np.testing.assert_allclose(volume.spacing_xyz_mm, reference.header.get_zooms(), atol=1e-6)
    data = np.asarray(reference.dataobj)
    for i, j, k in [(0, 0, 0), (32, 40, 24), (10, 20, 5), (16, 0, 24)]:
        expected_lps = RAS_TO_LPS @ (reference.affine @ [i, j, k, 1.0])[:3]
        np.testing.assert_allclose(volume.index_to_lps([i, j, k]), expected_lps, atol=1e-5)
        assert volume.voxels[k, j, i] == data[i, j, k]


def test_four_d_with_a_single_volume_is_squeezed(tmp_path: Path) -> None:
    path = tmp_path / "single_frame.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 3, 2, 1), np.float32), np.diag([2.0, 3.0, 4.0, 1.0])), path)
    volume = read_volume(path)
    assert volume.shape_zyx == (2, 3, 4)
    np.testing.assert_allclose(volume.spacing_xyz_mm, [2.0, 3.0, 4.0])


def test_four_d_metaimage_with_a_single_volume_is_squeezed(tmp_path: Path) -> None:
    # ITK keeps this one 4-D (unlike NIfTI), so medgym drops the length-1 axis itself.
    header = (
        "ObjectType = Image\nNDims = 4\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\nOffset = 1 2 3 0\n"
        "ElementSpacing = 1 2 3 1\nDimSize = 4 3 2 1\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / "frame.mha"
    path.write_bytes(header.encode() + np.arange(24, dtype="<i2").tobytes())
    assert sitk.ReadImage(str(path)).GetDimension() == 4
    volume = read_volume(path)
    assert volume.shape_zyx == (2, 3, 4)
    assert volume.voxels[1, 2, 3] == 23
    np.testing.assert_allclose(volume.index_to_lps([1, 1, 1]), [2.0, 4.0, 6.0])


# ====================================================================== DICOM
def write_dicom_series(volume: Volume, folder: Path, series_uid: str, skip: tuple[int, ...] = ()) -> None:
    """One DICOM file per z slice, with position/orientation tags from the volume's geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    direction = volume.direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.shape_zyx[0]):
        if k in skip:
            continue
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in [*direction[:, 0], *direction[:, 1]]),
            "0018|0050": f"{volume.spacing_xyz_mm[2]:.6f}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_has_the_right_geometry(oblique_volume: Volume, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_dicom_series(oblique_volume, folder, "1.2.826.0.1.3680043.2.1125.9.1")
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.voxels, oblique_volume.voxels)
    np.testing.assert_allclose(volume.spacing_xyz_mm, oblique_volume.spacing_xyz_mm, atol=1e-4)
    np.testing.assert_allclose(volume.origin_lps_mm, oblique_volume.origin_lps_mm, atol=1e-4)
    np.testing.assert_allclose(volume.direction, oblique_volume.direction, atol=1e-5)


def test_reads_real_dicom_slices_from_nibabel(tmp_path: Path) -> None:
    folder = tmp_path / "mr"
    folder.mkdir()
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(NIBABEL_DATA / name, folder / name)
    first = sitk.ReadImage(str(folder / "0.dcm"))
    second = sitk.ReadImage(str(folder / "1.dcm"))
    volume = read_volume(folder)
    assert volume.size_xyz == (256, 256, 2)
    np.testing.assert_allclose(volume.spacing_xyz_mm[:2], first.GetSpacing()[:2])
    # Slice spacing comes from the positions of the two slices (3 mm apart), not from a default.
    gap = np.linalg.norm(np.subtract(second.GetOrigin(), first.GetOrigin()))
    assert gap == pytest.approx(3.0, abs=1e-4)
    assert volume.spacing_xyz_mm[2] == pytest.approx(gap, abs=1e-4)
    np.testing.assert_allclose(volume.origin_lps_mm, first.GetOrigin(), atol=1e-4)
    # This real stack is sheared by 0.016 mm (positions step straight along z while the slice
    # normal is tilted 0.3 degrees); far below a voxel, so it is read as a regular grid.
    np.testing.assert_allclose(volume.index_to_lps([0, 0, 1]), second.GetOrigin(), atol=0.02)
    np.testing.assert_array_equal(volume.voxels[1], sitk.GetArrayFromImage(second)[0])


def test_dicom_folder_with_several_series_lists_them_and_series_id_picks(
    oblique_volume: Volume, tmp_path: Path
) -> None:
    folder = tmp_path / "study"
    write_dicom_series(oblique_volume, folder, "1.2.826.0.1.3680043.2.1125.9.1")
    shifted = Volume(oblique_volume.voxels[::-1], oblique_volume.spacing_xyz_mm, (0.0, 0.0, 0.0))
    write_dicom_series(shifted, folder / "tmp", "1.2.826.0.1.3680043.2.1125.9.2")
    for produced in (folder / "tmp").iterdir():
        produced.rename(folder / f"b_{produced.name}")
    with pytest.raises(ValueError, match="2 DICOM series") as error:
        read_volume(folder)
    assert_message(
        error, folder, "1.2.826.0.1.3680043.2.1125.9.1", "1.2.826.0.1.3680043.2.1125.9.2", "series_id"
    )
    picked = read_volume(folder, series_id="1.2.826.0.1.3680043.2.1125.9.2")
    np.testing.assert_array_equal(picked.voxels, shifted.voxels)
    with pytest.raises(ValueError, match="not found") as error:
        read_volume(folder, series_id="1.2.3")
    assert_message(error, folder, "1.2.3")


def test_dicom_folder_without_series(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here\n")
    with pytest.raises(ValueError, match="no DICOM series") as error:
        read_volume(folder)
    assert_message(error, folder, "readme.txt", "pass the file itself")


def test_dicom_series_with_a_missing_slice(oblique_volume: Volume, tmp_path: Path) -> None:
    folder = tmp_path / "gap"
    write_dicom_series(oblique_volume, folder, "1.2.826.0.1.3680043.2.1125.9.3", skip=(2,))
    with pytest.raises(ValueError, match="not evenly spaced") as error:
        read_volume(folder)
    assert_message(error, folder, "missing")


def test_dicom_series_with_gantry_tilt_is_refused(oblique_volume: Volume, tmp_path: Path) -> None:
    folder = tmp_path / "tilt"
    write_dicom_series(oblique_volume, folder, "1.2.826.0.1.3680043.2.1125.9.4")
    for path in sorted(folder.iterdir()):
        image = sitk.ReadImage(str(path))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        k = int(reader.GetMetaData("0020|0013")) - 1
        # Shift each slice along its row direction: a sheared stack that ITK would read as regular.
        position += oblique_volume.direction[:, 0] * 0.9 * k
        for key in reader.GetMetaDataKeys():
            image.SetMetaData(key, reader.GetMetaData(key))
        image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(image)
    with pytest.raises(ValueError, match="sheared") as error:
        read_volume(folder)
    assert_message(error, folder, "gantry tilt", "resample")


def test_dicom_series_with_one_slice(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(NIBABEL_DATA / "0.dcm", folder / "0.dcm")
    with pytest.raises(ValueError, match="single slice") as error:
        read_volume(folder)
    assert_message(error, folder, "3-D")


def test_single_dicom_file_asks_for_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "0.dcm"
    shutil.copy(NIBABEL_DATA / "0.dcm", path)
    with pytest.raises(ValueError, match="folder") as error:
        read_volume(path)
    assert_message(error, path, "single DICOM file")


# ====================================================================== volume errors
def nifti_with_pixdim(path: Path, pixdim_xyz: tuple[float, float, float]) -> Path:
    """A valid NIfTI-1 whose pixdim[1..3] are overwritten in the raw header bytes."""
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.diag([1.0, 2.0, 3.0, 1.0])), path)
    raw = bytearray(path.read_bytes())
    raw[80:92] = struct.pack("<3f", *pixdim_xyz)  # pixdim[1..3]: bytes 76 + 4 * (1..3)
    path.write_bytes(bytes(raw))
    return path


def test_missing_volume_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.nii.gz"
    with pytest.raises(FileNotFoundError) as error:
        read_volume(path)
    assert_message(error, path, "not found")


@pytest.mark.parametrize("name", ["scan.png", "scan.nii.bz2", "scan"])
def test_unsupported_volume_suffix(oblique_volume: Volume, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="unsupported volume file suffix") as error:
        read_volume(path)
    assert_message(error, path, ".nii.gz", ".nrrd")
    with pytest.raises(ValueError, match="unsupported volume file suffix") as error:
        write_volume(oblique_volume, tmp_path / "out" / name)
    assert not (tmp_path / "out" / name).exists()


def test_text_file_renamed_nii(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii"
    path.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(ValueError, match="not a NIfTI file") as error:
        read_volume(path)
    assert_message(error, path, "expected 348")


def test_truncated_nii_gz(oblique_float_volume: Volume, tmp_path: Path) -> None:
    full = write_volume(oblique_float_volume, tmp_path / "full.nii.gz")
    path = tmp_path / "half.nii.gz"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated") as error:
        read_volume(path)
    assert_message(error, path, "re-download")


def test_truncated_uncompressed_nii(oblique_float_volume: Volume, tmp_path: Path) -> None:
    full = write_volume(oblique_float_volume, tmp_path / "full.nii")
    path = tmp_path / "half.nii"
    path.write_bytes(full.read_bytes()[: full.stat().st_size - 100])
    # SimpleITK alone would read this without complaint, zero-filling the missing voxels.
    assert sitk.ReadImage(str(path)).GetSize() == oblique_float_volume.size_xyz
    with pytest.raises(ValueError, match="truncated NIfTI") as error:
        read_volume(path)
    assert_message(error, path, "zeros")


def test_nii_gz_cut_inside_the_header(oblique_volume: Volume, tmp_path: Path) -> None:
    full = write_volume(oblique_volume, tmp_path / "full.nii.gz")
    path = tmp_path / "stub.nii.gz"
    path.write_bytes(full.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"corrupt gzip|too short") as error:
        read_volume(path)
    assert_message(error, path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.nrrd", b"NRRD0004\nthis line is no field\n\n\x00\x01\x02"),
        ("binary.nrrd", bytes(range(256)) * 4),
    ],
)
def test_garbage_nrrd(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match="NRRD") as error:
        read_volume(path)
    assert_message(error, path)


def test_truncated_nrrd_and_mha(oblique_volume: Volume, tmp_path: Path) -> None:
    for suffix in (".nrrd", ".mha"):
        full = write_volume(oblique_volume, tmp_path / f"full{suffix}", compress=False)
        path = tmp_path / f"half{suffix}"
        path.write_bytes(full.read_bytes()[: full.stat().st_size - 50])
        with pytest.raises(ValueError, match="could not read") as error:
            read_volume(path)
        assert_message(error, path, "corrupt, truncated")


def test_two_dimensional_image(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 4), np.int16), np.eye(4)), path)
    with pytest.raises(ValueError, match="expected a 3-D image, got a 2-D") as error:
        read_volume(path)
    assert_message(error, path, "2-D slice cannot be used")


def test_four_d_image_from_nibabel_test_data() -> None:
    path = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(ValueError, match="got a 4-D image") as error:
        read_volume(path)
    assert_message(error, path, "(128, 96, 24, 2)", "split it")


def test_nifti2_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    path = tmp_path / "v2.nii.gz"
    nib.save(nib.Nifti2Image(np.zeros((4, 3, 2), np.int16), np.eye(4)), path)
    with pytest.raises(ValueError, match="NIfTI-2") as error:
        read_volume(path)
    assert_message(error, path, "Nifti1Image")


def test_vector_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(ValueError, match="3 components") as error:
        read_volume(path)
    assert_message(error, path, "one intensity per voxel")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(oblique_float_volume: Volume, tmp_path: Path, bad: float) -> None:
    path = tmp_path / "nan.nrrd"
    image = oblique_float_volume.to_sitk()
    image[3, 2, 1] = bad
    sitk.WriteImage(image, str(path))
    with pytest.raises(ValueError, match="1 of 315 voxels are NaN or infinite") as error:
        read_volume(path)
    assert_message(error, path, "nan_to_num")


@pytest.mark.parametrize("pixdim", [(0.0, 2.0, 3.0), (-1.0, 2.0, 3.0), (1.0, float("nan"), 3.0)])
def test_nifti_zero_negative_or_nan_pixdim(tmp_path: Path, pixdim: tuple[float, float, float]) -> None:
    path = nifti_with_pixdim(tmp_path / "bad_pixdim.nii", pixdim)
    # The reason for the header check: ITK itself invents a positive spacing without an error.
    assert all(s > 0 for s in sitk.ReadImage(str(path)).GetSpacing())
    with pytest.raises(ValueError, match="invalid voxel spacing") as error:
        read_volume(path)
    assert_message(error, path, "pixdim", "> 0 mm", "fix the header")


def write_nrrd(path: Path, geometry: str) -> Path:
    header = (
        f"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: raw\n{geometry}\n\n"
    )
    path.write_bytes(header.encode() + np.arange(24, dtype="<i2").tobytes())
    return path


@pytest.mark.parametrize(
    "geometry",
    [
        "spacings: 0 2 3",
        "spacings: -1 2 3",
        "spacings: nan 2 3",
        "space: left-posterior-superior\nspace directions: (0,0,0) (0,2,0) (0,0,3)\nspace origin: (0,0,0)",
    ],
)
def test_nrrd_zero_negative_or_nan_spacing(tmp_path: Path, geometry: str) -> None:
    path = write_nrrd(tmp_path / "bad.nrrd", geometry)
    with pytest.raises(ValueError, match="invalid voxel spacing") as error:
        read_volume(path)
    assert_message(error, path, "space directions")


def test_nrrd_negative_space_direction_is_a_valid_flip(tmp_path: Path) -> None:
    geometry = (
        "space: left-posterior-superior\nspace directions: (-1,0,0) (0,2,0) (0,0,3)\nspace origin: (5,6,7)"
    )
    volume = read_volume(write_nrrd(tmp_path / "flipped.nrrd", geometry))
    np.testing.assert_allclose(volume.spacing_xyz_mm, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(volume.index_to_lps([1, 1, 1]), [4.0, 8.0, 10.0])


@pytest.mark.parametrize("spacing", ["0 2 3", "-1 2 3"])
def test_metaimage_zero_or_negative_spacing(oblique_volume: Volume, tmp_path: Path, spacing: str) -> None:
    path = write_volume(oblique_volume, tmp_path / "ct.mha", compress=False)
    raw = path.read_bytes()
    start = raw.index(b"ElementSpacing = ")
    end = raw.index(b"\n", start)
    path.write_bytes(raw[:start] + f"ElementSpacing = {spacing}".encode() + raw[end:])
    with pytest.raises(ValueError, match="invalid voxel spacing ElementSpacing") as error:
        read_volume(path)
    assert_message(error, path, "TransformMatrix")


def test_series_id_on_a_file_is_an_error(oblique_volume: Volume, tmp_path: Path) -> None:
    path = write_volume(oblique_volume, tmp_path / "ct.nrrd")
    with pytest.raises(ValueError, match="only applies to a DICOM folder") as error:
        read_volume(path, series_id="1.2.3")
    assert_message(error, path)


# ====================================================================== atomic volume writes
def failing_write(image: sitk.Image, filename: str, *args: object) -> None:
    """Stand-in for sitk.WriteImage that dies after writing half a file."""
    Path(filename).write_bytes(b"\x1f\x8b half a file")
    raise RuntimeError("disk full (simulated)")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mhd"])
def test_failed_volume_write_leaves_no_file(
    oblique_volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    path = tmp_path / f"ct{suffix}"
    with pytest.raises(ValueError, match="could not write") as error:
        write_volume(oblique_volume, path)
    assert_message(error, path, "disk full")
    assert list(tmp_path.iterdir()) == []


def test_failed_volume_write_keeps_the_old_file(
    oblique_volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_volume(oblique_volume, tmp_path / "ct.nii.gz")
    before = path.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(ValueError, match="could not write"):
        write_volume(oblique_volume.with_voxels(np.zeros(oblique_volume.shape_zyx, np.int16)), path)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


# ====================================================================== landmark round trips
LANDMARKS = {
    "apex": POINT_LPS,
    "left, lateral": np.array([5.0, -7.5, 0.125]),  # a comma in the name needs quoting
    "Z-last": np.array([0.0, 0.0, -3.0]),
}


@pytest.mark.parametrize(
    ("suffix", "system"),
    [
        (".fcsv", None),
        (".fcsv", "LPS"),
        (".mrk.json", None),
        (".mrk.json", "RAS"),
        (".csv", None),
        (".csv", "RAS"),
    ],
)
def test_landmark_round_trip(tmp_path: Path, suffix: str, system: str | None) -> None:
    path = write_landmarks(LANDMARKS, tmp_path / "sub" / f"points{suffix}", coordinate_system=system)
    points = read_landmarks(path)
    assert list(points) == list(LANDMARKS)
    for name, point in LANDMARKS.items():
        assert points[name].shape == (3,)
        assert points[name].dtype == np.float64
        np.testing.assert_array_equal(points[name], point)
    assert leftovers(path.parent) == []


def test_fcsv_is_written_in_ras_by_default(tmp_path: Path) -> None:
    text = write_landmarks({"apex": POINT_LPS}, tmp_path / "a.fcsv").read_text()
    lines = text.splitlines()
    assert lines[0] == "# Markups fiducial file version = 4.11"
    assert lines[1] == "# CoordinateSystem = RAS"
    assert lines[2] == "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"
    assert lines[3].startswith("vtkMRMLMarkupsFiducialNode_1,12.25,-33.5,101.75,")
    assert ",apex," in lines[3]


def test_mrk_json_is_written_in_lps_by_default(tmp_path: Path) -> None:
    document = json.loads(write_landmarks({"apex": POINT_LPS}, tmp_path / "a.mrk.json").read_text())
    assert document["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = document["markups"]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == (
        "Fiducial",
        "LPS",
        "mm",
    )
    assert markup["controlPoints"][0]["position"] == POINT_LPS.tolist()
    assert markup["controlPoints"][0]["positionStatus"] == "defined"


def test_csv_is_written_with_lps_columns(tmp_path: Path) -> None:
    text = write_landmarks({"apex": POINT_LPS}, tmp_path / "a.csv").read_text()
    assert text.splitlines() == ["name,x_lps,y_lps,z_lps", "apex,-12.25,33.5,101.75"]


# ====================================================================== hand-written Slicer files
# POINT_LPS in RAS is (12.25, -33.5, 101.75).
SLICER_FILES = {
    "pre-4.11 without CoordinateSystem (RAS)": (
        "# Markups fiducial file version = 4.6\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,12.25,-33.5,101.75,0,0,0,1,1,1,0,apex,,vtkMRMLScalarVolumeNode1\n"
    ),
    "no header lines at all (standard positions, RAS)": "1,12.25,-33.5,101.75,0,0,0,1,1,1,0,apex,,\n",
    "old numeric CoordinateSystem 0 (RAS)": (
        "# Markups fiducial file version = 4.10\n# CoordinateSystem = 0\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,12.25,-33.5,101.75,0,0,0,1,1,1,0,apex,,\n"
    ),
    "old numeric CoordinateSystem 1 (LPS)": (
        "# Markups fiducial file version = 4.10\n# CoordinateSystem = 1\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,-12.25,33.5,101.75,0,0,0,1,1,1,0,apex,,\n"
    ),
    "4.11 LPS": (
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "1,-12.25,33.5,101.75,0,0,0,1,1,1,0,apex,,\n"
    ),
    "5.2+ with trailing columns (RAS)": (
        "# Markups fiducial file version = 5.6\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "1,12.25,-33.5,101.75,0,0,0,1,1,1,0,apex,,,2,0\n"
    ),
    "columns in another order": (
        "# CoordinateSystem = LPS\n# columns = label,z,y,x\napex,101.75,33.5,-12.25\n"
    ),
}


@pytest.mark.parametrize("variant", list(SLICER_FILES))
def test_hand_written_fcsv_variants(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "slicer.fcsv"
    path.write_text(SLICER_FILES[variant])
    points = read_landmarks(path)
    assert list(points) == ["apex"]
    np.testing.assert_allclose(points["apex"], POINT_LPS, atol=0)


def test_fcsv_quoted_labels_with_commas_and_empty_label_falls_back_to_id(tmp_path: Path) -> None:
    path = tmp_path / "slicer52.fcsv"
    path.write_text(
        "# Markups fiducial file version = 5.2\n# CoordinateSystem = LPS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        '1,1,2,3,0,0,0,1,1,1,0,"femoral head, left","desc, with comma",,2,0\n'
        "F_7,4,5,6,0,0,0,1,1,1,0,,,,2,0\n"
    )
    points = read_landmarks(path)
    assert list(points) == ["femoral head, left", "F_7"]
    np.testing.assert_array_equal(points["femoral head, left"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(points["F_7"], [4.0, 5.0, 6.0])


def test_hand_written_mrk_json(tmp_path: Path) -> None:
    path = tmp_path / "slicer.mrk.json"
    document = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
        "Resources/Schema/markups-schema-v1.0.0.json#",
        "markups": [
            # No coordinateSystem: Slicer's default is LPS.
            {"type": "Fiducial", "controlPoints": [{"label": "apex", "position": POINT_LPS.tolist()}]},
            {"type": "Line", "controlPoints": [{"label": "ignored", "position": [9, 9, 9]}]},
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "coordinateUnits": "um",
                "controlPoints": [
                    {
                        "id": "7",
                        "label": "",
                        "position": [1000.0, 2000.0, 3000.0],
                        "positionStatus": "defined",
                    },
                    {"label": "unplaced", "position": [0, 0, 0], "positionStatus": "undefined"},
                ],
            },
        ],
    }
    path.write_text(json.dumps(document))
    points = read_landmarks(path)
    assert list(points) == ["apex", "7"]
    np.testing.assert_array_equal(points["apex"], POINT_LPS)
    np.testing.assert_allclose(points["7"], [-1.0, -2.0, 3.0])


@pytest.mark.parametrize(
    "text",
    [
        "name,x_ras,y_ras,z_ras\napex,12.25,-33.5,101.75\n",
        "# coordinate_system = RAS\nlabel,x,y,z\napex,12.25,-33.5,101.75\n",
        "# Coordinate system: LPS\nName,X,Y,Z\napex,-12.25,33.5,101.75\n",
        # Slicer's "Export control points to CSV" (LPS).
        "label,l,p,s,defined,selected,visible,locked,description\napex,-12.25,33.5,101.75,true,true,true,false,\n"
        "unplaced,0,0,0,false,true,true,false,\n",
        "\ufeffname,X_LPS,Y_LPS,Z_LPS\n\napex,-12.25,33.5,101.75\n",
    ],
)
def test_csv_variants(tmp_path: Path, text: str) -> None:
    path = tmp_path / "points.csv"
    path.write_text(text, encoding="utf-8")
    np.testing.assert_array_equal(read_landmarks(path)["apex"], POINT_LPS)


# ====================================================================== landmark errors
def assert_landmark_refused(tmp_path: Path, name: str, text: str, *phrases: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        read_landmarks(path)
    assert_message(error, path, *phrases)


def test_missing_landmark_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.fcsv"
    with pytest.raises(FileNotFoundError) as error:
        read_landmarks(path)
    assert_message(error, path, "not found")


def test_unsupported_landmark_suffix(tmp_path: Path) -> None:
    assert_landmark_refused(
        tmp_path, "points.xlsx", "name,x\n", "unsupported landmark file suffix", ".mrk.json"
    )
    with pytest.raises(ValueError, match="unsupported landmark file suffix"):
        write_landmarks(LANDMARKS, tmp_path / "points.json")
    assert set(LANDMARK_SUFFIXES) == {".csv", ".fcsv", ".mrk.json"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("dup.csv", "name,x_lps,y_lps,z_lps\napex,1,2,3\nbase,4,5,6\napex,7,8,9\n"),
        (
            "dup.fcsv",
            "# CoordinateSystem = LPS\n1,1,2,3,0,0,0,1,1,1,0,apex,,\n2,4,5,6,0,0,0,1,1,1,0,apex,,\n",
        ),
        (
            "dup.mrk.json",
            '{"markups": [{"type": "Fiducial", "controlPoints": ['
            '{"label": "apex", "position": [1, 2, 3]}, {"label": "apex", "position": [4, 5, 6]}]}]}',
        ),
    ],
)
def test_duplicate_landmark_name(tmp_path: Path, name: str, text: str) -> None:
    assert_landmark_refused(tmp_path, name, text, "duplicate landmark name 'apex'", "unique")


def test_duplicate_name_reports_both_lines(tmp_path: Path) -> None:
    assert_landmark_refused(
        tmp_path,
        "dup.csv",
        "name,x_lps,y_lps,z_lps\napex,1,2,3\nbase,4,5,6\napex,7,8,9\n",
        "line 4",
        "line 2",
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ijk.fcsv", "# CoordinateSystem = IJK\n1,1,2,3,0,0,0,1,1,1,0,apex,,\n"),
        ("two.fcsv", "# CoordinateSystem = 2\n1,1,2,3,0,0,0,1,1,1,0,apex,,\n"),
        (
            "ijk.mrk.json",
            '{"markups": [{"type": "Fiducial", "coordinateSystem": "IJK", "controlPoints": []}]}',
        ),
        ("ijk.csv", "# coordinate_system = voxel\nname,x,y,z\napex,1,2,3\n"),
    ],
)
def test_unknown_coordinate_system(tmp_path: Path, name: str, text: str) -> None:
    assert_landmark_refused(tmp_path, name, text, "unknown coordinate system", "LPS, RAS")
    with pytest.raises(ValueError, match="unknown coordinate system"):
        write_landmarks(LANDMARKS, tmp_path / "out.fcsv", coordinate_system="IJK")
    assert not (tmp_path / "out.fcsv").exists()


def test_csv_without_coordinate_system(tmp_path: Path) -> None:
    assert_landmark_refused(
        tmp_path,
        "plain.csv",
        "name,x,y,z\napex,1,2,3\n",
        "LPS or RAS",
        "x_lps,y_lps,z_lps",
        "# coordinate_system",
    )


def test_csv_comment_contradicting_columns(tmp_path: Path) -> None:
    assert_landmark_refused(
        tmp_path, "mixed.csv", "# coordinate_system = RAS\nname,x_lps,y_lps,z_lps\napex,1,2,3\n", "agree"
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.csv", ""),
        ("header_only.csv", "name,x_lps,y_lps,z_lps\n"),
        ("comments_only.fcsv", "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"),
        ("no_points.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": []}]}'),
        (
            "all_undefined.mrk.json",
            '{"markups": [{"type": "Fiducial", "controlPoints": ['
            '{"label": "a", "position": [0, 0, 0], "positionStatus": "undefined"}]}]}',
        ),
    ],
)
def test_empty_landmark_file(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=r"no landmarks|no header row") as error:
        read_landmarks(path)
    assert_message(error, path, "expected")


@pytest.mark.parametrize(
    ("name", "text", "phrases"),
    [
        (
            "short.csv",
            "name,x_lps,y_lps,z_lps\napex,1,2,3\nbase,4,5\n",
            ("line 3", "expected 4 columns", "got 3"),
        ),
        ("long.csv", "name,x_lps,y_lps,z_lps\napex,1,2,3,4\n", ("line 2", "got 5")),
        ("word.csv", "# c\nname,x_lps,y_lps,z_lps\napex,1,two,3\n", ("line 3", "not all numbers")),
        (
            "short.fcsv",
            "# CoordinateSystem = LPS\n1,1,2,3,0,0,0,1,1,1,0,apex,,\n2,4,5\n",
            ("line 3", "at least 4"),
        ),
        (
            "word.fcsv",
            "# CoordinateSystem = LPS\n\n1,1,2,x,0,0,0,1,1,1,0,apex,,\n",
            ("line 3", "not all numbers"),
        ),
        ("no_name.csv", "id,x_lps,y_lps,z_lps\n1,1,2,3\n", ("line 1", "'name'")),
        ("empty_name.csv", "name,x_lps,y_lps,z_lps\n ,1,2,3\n", ("line 2", "empty landmark name")),
        ("bad.mrk.json", '{"markups": [', ("not valid JSON", "line 1")),
        ("lines.mrk.json", '{"markups": [{"type": "Line", "controlPoints": []}]}', ("no 'Fiducial'", "Line")),
        (
            "two_d.mrk.json",
            '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "a", "position": [1, 2]}]}]}',
            ("markups[0].controlPoints[0]", "expected 3 coordinates"),
        ),
    ],
)
def test_malformed_landmark_rows(tmp_path: Path, name: str, text: str, phrases: tuple[str, ...]) -> None:
    assert_landmark_refused(tmp_path, name, text, *phrases)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("nan.csv", "name,x_lps,y_lps,z_lps\napex,1,nan,3\n"),
        ("inf.fcsv", "# CoordinateSystem = LPS\n1,1,2,inf,0,0,0,1,1,1,0,apex,,\n"),
    ],
)
def test_non_finite_landmark_coordinates(tmp_path: Path, name: str, text: str) -> None:
    assert_landmark_refused(tmp_path, name, text, "not finite", "apex", "line 2")


@pytest.mark.parametrize(
    ("landmarks", "phrase"),
    [
        ({}, "no landmarks"),
        ({"apex": np.array([1.0, np.nan, 3.0])}, "3 finite LPS coordinates"),
        ({"apex": np.array([1.0, 2.0])}, "3 finite LPS coordinates"),
        ({"": np.zeros(3)}, "empty"),
        ({" apex": np.zeros(3)}, "spaces"),
    ],
)
def test_write_landmarks_rejects_bad_points(tmp_path: Path, landmarks: dict, phrase: str) -> None:
    path = tmp_path / "out.fcsv"
    with pytest.raises(ValueError, match=phrase) as error:
        write_landmarks(landmarks, path)
    assert_message(error, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", LANDMARK_SUFFIXES)
def test_failed_landmark_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def failing_replace(source: object, target: object) -> None:
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        write_landmarks(LANDMARKS, tmp_path / f"points{suffix}")
    assert list(tmp_path.iterdir()) == []


# ====================================================================== transforms
def test_transform_round_trip(tmp_path: Path) -> None:
    transform = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, -5.0, 6.0))
    for suffix in (".tfm", ".h5"):
        read_back = read_transform(write_transform(transform, tmp_path / "deep" / f"rigid{suffix}"))
        np.testing.assert_allclose(
            read_back.TransformPoint((10.0, 20.0, 30.0)),
            transform.TransformPoint((10.0, 20.0, 30.0)),
            atol=1e-9,
        )
    assert leftovers(tmp_path / "deep") == []


def test_transform_errors(tmp_path: Path) -> None:
    missing = tmp_path / "absent.tfm"
    with pytest.raises(FileNotFoundError) as error:
        read_transform(missing)
    assert_message(error, missing, "not found")
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("this is not a transform\n")
    with pytest.raises(ValueError, match="could not read") as error:
        read_transform(garbage)
    assert_message(error, garbage, "ITK transform file")
    with pytest.raises(ValueError, match="unsupported transform file suffix") as error:
        write_transform(sitk.Euler3DTransform(), tmp_path / "rigid.json")
    assert_message(error, tmp_path / "rigid.json", ".tfm")


def test_gzip_helper_detects_a_cut_stream(tmp_path: Path) -> None:
    """The trailer fast path must not accept a stream that merely ends early."""
    path = tmp_path / "cut.gz"
    payload = gzip.compress(np.random.default_rng(0).bytes(10_000))
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt gzip") as error:
        headers._decompressed_size_at_least(path, 10_000)
    assert_message(error, path)
