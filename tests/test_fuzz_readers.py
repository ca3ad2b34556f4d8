"""Fuzzed readers: every volume, landmark and manifest reader gives a valid result or a clear error.

Hypothesis mutates valid files (flipped, cut and inserted bytes; header fields set to 0,
negative, NaN, inf, huge or nonsense values) and builds random headers and landmark files from
their fields. A reader must then either return a result that agrees with the file (checked
against nibabel for NIfTI, against the header's own numbers for NRRD and MetaImage, against
the written points for landmark files) or raise ``ValueError``/``FileNotFoundError`` with a
one-line message that names the file. Any other exception, a hang or a silently repaired
result fails. Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.core import Volume
from envs.data import read_manifest
from envs.io import read_landmarks, read_volume, write_landmarks, write_volume

pytestmark = pytest.mark.timeout(120)

# MEDGYM_FUZZ_EXAMPLES=2000 searches deeper locally; the default keeps the default run fast.
FUZZ = settings(
    max_examples=int(os.environ.get("MEDGYM_FUZZ_EXAMPLES", "50")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# Edge values for numeric header fields: the ones readers repair or trip over.
NASTY_FLOATS = st.sampled_from([0.0, -0.0, -1.0, 1e-30, 1e30, 3e38, math.nan, math.inf, -math.inf, 0.5, 2.0])
NASTY_INTS = st.sampled_from([0, -1, 1, 2, 3, 7, 8, 255, 32767, -32768, 2000])
_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh(folder: Path, suffix: str) -> Path:
    """A new file name in ``folder`` (hypothesis reuses the module fixture across examples)."""
    return folder / f"case{next(_counter)}{suffix}"


def assert_read_or_clear_error(read: Callable[[Path], object], path: Path) -> object | None:
    """``read(path)``, or ``None`` after checking that the error is one of the clear kinds."""
    try:
        return read(path)
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
        assert str(path) in message, f"error does not name the file: {message!r}"
        assert "\n" not in message, f"error spans lines: {message!r}"
        return None


# ====================================================================== byte mutations
@st.composite
def mutated(draw: st.DrawFn, raw: bytes, protect: int = 0) -> bytes:
    """``raw`` with one to three flips, cuts, insertions or overwrites (not before ``protect``)."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        if len(data) <= protect:
            break
        at = draw(st.integers(protect, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


def small_volume(dtype: str) -> Volume:
    rng = np.random.default_rng(7)
    voxels = rng.uniform(-100, 100, size=(3, 4, 5)).astype(dtype)
    return Volume(voxels, (0.5, 1.5, 2.5), (-3.0, 4.0, 5.0), np.diag([1.0, -1.0, 1.0]))


@functools.cache
def originals() -> dict[str, bytes]:
    """Valid small files of every volume format (compressed and not), as bytes."""
    files = {}
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("int16", "float32"):
            for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
                for compress in (False, True):
                    path = write_volume(small_volume(dtype), Path(folder) / f"v{suffix}", compress=compress)
                    files[f"{dtype}{suffix}{'z' if compress else ''}"] = path.read_bytes()
    return files


def assert_agrees_with_nibabel(volume: Volume, path: Path) -> None:
    """An accepted NIfTI must read as nibabel (an independent reader) reads it: no silent repair."""
    try:
        image = nib.load(path)
        expected = np.asarray(image.dataobj, dtype=np.float64)
    except Exception:
        return
    expected = expected.reshape((*expected.shape[:3], -1))[..., 0] if expected.ndim > 3 else expected
    np.testing.assert_allclose(volume.voxels.astype(np.float64), expected.T, rtol=1e-6, atol=1e-6)
    # ITK converts metres and microns to mm (xyzt_units); nibabel reports the stored numbers.
    to_mm = {1: 1e3, 3: 1e-3}.get(int(image.header["xyzt_units"]) & 7, 1.0)
    np.testing.assert_allclose(
        volume.spacing_xyz_mm, np.array(image.header.get_zooms()[:3]) * to_mm, rtol=1e-5
    )


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("name", ["int16.nii", "float32.nii", "int16.nii.gzz", "float32.nii.gzz"])
def test_nifti_byte_mutations(folder: Path, name: str, data: st.DataObject) -> None:
    raw = originals()[name]
    compressed = name.endswith("z")
    plain = gzip.decompress(raw) if compressed else raw
    # Mutate the decompressed bytes (header and voxels); sometimes the gzip stream itself.
    if compressed and data.draw(st.booleans()):
        content = data.draw(mutated(raw))
    else:
        content = data.draw(mutated(plain))
        content = gzip.compress(content, mtime=0) if compressed else content
    path = fresh(folder, ".nii.gz" if compressed else ".nii")
    path.write_bytes(content)
    volume = assert_read_or_clear_error(read_volume, path)
    if volume is not None:
        assert_agrees_with_nibabel(volume, path)


NIFTI_FIELDS = {  # name: (offset, struct format, strategy)
    "dim": (40, "8h", st.lists(NASTY_INTS, min_size=8, max_size=8)),
    "datatype": (70, "h", st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1536, 2304, 9999])),
    "bitpix": (72, "h", NASTY_INTS),
    "pixdim": (76, "8f", st.lists(NASTY_FLOATS, min_size=8, max_size=8)),
    "vox_offset": (108, "f", st.sampled_from([0.0, 348.0, 351.0, 352.0, 352.5, 368.0, 1e9, -1.0, math.nan])),
    "scl_slope": (112, "f", NASTY_FLOATS | st.sampled_from([1e-30, 1e-16, -2.0])),
    "scl_inter": (116, "f", NASTY_FLOATS),
    "qform_code": (252, "h", st.integers(-2, 8)),
    "sform_code": (254, "h", st.integers(-2, 8)),
    "quatern": (256, "6f", st.lists(NASTY_FLOATS, min_size=6, max_size=6)),
    "srow": (280, "12f", st.lists(NASTY_FLOATS, min_size=12, max_size=12)),
    "xyzt_units": (123, "B", st.sampled_from([0, 1, 2, 3, 4, 7, 10, 255])),
    "magic": (344, "4s", st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"abcd"])),
}


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("name", ["int16.nii", "float32.nii.gzz"])
def test_nifti_header_fields(folder: Path, name: str, data: st.DataObject) -> None:
    compressed = name.endswith("z")
    header = bytearray(gzip.decompress(originals()[name]) if compressed else originals()[name])
    for field in data.draw(
        st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=3, unique=True)
    ):
        offset, fmt, values = NIFTI_FIELDS[field]
        value = data.draw(values)
        packed = struct.pack("<" + fmt, *(value if isinstance(value, list) else [value]))
        header[offset : offset + len(packed)] = packed
    path = fresh(folder, ".nii.gz" if compressed else ".nii")
    path.write_bytes(gzip.compress(bytes(header), mtime=0) if compressed else bytes(header))
    volume = assert_read_or_clear_error(read_volume, path)
    if volume is not None:
        assert_agrees_with_nibabel(volume, path)


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize(
    "name", ["int16.nrrd", "float32.nrrdz", "int16.mha", "float32.mhaz", "float32.mha", "int16.mhaz"]
)
def test_nrrd_and_metaimage_byte_mutations(folder: Path, name: str, data: st.DataObject) -> None:
    path = fresh(folder, ".nrrd" if ".nrrd" in name else ".mha")
    path.write_bytes(data.draw(mutated(originals()[name])))
    assert_read_or_clear_error(read_volume, path)


