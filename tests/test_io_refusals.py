"""Regressions found by the reader fuzzing: each bad file here was misread, repaired or crashed.

Every case asserts the exception type, that the message is one line naming the file, and the
phrase that says what is wrong. The NaN/inf scan of NIfTI voxel data and the memory estimate
of huge headers are tested here as well.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from envs.core import Volume
from envs.data import read_manifest
from envs.io import read_landmarks, read_volume, write_landmarks, write_volume


def refused(error: pytest.ExceptionInfo, path: Path, *phrases: str) -> None:
    message = str(error.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} not in {message!r}"


def int16_nifti(path: Path, **fields: tuple[int, str, tuple]) -> Path:
    """A valid 4x3x2 int16 .nii (or .nii.gz) with header fields patched: name=(offset, fmt, values)."""
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(4, 3, 2), np.diag([2.0, 3.0, 4.0, 1.0]))
    raw = bytearray(image.to_bytes())
    for offset, fmt, values in fields.values():
        packed = struct.pack("<" + fmt, *values)
        raw[offset : offset + len(packed)] = packed
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


# ====================================================================== NIfTI: NaN/inf voxels
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8"])
def test_nifti_nan_and_inf_voxels_are_counted_not_zeroed(tmp_path: Path, suffix: str, dtype: str) -> None:
    voxels = np.linspace(-1, 1, 4 * 5 * 6).reshape(4, 5, 6).astype(dtype)
    voxels[0, 0, 0], voxels[1, 2, 3], voxels[3, 4, 5] = np.nan, np.inf, -np.inf
    path = tmp_path / f"nan{suffix}"
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    # SimpleITK alone hands the three voxels back as 0: no check after reading could see them.
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()
    with pytest.raises(ValueError, match="3 of 120 voxels are NaN or infinite") as error:
        read_volume(path)
    refused(error, path, "read them as 0", "nan_to_num")


def test_nifti_nan_scan_respects_vox_offset_and_scaling(tmp_path: Path) -> None:
    """Extensions move the data; a slope does not hide NaN (nifticlib zeroes before scaling)."""
    voxels = np.ones((3, 4, 5), np.float32)
    voxels[2, 3, 4] = np.nan
    image = nib.Nifti1Image(voxels, np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * 100))
    image.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / "ext.nii.gz"
    nib.save(image, path)
    with pytest.raises(ValueError, match="1 of 60 voxels") as error:
        read_volume(path)
    refused(error, path)
    voxels[2, 3, 4] = 7.0
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    assert read_volume(path).voxels.max() == 7.0


# ====================================================================== NIfTI header fields
@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"magic": (344, "4s", (b"abc\0",))}, "Analyze"),
        (
            {"magic": (344, "4s", (b"ni1\0",))},
            "header-only",
        ),  # skipped the truncation and NaN checks  # ITK read it as Analyze, dropping orientation
        ({"vox_offset": (108, "f", (float("nan"),))}, "vox_offset"),  # was an unnamed float->int error
        ({"vox_offset": (108, "f", (float("inf"),))}, "vox_offset"),  # was OverflowError
        ({"vox_offset": (108, "f", (0.0,))}, "vox_offset"),  # ITK read from a shifted position
        ({"vox_offset": (108, "f", (352.5,))}, "whole number"),
        ({"datatype": (70, "h", (3,))}, "datatype code 3"),
        ({"datatype": (70, "2h", (32, 64))}, "complex64"),  # was a Volume error about dtype
        ({"datatype": (70, "h", (16,))}, "bitpix 16 does not match"),  # int16 bits read as float32
        ({"bitpix": (72, "h", (0,))}, "bitpix 0"),  # bitpix 0 disabled the truncation check
        ({"units": (123, "B", (5,))}, "spatial unit code 5"),
        ({"sform_code": (254, "h", (7,))}, "sform_code 7"),  # nifticlib silently used code 0
        ({"srow": (280, "f", (float("nan"),))}, "srow"),  # was a NaN direction matrix
        ({"qform": (252, "h", (1,)), "quatern": (256, "3f", (0.9, 0.9, 0.9))}, "quaternion"),
        ({"slope": (112, "2f", (1e-30, 0.0))}, "ambiguous intensity scaling"),  # ITK ignored it
        ({"slope": (112, "2f", (0.0, -1.0))}, "ambiguous intensity scaling"),  # ITK added -1 anyway
        ({"slope": (112, "2f", (2.0, float("inf")))}, "ambiguous intensity scaling"),
    ],
)
def test_nifti_header_fields_itk_would_misread(tmp_path: Path, fields: dict, phrase: str) -> None:
    path = int16_nifti(tmp_path / "bad.nii", **fields)
    with pytest.raises(ValueError, match=f"(?i){re.escape(phrase)}") as error:
        read_volume(path)
    refused(error, path)


def test_nifti_scaling_that_itk_and_nibabel_agree_on_is_kept(tmp_path: Path) -> None:
    for slope, inter in [(float("nan"), float("nan")), (0.0, 0.0), (2.0, -1.0), (float("nan"), 0.0)]:
        path = int16_nifti(tmp_path / "ok.nii", slope=(112, "2f", (slope, inter)))
        expected = np.asarray(nib.load(path).dataobj, dtype=np.float64).T
        np.testing.assert_array_equal(read_volume(path).voxels, expected)


# ====================================================================== huge headers
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_huge_dimensions_are_refused_before_allocation_with_an_estimate(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"huge{suffix}"
    n = 30000  # 30000^3 int16 = 49 TiB: far beyond any machine, refused without allocating
    if suffix.startswith(".nii"):
        int16_nifti(path, dim=(40, "4h", (3, n, n, n)))
    elif suffix == ".nrrd":
        header = f"NRRD0004\ntype: short\ndimension: 3\nsizes: {n} {n} {n}\nendian: little\nencoding: raw\n\n"
        path.write_bytes(header.encode() + bytes(100))
    else:
        header = f"NDims = 3\nDimSize = {n} {n} {n}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
        path.write_bytes(header.encode() + bytes(100))
    with pytest.raises(ValueError, match=r"needs about [\d.]+ TiB of memory") as error:
        read_volume(path)
    refused(error, path, "30000", "available", "crop or downsample")


def test_nifti_claiming_large_dims_with_a_tiny_file_is_truncated(tmp_path: Path) -> None:
    path = int16_nifti(tmp_path / "stub.nii", dim=(40, "4h", (3, 200, 200, 200)))
    with pytest.raises(ValueError, match="truncated NIfTI") as error:
        read_volume(path)
    refused(error, path, "16000352")


# ====================================================================== NRRD and MetaImage
def nrrd(path: Path, fields: str, payload: bytes = np.arange(24, dtype="<i2").tobytes()) -> Path:
    base = "NRRD0004\ntype: short\ndimension: 3\nendian: little\nencoding: raw\n"
    path.write_bytes((base + fields + "\n\n").encode() + payload)
    return path


def metaimage(path: Path, fields: str, payload: bytes = np.arange(24, dtype="<i2").tobytes()) -> Path:
    base = "ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\n"
    path.write_bytes((base + fields + "\nElementDataFile = LOCAL\n").encode() + payload)
    return path


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ("sizes: 4 -3 2", "whole numbers"),  # ITK: "axis 0 size is zero!"
        ("sizes: 4 3", "expected 3"),
        (
            "sizes: 4 3 2\nspace: left-posterior-superior\nspace directions: (1,0,0) (2,0,0) (0,0,3)",
            "linearly",
        ),
    ],
)
def test_nrrd_headers(tmp_path: Path, fields: str, phrase: str) -> None:
    path = nrrd(tmp_path / "bad.nrrd", fields)
    with pytest.raises(ValueError, match=f"(?i){re.escape(phrase)}") as error:
        read_volume(path)
    refused(error, path)


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ("DimSize = 4 3 2\nOffset = nan 0 0", "Offset"),  # ITK silently read origin 0
        ("DimSize = 4 3 2\nOffset = a 0 0", "Offset"),
        ("DimSize = 4 3 2\nTransformMatrix = 1 0 0 1 0 0 0 0 1", "linearly"),  # ITK: "(0 0 1)"
        ("DimSize = 4 3 2\nTransformMatrix = nan 0 0 0 1 0 0 0 1", "TransformMatrix"),
        ("DimSize = 4 3", "expected 3"),  # ITK: "No such file or directory"
        ("DimSize = 4 3 2\nElementSpacing = 1 2", "ElementSpacing"),
        ("DimSize = 4 3 2\nElementNumberOfChannels = 3", "could not read"),  # data for 1 channel
        ("DimSize = 4 3 2\nCompressedData = True", "zlib stream"),  # ITK returned uninitialised voxels
        ("DimSize = 4 3 2\nBinaryData \xbd True", "Key = value"),
        ("NotDimSize = 4 3 2", "lacks DimSize"),
    ],
)
def test_metaimage_headers(tmp_path: Path, fields: str, phrase: str) -> None:
    path = metaimage(tmp_path / "bad.mha", fields)
    with pytest.raises(ValueError, match=f"(?i){re.escape(phrase)}") as error:
        read_volume(path)
    refused(error, path)


def test_metaimage_missing_data_file(tmp_path: Path) -> None:
    path = tmp_path / "ct.mhd"
    path.write_text("NDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = ct.raw\n")
    with pytest.raises(FileNotFoundError, match=r"ElementDataFile 'ct\.raw' not found") as error:
        read_volume(path)
    refused(error, path)


def test_compressed_metaimage_with_a_flipped_byte(tmp_path: Path) -> None:
    """ITK inflated it without checking the checksum and returned wrong voxels."""
    volume = Volume(np.random.default_rng(0).integers(-1000, 1000, (20, 30, 40)).astype(np.int16))
    path = write_volume(volume, tmp_path / "ct.mha")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt compressed MetaImage") as error:
        read_volume(path)
    refused(error, path)


def test_compressed_metaimage_round_trip_and_metadata_keys(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetMetaData("0008|0060", "CT")
    path = tmp_path / "md.mha"
    sitk.WriteImage(image, str(path), True)
    np.testing.assert_array_equal(read_volume(path).voxels, np.arange(60).reshape(3, 4, 5))


# ====================================================================== landmark files
@pytest.mark.parametrize(
    ("name", "text", "phrase"),
    [
        ("long.csv", "name,x_lps,y_lps,z_lps\n" + "a" * 200_000 + ",1,2,3\n", "unreadable CSV"),  # csv.Error
        ("twice.csv", "name,x_lps,y_lps,z_lps,name\na,1,2,3,b\n", "repeats column"),
        ("under.csv", "name,x_lps,y_lps,z_lps\na,1_000,2,3\n", "not all numbers"),  # float() took it
        ("digits.csv", "name,x_lps,y_lps,z_lps\na,\u0661,2,3\n", "not all numbers"),
        ("long.fcsv", "0,1,2,3,0,0,0,1,1,1,0," + "a" * 200_000 + "\n", "unreadable row"),
        ("id.fcsv", "# columns = x,y,desc,z,label,id\n0,0.0,0.0,0.0\n", "empty landmark name"),  # IndexError
        ("deep.mrk.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),  # RecursionError
        ("units.mrk.json", '{"markups": [{"type": "Fiducial", "coordinateUnits": ["mm"]}]}', "Units"),
        ("bool.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "a", '
         '"position": [true, 0, 0]}]}]}', "of numbers"),  # True was read as 1.0
        ("text.mrk.json", '{"markups": [{"type": "Fiducial", "coordinateUnits": "um", "controlPoints": '
         '[{"label": "a", "position": ["1000", 0, 0]}]}]}', "of numbers"),  # strings escaped the um scale
        ("big.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "a", '
         '"position": [1' + "0" * 400 + ', 0, 0]}]}]}', "not all numbers"),  # was OverflowError
        ("status.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "a", '
         '"position": [1, 2, 3], "positionStatus": "defind"}]}]}', "positionStatus"),  # was skipped
        ("label.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": ["a"], '
         '"position": [1, 2, 3]}]}]}', "text 'label'"),
    ],
)  # fmt: skip
def test_landmark_files(tmp_path: Path, name: str, text: str, phrase: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"(?i){re.escape(phrase)}") as error:
        read_landmarks(path)
    refused(error, path)


def test_csv_name_starting_with_hash_round_trips(tmp_path: Path) -> None:
    """It was written unquoted and read back as a comment line: the point vanished."""
    points = {"#1": np.array([1.0, 2.0, 3.0]), "a": np.array([4.0, 5.0, 6.0])}
    path = write_landmarks(points, tmp_path / "hash.csv")
    assert list(read_landmarks(path)) == ["#1", "a"]
    assert path.read_text().splitlines()[2] == "a,4.0,5.0,6.0"  # other rows are written as before


@pytest.mark.parametrize("name", ["a\x0cb", "a\rb", "a\u2028b"])
def test_landmark_names_with_line_breaks_are_refused_on_write(tmp_path: Path, name: str) -> None:
    path = tmp_path / "p.fcsv"
    with pytest.raises(ValueError, match="spans lines") as error:
        write_landmarks({name: np.zeros(3)}, path)
    refused(error, path)
    assert not path.exists()


# ====================================================================== manifests
@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_volume(Volume(np.zeros((2, 2, 2), np.int16)), tmp_path / "images" / "a.nii.gz")


@pytest.mark.parametrize(
    ("name", "content", "phrase"),
    [
        ("latin1.csv", "image,split\nimages/\xe9.nii.gz,train\n".encode("latin-1"), "not a UTF-8"),
        ("latin1.yaml", "- {image: images/\xe9, split: train}\n".encode("latin-1"), "not a UTF-8"),
        ("huge.csv", b"image,split\n" + b"x" * 200_000 + b",train\n", "unreadable CSV"),
        ("long.csv", b"image,split\n" + b"x" * 5000 + b",train\n", "not a usable path"),
        ("user.csv", b"image,split\n~nosuchuser_medgym/a.nii.gz,train\n", "not a usable path"),
        ("twice.csv", b"image,split,image\nimages/a.nii.gz,train,x\n", "repeats column"),
        ("date.yaml", b"- {image: images/a.nii.gz, split: 2019-21-01}\n", "not valid YAML"),
        ("list.yaml", b"- {image: [images/a.nii.gz], split: train}\n", "single values"),
        ("bomb.yaml", b"a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\n"
         b"cases:\n  - {image: images/a.nii.gz, split: train, case_id: [*b, *b, *b, *b]}\n", "single values"),
        ("deep.yaml", b"[" * 5000 + b"]" * 5000, "YAML"),
        ("dup.yaml", b"- {image: images/a.nii.gz, split: train}\n- {image: images/a.nii.gz, split: val}\n",
         "appears twice (first at case 1)"),
    ],
)  # fmt: skip
def test_manifests(tmp_path: Path, image: Path, name: str, content: bytes, phrase: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"(?i){re.escape(phrase)}") as error:
        read_manifest(path)
    refused(error, path)


def test_csv_manifest_with_crlf_and_quotes_reads_as_before(tmp_path: Path, image: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        b'case_id,image,split\r\n"a, b",images/a.nii.gz,train\r\n# note\r\nc,images/a.nii.gz,val\r\n'
    )
    cases = read_manifest(path)
    assert [(case.case_id, case.split) for case in cases] == [("a, b", "train"), ("c", "val")]