# ====================================================================== structured text headers
SIZES = st.lists(
    st.sampled_from(["1", "2", "3", "0", "-2", "x", "2.5", "99999999", "1e3"]), min_size=1, max_size=4
)
VECTOR = st.lists(
    st.sampled_from(["0", "1", "-1", "2", "0.5", "nan", "inf", "x", ""]), min_size=2, max_size=4
).map(lambda values: "(" + ",".join(values) + ")")


@st.composite
def nrrd_file(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    fields = {
        "type": draw(st.sampled_from(["short", "float", "uchar", "double", "int64", "quux", ""])),
        "dimension": draw(st.sampled_from(["3", "2", "4", "0", "-1", "17", "x"])),
        "sizes": " ".join(draw(SIZES)),
        "endian": draw(st.sampled_from(["little", "big", "middle"])),
        "encoding": draw(st.sampled_from(["raw", "gzip", "ascii", "text", "zip", "bzip2"])),
    }
    geometry = draw(st.sampled_from(["spacings", "space directions", "none"]))
    if geometry == "spacings":
        fields["spacings"] = " ".join(draw(st.lists(NASTY_FLOATS.map(repr), min_size=1, max_size=4)))
    elif geometry == "space directions":
        fields["space"] = draw(st.sampled_from(["left-posterior-superior", "RAS", "up-down"]))
        fields["space directions"] = " ".join(draw(st.lists(VECTOR, min_size=1, max_size=4)))
        fields["space origin"] = draw(VECTOR)
    omitted = draw(st.sets(st.sampled_from(sorted(fields)), max_size=2))
    fields = {key: value for key, value in fields.items() if key not in omitted}
    payload = draw(st.binary(max_size=200))
    if fields.get("encoding") == "gzip" and draw(st.booleans()):
        payload = gzip.compress(payload, mtime=0)
    header = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in fields.items()) + "\n"
    return header.encode() + payload, fields


@FUZZ
@given(case=nrrd_file())
def test_structured_nrrd_headers(folder: Path, case: tuple[bytes, dict[str, str]]) -> None:
    content, fields = case
    path = fresh(folder, ".nrrd")
    path.write_bytes(content)
    volume = assert_read_or_clear_error(read_volume, path)
    if isinstance(volume, Volume):  # accepted: the header's own numbers, not repaired ones
        sizes = [int(size) for size in fields["sizes"].split()]
        assert list(volume.size_xyz) == sizes[:3] + [1] * (3 - len(sizes[:3]))
        if "spacings" in fields:
            spacing = [float(value) for value in fields["spacings"].split()][:3]
            np.testing.assert_allclose(volume.spacing_xyz_mm[: len(spacing)], spacing)


MET_TYPES = ["MET_SHORT", "MET_FLOAT", "MET_UCHAR", "MET_DOUBLE", "MET_QUUX", "short"]


@st.composite
def metaimage_file(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    fields = {
        "ObjectType": "Image",
        "NDims": draw(st.sampled_from(["3", "2", "4", "0", "x"])),
        "DimSize": " ".join(draw(SIZES)),
        "ElementType": draw(st.sampled_from(MET_TYPES)),
        "ElementSpacing": " ".join(draw(st.lists(NASTY_FLOATS.map(repr), min_size=1, max_size=4))),
        "Offset": " ".join(draw(st.lists(NASTY_FLOATS.map(repr), min_size=1, max_size=4))),
        "TransformMatrix": " ".join(
            draw(st.lists(st.sampled_from(["0", "1", "-1", "nan", "x"]), max_size=10))
        ),
        "CompressedData": draw(st.sampled_from(["False", "True", "maybe"])),
        "ElementNumberOfChannels": draw(st.sampled_from(["1", "3", "0", "-1"])),
        "ElementDataFile": draw(st.sampled_from(["LOCAL", "missing.raw", "LIST"])),
    }
    omitted = draw(st.sets(st.sampled_from(sorted(fields)), max_size=3))
    fields = {key: value for key, value in fields.items() if key not in omitted}
    payload = draw(st.binary(max_size=200))
    if fields.get("CompressedData") == "True" and draw(st.booleans()):
        payload = gzip.compress(payload, mtime=0)[10:]  # a zlib-like stream, maybe broken
    header = "".join(f"{key} = {value}\n" for key, value in fields.items())
    return header.encode() + payload, fields


@FUZZ
@given(case=metaimage_file())
def test_structured_metaimage_headers(folder: Path, case: tuple[bytes, dict[str, str]]) -> None:
    content, fields = case
    path = fresh(folder, ".mha")
    path.write_bytes(content)
    volume = assert_read_or_clear_error(read_volume, path)
    if isinstance(volume, Volume):
        sizes = [int(size) for size in fields["DimSize"].split()]
        assert list(volume.size_xyz) == sizes[:3] + [1] * (3 - len(sizes[:3]))
        if "ElementSpacing" in fields:
            spacing = [float(value) for value in fields["ElementSpacing"].split()][:3]
            np.testing.assert_allclose(volume.spacing_xyz_mm[: len(spacing)], spacing)


# ====================================================================== landmark files
NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).map(str.strip) | st.sampled_from(
    ["#", "# x", '"q"', "a,b", "\x0c", "a\rb", "name", "x_lps", "\ufeffbom"]
)
COORDINATE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@FUZZ
@given(
    points=st.dictionaries(
        NAMES.filter(bool), st.tuples(COORDINATE, COORDINATE, COORDINATE), min_size=1, max_size=5
    ),
    suffix=st.sampled_from([".csv", ".fcsv", ".mrk.json"]),
    system=st.sampled_from([None, "LPS", "RAS"]),
)
def test_landmark_round_trip_of_random_points(
    folder: Path, points: dict[str, tuple[float, float, float]], suffix: str, system: str | None
) -> None:
    path = fresh(folder, suffix)
    landmarks = {name: np.array(point) for name, point in points.items()}
    if any(name.splitlines() != [name] for name in landmarks):
        with pytest.raises(ValueError, match="spans lines"):
            write_landmarks(landmarks, path, system)
        return
    write_landmarks(landmarks, path, system)
    read = read_landmarks(path)
    assert list(read) == list(landmarks)
    for name, point in landmarks.items():
        np.testing.assert_array_equal(read[name], point)


CELLS = st.sampled_from(
    [
        "1",
        "-2.5",
        "3e2",
        "nan",
        "inf",
        "",
        " ",
        "x",
        "1_0",
        "0x10",
        '"a,b"',
        '"',
        "\x00",
        "true",
        "LPS",
        "RAS",
    ]
)
CSV_HEADERS = st.sampled_from(
    [
        "name,x_lps,y_lps,z_lps",
        "label,x_ras,y_ras,z_ras",
        "name,x,y,z",
        "name,l,p,s",
        "label,r,a,s,defined",
        "name,name,x_lps,y_lps,z_lps",
        "x_lps,y_lps,z_lps",
        "name,x_lps,y_ras,z_lps",
        "",
    ]
)


@st.composite
def landmark_text(draw: st.DrawFn, suffix: str) -> str:
    """A random landmark file: comment lines, a header and rows of nasty cells."""
    lines = []
    if suffix == ".fcsv":
        if draw(st.booleans()):
            lines.append(
                f"# CoordinateSystem = {draw(st.sampled_from(['0', '1', 'LPS', 'RAS', 'ras', 'XYZ', '']))}"
            )
        if draw(st.booleans()):
            columns = draw(st.permutations(["id", "x", "y", "z", "label", "desc"]))
            lines.append("# columns = " + ",".join(columns[: draw(st.integers(0, 6))]))
    else:
        if draw(st.booleans()):
            lines.append(f"# coordinate_system = {draw(st.sampled_from(['LPS', 'RAS', 'xyz', '']))}")
        lines.append(draw(CSV_HEADERS))
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            cells = [draw(NAMES), *(repr(draw(COORDINATE)) for _ in range(3))]
        else:
            cells = draw(st.lists(CELLS, max_size=7))
        lines.append(",".join(cells))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


def assert_valid_points(points: object, path: Path) -> None:
    assert isinstance(points, dict), f"{path}: accepted {points!r}"
    assert points, f"{path}: accepted an empty result"
    for name, point in points.items():
        assert isinstance(name, str), name
        assert name, "empty name accepted"
        assert name == name.strip(), name
        assert point.shape == (3,), point
        assert np.all(np.isfinite(point)), point


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("suffix", [".csv", ".fcsv"])
def test_random_csv_and_fcsv_files(folder: Path, suffix: str, data: st.DataObject) -> None:
    path = fresh(folder, suffix)
    text = data.draw(landmark_text(suffix))
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated(text.encode())))
    else:
        path.write_text(text, encoding="utf-8", newline="")
    points = assert_read_or_clear_error(read_landmarks, path)
    if points is not None:
        assert_valid_points(points, path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
MRK_KEYS = [
    ("markups",),
    ("markups", 0),
    ("markups", 0, "type"),
    ("markups", 0, "coordinateSystem"),
    ("markups", 0, "coordinateUnits"),
    ("markups", 0, "controlPoints"),
    ("markups", 0, "controlPoints", 0),
    ("markups", 0, "controlPoints", 0, "label"),
    ("markups", 0, "controlPoints", 0, "id"),
    ("markups", 0, "controlPoints", 0, "position"),
    ("markups", 0, "controlPoints", 0, "position", 1),
    ("markups", 0, "controlPoints", 0, "positionStatus"),
    ("markups", 0, "controlPoints", 1, "label"),
]


@FUZZ
@given(data=st.data())
def test_mrk_json_with_wrong_types(folder: Path, data: st.DataObject) -> None:
    path = fresh(folder, ".mrk.json")
    write_landmarks({"a": np.array([1.0, 2.0, 3.0]), "b": np.array([4.0, 5.0, 6.0])}, path)
    document = json.loads(path.read_text())
    for keys in data.draw(st.lists(st.sampled_from(MRK_KEYS), min_size=1, max_size=3)):
        target = document
        try:
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier replacement removed the path
    kind = data.draw(st.sampled_from(["json", "mutated", "deep"]))
    if kind == "json":
        path.write_text(json.dumps(document))
    elif kind == "mutated":
        path.write_bytes(data.draw(mutated(json.dumps(document).encode())))
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
    points = assert_read_or_clear_error(read_landmarks, path)
    if points is not None:
        assert_valid_points(points, path)


# ====================================================================== manifests
MANIFEST_CELLS = st.sampled_from(
    ["images/a.nii.gz", "images/missing.nii.gz", "", "train", "val", "test", "TRAIN", "ct", "mr", "pet", "s1",
     "s1", "\x00", "a\x00b", "x" * 300, "~nosuchuser_medgym/a.nii.gz", '"', '"a,b"', "landmarks/a.fcsv"]
)  # fmt: skip
MANIFEST_HEADERS = st.lists(
    st.sampled_from(["case_id", "image", "landmarks", "split", "modality", "labels", "colour", "", "Image"]),
    max_size=6,
)


@pytest.fixture(scope="module")
def manifest_folder(folder: Path) -> Path:
    root = folder / "manifests"
    write_volume(Volume(np.zeros((2, 2, 2), np.int16)), root / "images" / "a.nii.gz")
    write_landmarks({"p": np.zeros(3)}, root / "landmarks" / "a.fcsv")
    return root


@FUZZ
@given(data=st.data())
def test_random_csv_manifests(manifest_folder: Path, data: st.DataObject) -> None:
    rows = [",".join(data.draw(MANIFEST_HEADERS))]
    for _ in range(data.draw(st.integers(0, 4))):
        rows.append(",".join(data.draw(st.lists(MANIFEST_CELLS, max_size=7))))
    text = "\n".join(rows) + "\n"
    path = fresh(manifest_folder, ".csv")
    path.write_bytes(data.draw(mutated(text.encode())) if data.draw(st.booleans()) else text.encode())
    cases = assert_read_or_clear_error(read_manifest, path)
    if cases is not None:
        ids = [case.case_id for case in cases]
        assert len(ids) == len(set(ids)), f"{path}: duplicate case ids accepted"
        assert all(case.image.is_file() for case in cases)


YAML_SNIPPETS = st.sampled_from(
    [
        "cases:\n  - {image: images/a.nii.gz, split: train}\n",
        "- {image: images/a.nii.gz, split: val, case_id: 7}\n",
        "- {image: [a, b], split: train}\n",
        "- {? [a, b] : c, image: images/a.nii.gz, split: train}\n",
        "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        "cases:\n  - {image: images/a.nii.gz, split: train, case_id: [*b, *b, *b, *b, *b, *b, *b, *b]}\n",
        "cases: {image: images/a.nii.gz}\n",
        "- image: images/a.nii.gz\n  split: train\n- image: images/a.nii.gz\n  split: train\n",
        "- {image: 'a\\0b', split: train}\n",
        "- {image: images/a.nii.gz, split: train, landmarks: landmarks/a.fcsv, modality: CT}\n",
        "[" * 5000 + "]" * 5000 + "\n",
        "cases:\n\t- bad indentation\n",
        "- !!python/object/apply:os.system ['true']\n",
        "- {image: images/a.nii.gz, split: 2019-01-01}\n",
        "",
    ]
)


@FUZZ
@given(data=st.data())
def test_random_yaml_manifests(manifest_folder: Path, data: st.DataObject) -> None:
    text = data.draw(YAML_SNIPPETS)
    path = fresh(manifest_folder, ".yaml")
    path.write_bytes(
        data.draw(mutated(text.encode())) if text and data.draw(st.booleans()) else text.encode()
    )
    cases = assert_read_or_clear_error(read_manifest, path)
    if cases is not None:
        assert all(case.image.is_file() for case in cases)
