"""Reading and writing medical files: volumes, landmark lists and transforms.

This is the only module of medgym that touches medical file formats (see ARCHITECTURE.md).
Everything it returns is in medgym's conventions: voxels ``(z, y, x)`` in a
:class:`~envs.core.Volume`, points in physical LPS millimetres.

Volumes (SimpleITK underneath):
    NIfTI-1 (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
    ``.mhd``), or a folder holding one DICOM series. NIfTI-2 is refused with a hint to
    convert it: SimpleITK 2.5 (ITK 5.4) cannot read it.

Landmarks (name -> LPS point in mm):
    ``.csv`` (columns ``name,x_lps,y_lps,z_lps``; see :func:`read_landmarks` for the accepted
    variants), 3D Slicer ``.fcsv`` (any version) and Slicer ``.mrk.json``. Slicer files are RAS
    unless their header says LPS; the RAS <-> LPS flip (negate x and y) happens here and
    nowhere else.

Transforms:
    thin wrappers over ``sitk.ReadTransform`` / ``sitk.WriteTransform``.

Geometry checks that SimpleITK does not do. ITK (5.4) silently *invents* geometry for some
broken headers, so the readers look at the header themselves before trusting ITK:

* NIfTI ``pixdim[1..3]`` of 0 or NaN becomes 1 mm and a negative one becomes its absolute
  value with the axis flipped; medgym parses the 348-byte header (no nibabel needed) and
  refuses such files.
* A NIfTI whose voxel data are cut short (truncated download) is read by ITK without any
  error, the missing part filled with zeros; medgym compares the (decompressed) file size with
  what the header promises.
* NRRD ``spacings:`` and MetaImage ``ElementSpacing`` that are negative are turned into flipped
  axes, and NaN NRRD spacings into 1 mm; medgym refuses them (a flip belongs in ``space directions`` /
  ``TransformMatrix``). Zero spacings make ITK fail with a cryptic message; medgym says which
  field is wrong instead.

Every bad input raises :class:`FileNotFoundError` or :class:`ValueError` whose message names
the file, what was expected, what came and how to fix it. Writers are atomic: the data go to a
temporary file in the target folder that is renamed over the target only when complete.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> volume = Volume(np.zeros((2, 3, 4), np.int16), spacing_xyz_mm=(0.5, 1.0, 2.0))
    >>> read_volume(write_volume(volume, folder / "ct.nii.gz")).spacing_xyz_mm.tolist()
    [0.5, 1.0, 2.0]
    >>> path = write_landmarks({"apex": np.array([1.0, 2.0, 3.0])}, folder / "points.fcsv")
    >>> read_landmarks(path)["apex"].tolist()  # stored as RAS (-1, -2, 3), read back as LPS
    [1.0, 2.0, 3.0]
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import secrets
import shutil
import struct
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from envs.core import Volume

__all__ = [
    "COORDINATE_SYSTEMS",
    "LANDMARK_SUFFIXES",
    "TRANSFORM_SUFFIXES",
    "VOLUME_SUFFIXES",
    "read_landmarks",
    "read_transform",
    "read_volume",
    "write_displacement_field",
    "write_landmarks",
    "write_transform",
    "write_volume",
]

VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
LANDMARK_SUFFIXES: tuple[str, ...] = (".csv", ".fcsv", ".mrk.json")
TRANSFORM_SUFFIXES: tuple[str, ...] = (".tfm", ".txt", ".h5", ".hdf5", ".mat")
COORDINATE_SYSTEMS: tuple[str, ...] = ("LPS", "RAS")

_FORMAT_NAMES = {
    ".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD",
    ".mha": "MetaImage", ".mhd": "MetaImage",
}  # fmt: skip
# Detached-header formats: ITK writes a header plus a data file named after it.
_DETACHED_SUFFIXES = (".nhdr", ".mhd")
# RAS <-> LPS is its own inverse: negate x (R->L) and y (A->P).
_RAS_LPS_FLIP = np.array([-1.0, -1.0, 1.0])
_MRK_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
_FCSV_COLUMNS = (
    "id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"
)  # fmt: skip
# Relative tolerance on DICOM slice gaps: scanners round positions to ~1e-3 mm.
_SLICE_GAP_TOLERANCE = 0.01
# Sideways drift of slice positions allowed, as a fraction of the in-plane spacing.
_SLICE_SHEAR_TOLERANCE = 0.1


# ====================================================================== small helpers
def _matching_suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """The longest suffix in ``suffixes`` that ``path``'s name ends with (case-insensitive)."""
    name = path.name.lower()
    found = [suffix for suffix in suffixes if name.endswith(suffix)]
    return max(found, key=len) if found else None


def _require_suffix(path: Path, suffixes: tuple[str, ...], what: str) -> str:
    suffix = _matching_suffix(path, suffixes)
    if suffix is None:
        got = "".join(path.suffixes[-2:]) or "no suffix"
        raise ValueError(
            f"{path}: unsupported {what} file suffix {got!r}; expected one of {', '.join(suffixes)}. "
            f"Rename or convert the file (e.g. with 3D Slicer or SimpleITK)"
        )
    return suffix


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} file not found; check the path (cwd is {Path.cwd()})")
    if path.is_dir():
        raise ValueError(f"{path}: expected a {what} file, got a folder")


def _itk_reason(error: Exception) -> str:
    """The informative tail of an ITK exception (the head is a C++ source path)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _parse_coordinate_system(value: str, path: Path, where: str) -> str:
    system = value.strip().upper()
    if system not in COORDINATE_SYSTEMS:
        raise ValueError(
            f"{path}: {where}: unknown coordinate system {value.strip()!r}; expected one of "
            f"{', '.join(COORDINATE_SYSTEMS)}. Fix the header of the file"
        )
    return system


def _to_lps(point: NDArray[np.float64], system: str) -> NDArray[np.float64]:
    return point * _RAS_LPS_FLIP if system == "RAS" else point


def _from_lps(point_lps_mm: NDArray[np.float64], system: str) -> NDArray[np.float64]:
    return point_lps_mm * _RAS_LPS_FLIP if system == "RAS" else point_lps_mm


# ====================================================================== atomic writes
def _temporary_sibling(path: Path, suffix: str) -> Path:
    """A fresh hidden name next to ``path`` that keeps ``suffix`` (writers pick format by it)."""
    stem = path.name[: len(path.name) - len(suffix)]
    return path.parent / f".{stem}.tmp-{secrets.token_hex(6)}{suffix}"


@contextmanager
def _atomic_target(path: Path, suffix: str) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto ``path`` only if the body succeeds.

    The temporary file lives in the same folder (same filesystem), so ``os.replace`` is an
    atomic rename: readers see either the old file or the complete new one, never a part.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path, suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_text_atomic(path: Path, suffix: str, text: str) -> Path:
    # newline="" keeps the "\n" line ends csv/json produced on every platform.
    with (
        _atomic_target(path, suffix) as temporary,
        open(temporary, "x", encoding="utf-8", newline="") as stream,
    ):
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    return path


# ====================================================================== header checks
def _read_head(path: Path, size: int) -> tuple[bytes, bool]:
    """First ``size`` bytes of the (possibly gzip-compressed) file and whether it is gzipped."""
    with open(path, "rb") as stream:
        compressed = stream.read(2) == b"\x1f\x8b"
    try:
        opener = gzip.open if compressed else open
        with opener(path, "rb") as stream:
            return stream.read(size), compressed
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path}: corrupt gzip stream ({error}); expected a complete .nii.gz. "
            "Re-download or re-export the file"
        ) from error


def _decompressed_size_at_least(path: Path, expected: int) -> int:
    """Decompressed length of a gzip file, reading at most what is needed to reach ``expected``."""
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        # The gzip trailer stores the length modulo 2**32: a match is a cheap proof of completeness.
        if struct.unpack("<I", stream.read(4))[0] == expected % 2**32:
            return expected
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path}: truncated or corrupt gzip stream after {total} bytes ({error}); expected a "
            f"complete file of {expected} bytes. Re-download or re-export the file"
        ) from error
    return total


def _check_nifti_header(path: Path) -> None:
    """Refuse NIfTI files whose spacing or length ITK would silently repair (see module doc)."""
    head, compressed = _read_head(path, 348)
    if len(head) < 348:
        raise ValueError(
            f"{path}: file too short for a NIfTI header ({len(head)} bytes, need 348); expected a "
            "NIfTI-1/2 image. The file is truncated or not NIfTI"
        )
    layout = None
    for endian in "<>":
        header_size = struct.unpack(endian + "i", head[:4])[0]
        if header_size in (348, 540):
            layout = (endian, header_size)
            break
    if layout is None:
        raise ValueError(
            f"{path}: not a NIfTI file (header size field is {struct.unpack('<i', head[:4])[0]}, "
            f"expected 348 for NIfTI-1 or 540 for NIfTI-2; first bytes {head[:16]!r}). "
            "Check that the file really is NIfTI, or give it the suffix of its actual format"
        )
    endian, header_size = layout
    if header_size == 540:
        raise ValueError(
            f"{path}: NIfTI-2 file; expected NIfTI-1: SimpleITK (ITK 5.4) cannot read NIfTI-2. Convert it, "
            "e.g. nibabel.save(nibabel.Nifti1Image(img.dataobj, img.affine, img.header), 'out.nii.gz')"
        )
    dims = struct.unpack(endian + "8h", head[40:56])
    bitpix = struct.unpack(endian + "h", head[72:74])[0]
    pixdim = struct.unpack(endian + "8f", head[76:108])
    data_offset = int(struct.unpack(endian + "f", head[108:112])[0])
    single_file = head[344:347] == b"n+1"
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(n < 1 for n in dims[1 : ndim + 1]):
        raise ValueError(f"{path}: invalid NIfTI dim field {list(dims)}; the header is corrupt")
    spatial = [float(p) for p in pixdim[1 : min(ndim, 3) + 1]]
    if not all(math.isfinite(p) and p > 0 for p in spatial):
        raise ValueError(
            f"{path}: invalid voxel spacing in the NIfTI header: pixdim[1..3] = {spatial}; expected "
            "finite values > 0 mm. SimpleITK would silently replace 0/NaN by 1 mm and negative values "
            "by their absolute value (flipping the axis), so medgym refuses the file. Fix the header, "
            "e.g. nibabel: img.header.set_zooms(...) with the true spacing"
        )
    if not single_file:
        return  # header-only variant (ni1): the voxels live in a separate .img file
    expected = max(data_offset, header_size) + (math.prod(dims[1 : ndim + 1]) * bitpix + 7) // 8
    actual = _decompressed_size_at_least(path, expected) if compressed else path.stat().st_size
    if actual < expected:
        raise ValueError(
            f"{path}: truncated NIfTI file: the header promises {expected} bytes of header and voxels "
            f"(dim {list(dims[1 : ndim + 1])}, {bitpix} bits), got {actual}. SimpleITK would fill the "
            "rest with zeros; re-download or re-export the file"
        )


def _read_text_header(path: Path, limit: int = 1 << 20) -> list[str]:
    """Lines of a text header that ends at the first blank line (NRRD) or at EOF/limit."""
    with open(path, "rb") as stream:
        raw = stream.read(limit)
    end = re.search(rb"\r?\n\r?\n", raw)
    return raw[: end.start() if end else len(raw)].decode("latin-1").splitlines()


def _check_spacing_values(path: Path, field: str, values: list[str], fix: str) -> None:
    try:
        numbers = [float(value) for value in values]
    except ValueError as error:
        raise ValueError(f"{path}: {field} = {' '.join(values)!r} is not numeric; {fix}") from error
    if not all(math.isfinite(n) and n > 0 for n in numbers):
        raise ValueError(
            f"{path}: invalid voxel spacing {field} = {numbers}; expected finite values > 0 mm. "
            f"SimpleITK would silently flip negative axes or invent 1 mm for NaN, so medgym refuses "
            f"the file; {fix}"
        )


def _check_nrrd_header(path: Path) -> None:
    lines = _read_text_header(path)
    if not lines or not lines[0].startswith("NRRD"):
        first = lines[0][:40] if lines else ""
        raise ValueError(
            f"{path}: not a NRRD file (expected the magic 'NRRD000x' on the first line, got {first!r}); "
            "check the file or give it the suffix of its actual format"
        )
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    fix = "state the geometry with 'space directions' (one vector per axis, its length the spacing)"
    if "space directions" in fields:
        for vector in re.findall(r"\(([^)]*)\)", fields["space directions"]):
            try:
                components = [float(c) for c in vector.split(",")]
            except ValueError as error:
                raise ValueError(
                    f"{path}: space directions vector ({vector}) is not numeric; {fix}"
                ) from error
            if not all(math.isfinite(c) for c in components) or math.hypot(*components) <= 0:
                raise ValueError(
                    f"{path}: invalid voxel spacing: space directions vector ({vector}) has zero or "
                    f"non-finite length; expected one non-zero vector per spatial axis; {fix}"
                )
    elif "spacings" in fields:
        values = fields["spacings"].split()
        if fields.get("dimension") != "3":
            # Non-spatial axes (e.g. a vector component) legitimately carry NaN.
            values = [value for value in values if value.lower() != "nan"]
        _check_spacing_values(path, "spacings", values, fix)


def _check_metaimage_header(path: Path) -> None:
    for line in _read_text_header(path, limit=1 << 16):
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "ElementSpacing":
            _check_spacing_values(
                path,
                "ElementSpacing",
                value.split(),
                "fix ElementSpacing (mm) and state flips in TransformMatrix",
            )
        if key == "ElementDataFile":
            break  # binary data follow in .mha


# ====================================================================== volumes
def read_volume(path: str | Path, *, series_id: str | None = None) -> Volume:
    """Read a 3-D image file, or a folder holding one DICOM series, into a :class:`Volume`.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
            (``.mha``, ``.mhd``) file, or a folder of DICOM slices.
        series_id: for a DICOM folder holding several series, the SeriesInstanceUID to read
            (the error for an ambiguous folder lists them). Not allowed for files.

    Returns:
        The volume: voxels ``(z, y, x)`` in the file's pixel type (DICOM rescale slope and
        intercept applied by SimpleITK), spacing in mm, origin and direction in LPS. Its
        ``name`` is the path.

    A 4-D image with a single volume (size 1 along the 4th axis) is accepted and squeezed to
    3-D (ITK already does this for NIfTI); one with several volumes is refused: medgym does not
    guess which time point or channel is meant. A 3-D image with one slice is accepted.

    Raises:
        FileNotFoundError: the file or folder does not exist.
        ValueError: unsupported suffix; unreadable, truncated or non-image file; not 3-D;
            several components per voxel; NaN/inf voxels; zero, negative or missing spacing;
            a DICOM folder with no series, several series and no ``series_id``, one slice,
            unevenly spaced slices or a sheared stack (gantry tilt).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: volume file or DICOM folder not found; check the path (cwd is {Path.cwd()})"
        )
    if path.is_dir():
        image = _read_dicom_series(path, series_id)
    else:
        if series_id is not None:
            raise ValueError(f"{path}: series_id={series_id!r} only applies to a DICOM folder, got a file")
        if path.name.lower().endswith(".dcm"):
            raise ValueError(
                f"{path}: got a single DICOM file; expected the folder holding the whole series "
                f"(read_volume({str(path.parent)!r}))"
            )
        suffix = _require_suffix(path, VOLUME_SUFFIXES, "volume")
        if suffix in (".nii", ".nii.gz"):
            _check_nifti_header(path)
        elif suffix in (".nrrd", ".nhdr"):
            _check_nrrd_header(path)
        else:
            _check_metaimage_header(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ValueError(
                f"{path}: SimpleITK could not read it as a {_FORMAT_NAMES[suffix]} image "
                f"({_itk_reason(error)}); the file is corrupt, truncated or not an image. Re-export "
                "it (for .nhdr/.mhd also check the data file next to it)"
            ) from None
    return _volume_from_image(image, path)


def _volume_from_image(image: sitk.Image, path: Path) -> Volume:
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        # A single frame stored as 4-D carries no ambiguity; drop the length-1 axis.
        image = image[:, :, :, 0]
    size = image.GetSize()
    if image.GetDimension() != 3:
        hint = (
            "split it into 3-D volumes first (e.g. sitk.Extract or fslsplit) and pass one"
            if image.GetDimension() > 3
            else "medgym needs a 3-D volume; a 2-D slice cannot be used"
        )
        raise ValueError(
            f"{path}: expected a 3-D image, got a {image.GetDimension()}-D image of size {size} "
            f"(x, y, ...); {hint}"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: expected one intensity per voxel, got {image.GetNumberOfComponentsPerPixel()} "
            "components (colour, vector or multi-channel image); save one scalar channel"
        )
    voxels = sitk.GetArrayFromImage(image)  # (z, y, x)
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        raise ValueError(
            f"{path}: {bad} of {voxels.size} voxels are NaN or infinite; expected finite intensities. "
            "Replace them in the file (e.g. numpy.nan_to_num with the background value) and save again"
        )
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{path}: invalid voxel spacing {spacing} mm; expected values > 0. Fix the header")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Volume(voxels, spacing, image.GetOrigin(), direction, name=str(path))


def _read_dicom_series(folder: Path, series_id: str | None) -> sitk.Image:
    series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series_ids:
        entries = sorted(entry.name for entry in folder.iterdir())
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(
            f"{folder}: no DICOM series found in this folder ({len(entries)} entries: {shown or 'empty'}); "
            "expected a folder of DICOM slice files. For NIfTI/NRRD/MetaImage pass the file itself"
        )
    if series_id is None:
        if len(series_ids) > 1:
            described = "; ".join(
                f"{sid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))} files)"
                for sid in series_ids
            )
            # Picking one would often pick a scout or a dose report: let the user decide.
            raise ValueError(
                f"{folder}: {len(series_ids)} DICOM series in this folder: {described}; expected one. "
                "Pass read_volume(folder, series_id=...) with one of these SeriesInstanceUIDs"
            )
        series_id = series_ids[0]
    elif series_id not in series_ids:
        raise ValueError(
            f"{folder}: series_id {series_id!r} not found; the folder holds {', '.join(series_ids)}"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ValueError(
            f"{folder}: SimpleITK could not read DICOM series {series_id} ({_itk_reason(error)}); "
            "some slice is corrupt or the slices differ in size/type. Remove the bad files"
        ) from None
    if len(files) > 1:
        _check_slice_positions(folder, reader, len(files), image)
    elif image.GetDimension() == 3 and image.GetSize()[2] == 1:
        raise ValueError(
            f"{folder}: DICOM series {series_id} has a single slice; expected a 3-D volume (at least "
            "2 slices, so that the slice spacing is known). Add the missing slices"
        )
    return image


def _check_slice_positions(
    folder: Path, reader: sitk.ImageSeriesReader, count: int, image: sitk.Image
) -> None:
    """Refuse series with missing or duplicated slices: ITK would assume one constant gap."""
    positions = []
    for index in range(count):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            raise ValueError(
                f"{folder}: slice {index} has no ImagePositionPatient (0020,0032); expected every "
                "slice to state its position, otherwise the geometry is unknown"
            )
        positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    offsets = np.asarray(positions) - positions[0]
    heights = offsets @ direction[:, 2]
    gaps = np.diff(heights)
    expected = float(np.median(gaps))
    if expected <= 0 or np.any(np.abs(gaps - expected) > _SLICE_GAP_TOLERANCE * expected + 1e-3):
        raise ValueError(
            f"{folder}: DICOM slices are not evenly spaced along the slice normal (gaps "
            f"{np.round(gaps, 3).tolist()} mm); expected one constant gap. Slices are missing or "
            "duplicated, or two acquisitions share the series; fix the series or resample it first"
        )
    # ITK places every slice on the normal through the first one; a stack that also steps
    # sideways (CT gantry tilt) would be silently mis-placed.
    sideways_mm = np.linalg.norm(offsets - np.outer(heights, direction[:, 2]), axis=1)
    limit_mm = _SLICE_SHEAR_TOLERANCE * min(image.GetSpacing()[:2])
    if sideways_mm.max() > limit_mm:
        raise ValueError(
            f"{folder}: DICOM slices are sheared: slice positions drift up to {sideways_mm.max():.3f} mm "
            f"sideways from the slice normal (limit {limit_mm:.3f} mm); expected slices stacked along "
            "the normal. This is usually CT gantry tilt: resample the series onto a regular grid first "
            "(e.g. dcm2niix corrects gantry tilt)"
        )


def write_volume(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``volume`` atomically in the format given by the suffix of ``path``.

    Args:
        volume: the volume; its spacing (mm), LPS origin and direction go into the header.
        path: target file ending in one of :data:`VOLUME_SUFFIXES`; parent folders are created.
            For ``.nhdr``/``.mhd`` a data file next to it is written too.
        compress: compress the voxels (always true for ``.nii.gz``, never for ``.nii``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unsupported suffix, or SimpleITK could not write the file (nothing is left
            behind: the old file, if any, is untouched).
    """
    path = Path(path)
    suffix = _require_suffix(path, VOLUME_SUFFIXES, "volume")
    image = volume.to_sitk()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix in _DETACHED_SUFFIXES:
            _write_detached(image, path, compress)
        else:
            with _atomic_target(path, suffix) as temporary:
                sitk.WriteImage(image, str(temporary), compress)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: SimpleITK could not write the volume ({_itk_reason(error)}); expected a writable "
            f"folder and a pixel type the {suffix} format supports (got {volume.voxels.dtype})"
        ) from None
    return path


def _write_detached(image: sitk.Image, path: Path, compress: bool) -> None:
    # The header names its data file, so write under the final names inside a private folder,
    # then move the data file(s) first and the header last.
    staging = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    staging.mkdir()
    try:
        sitk.WriteImage(image, str(staging / path.name), compress)
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ====================================================================== landmarks
def read_landmarks(path: str | Path) -> dict[str, NDArray[np.float64]]:
    """Read named points from a ``.csv``, Slicer ``.fcsv`` or Slicer ``.mrk.json`` file.

    Args:
        path: the landmark file; its suffix selects the format.

    Returns:
        ``{name: point}`` in file order; each point has shape ``(3,)``, dtype float64, in LPS mm.

    Formats:
        * CSV: a header row, then one row per point. The name column is ``name`` or
          ``label``. Coordinates come from columns ``x_lps,y_lps,z_lps`` or
          ``x_ras,y_ras,z_ras`` (Slicer's export ``l,p,s`` / ``r,a,s`` too), or from plain
          ``x,y,z`` after a comment line ``# coordinate_system = LPS`` (or ``RAS``). Lines
          starting with ``#`` are comments; column names are case-insensitive; rows whose
          ``defined`` column is false (Slicer export of unplaced points) are skipped.
        * ``.fcsv``: every Slicer version. ``# CoordinateSystem = RAS|LPS|0|1`` (0 = RAS,
          1 = LPS, no line = RAS); ``# columns = ...`` locates x, y, z and label when
          present, else the standard positions are used; extra trailing columns (Slicer 5.2+)
          are ignored; an empty label falls back to the id.
        * ``.mrk.json``: all control points of all ``Fiducial`` markups; ``coordinateSystem``
          defaults to LPS, ``coordinateUnits`` to mm (``um`` is converted); points whose
          ``positionStatus`` is not ``defined`` (undefined, preview) are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix; no coordinate system stated (CSV); unknown coordinate
            system; no points; duplicate names; malformed rows (with their line number);
            non-numeric or non-finite coordinates.
    """
    path = Path(path)
    suffix = _require_suffix(path, LANDMARK_SUFFIXES, "landmark")
    _require_file(path, "landmark")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets like to prepend a BOM
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not a UTF-8 text file ({error}); expected a {suffix} landmark file"
        ) from None
    if suffix == ".mrk.json":
        points = _parse_mrk_json(text, path)
    elif suffix == ".fcsv":
        points = _parse_fcsv(text, path)
    else:
        points = _parse_csv(text, path)
    if not points:
        raise ValueError(
            f"{path}: no landmarks in the file; expected at least one point. Check that the right file "
            "was given and that its points are placed (defined)"
        )
    return points


def _add_point(
    points: dict[str, NDArray[np.float64]],
    seen_at: dict[str, str],
    name: str,
    coordinates: list,
    system: str,
    path: Path,
    where: str,
) -> None:
    """Validate one point and store it in LPS mm; ``where`` locates it for error messages."""
    if not name:
        raise ValueError(f"{path}: {where}: empty landmark name; expected a non-empty name or label")
    if name in points:
        raise ValueError(
            f"{path}: {where}: duplicate landmark name {name!r} (first at {seen_at[name]}); expected "
            "unique names. Rename or delete one of them"
        )
    try:
        point = np.array([float(value) for value in coordinates], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: {where}: coordinates {coordinates} of {name!r} are not all numbers; expected "
            "three numbers in mm"
        ) from None
    if point.shape != (3,):
        raise ValueError(f"{path}: {where}: expected 3 coordinates for {name!r}, got {len(coordinates)}")
    if not np.all(np.isfinite(point)):
        raise ValueError(
            f"{path}: {where}: coordinates of {name!r} are not finite ({point.tolist()}); expected three "
            "finite numbers in mm. Place the point or remove it from the file"
        )
    points[name] = _to_lps(point, system)
    seen_at[name] = where


_CSV_COORDINATE_COLUMNS = {
    ("x_lps", "y_lps", "z_lps"): "LPS",
    ("x_ras", "y_ras", "z_ras"): "RAS",
    # Slicer's "Export control points to CSV" names the axes by their positive direction.
    ("l", "p", "s"): "LPS",
    ("r", "a", "s"): "RAS",
}
_CSV_COMMENT_SYSTEM = re.compile(r"^#\s*coordinate[_ ]?system\s*[=:]\s*(\S+)\s*$", re.IGNORECASE)


def _parse_csv(text: str, path: Path) -> dict[str, NDArray[np.float64]]:
    comment_system = None
    header: list[str] | None = None
    header_line = 0
    points: dict[str, NDArray[np.float64]] = {}
    seen_at: dict[str, str] = {}
    rows = csv.reader(io.StringIO(text))
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if row[0].lstrip().startswith("#"):
            match = _CSV_COMMENT_SYSTEM.match(",".join(row).strip())
            if match:
                comment_system = _parse_coordinate_system(match.group(1), path, f"line {line}")
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            header_line = line
            name_index, coordinate_indices, system = _csv_columns(header, comment_system, path, line)
            defined_index = header.index("defined") if "defined" in header else None
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {line}: expected {len(header)} columns as in the header on line "
                f"{header_line} ({','.join(header)}), got {len(row)}. Fix the row (quote names that "
                "contain commas)"
            )
        if defined_index is not None and row[defined_index].strip().lower() in ("false", "0"):
            continue  # Slicer exports unplaced points with placeholder coordinates
        _add_point(
            points, seen_at, row[name_index].strip(), [row[i].strip() for i in coordinate_indices],
            system, path, f"line {line}",
        )  # fmt: skip
    if header is None:
        raise ValueError(
            f"{path}: no header row; expected e.g. 'name,x_lps,y_lps,z_lps' then one row per point"
        )
    return points


def _csv_columns(
    header: list[str], comment_system: str | None, path: Path, line: int
) -> tuple[int, list[int], str]:
    """Locate the name and coordinate columns and the coordinate system of a CSV header."""
    names = [column for column in ("name", "label") if column in header]
    if not names:
        raise ValueError(
            f"{path}: line {line}: header {header} has no 'name' (or 'label') column; expected e.g. "
            "'name,x_lps,y_lps,z_lps'"
        )
    for columns, system in _CSV_COORDINATE_COLUMNS.items():
        if all(column in header for column in columns):
            if comment_system is not None and comment_system != system:
                raise ValueError(
                    f"{path}: line {line}: the comment says {comment_system} but the columns "
                    f"{','.join(columns)} say {system}; expected them to agree. Fix one of them"
                )
            return header.index(names[0]), [header.index(column) for column in columns], system
    if all(column in header for column in ("x", "y", "z")):
        if comment_system is None:
            raise ValueError(
                f"{path}: line {line}: columns x,y,z do not say whether points are LPS or RAS; expected "
                "the columns named x_lps,y_lps,z_lps (or x_ras,y_ras,z_ras), or a comment line "
                "'# coordinate_system = LPS' (or RAS) before the header"
            )
        return header.index(names[0]), [header.index(column) for column in ("x", "y", "z")], comment_system
    raise ValueError(
        f"{path}: line {line}: header {header} has no coordinate columns; expected x_lps,y_lps,z_lps or "
        "x_ras,y_ras,z_ras (or x,y,z after '# coordinate_system = LPS')"
    )


_FCSV_SYSTEM = re.compile(r"^#\s*CoordinateSystem\s*=\s*(\S*)\s*$", re.IGNORECASE)
_FCSV_COLUMNS_LINE = re.compile(r"^#\s*columns\s*=\s*(.*)$", re.IGNORECASE)


def _parse_fcsv(text: str, path: Path) -> dict[str, NDArray[np.float64]]:
    system = "RAS"  # Slicer's default before the CoordinateSystem line existed (pre-4.11)
    columns = list(_FCSV_COLUMNS)
    points: dict[str, NDArray[np.float64]] = {}
    seen_at: dict[str, str] = {}
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        if content.startswith("#"):
            if match := _FCSV_SYSTEM.match(content):
                value = {"0": "RAS", "1": "LPS"}.get(match.group(1).strip(), match.group(1))
                system = _parse_coordinate_system(value, path, f"line {line}")
            elif match := _FCSV_COLUMNS_LINE.match(content):
                columns = [column.strip() for column in match.group(1).split(",")]
                missing = [column for column in ("x", "y", "z") if column not in columns]
                if missing:
                    raise ValueError(
                        f"{path}: line {line}: '# columns' lacks {missing}; expected at least x,y,z "
                        f"(Slicer writes {','.join(_FCSV_COLUMNS)})"
                    )
            continue
        # One line per row: csv handles quoted labels with commas, Slicer never splits rows.
        row = next(csv.reader([content]))
        indices = {key: columns.index(key) for key in ("id", "x", "y", "z", "label") if key in columns}
        needed = max(indices[key] for key in ("x", "y", "z")) + 1
        if len(row) < needed:
            raise ValueError(
                f"{path}: line {line}: expected at least {needed} comma-separated values "
                f"({','.join(columns)}), got {len(row)}. Fix or remove the row"
            )
        label = row[indices["label"]].strip() if indices.get("label", len(row)) < len(row) else ""
        if not label and "id" in indices:
            label = row[indices["id"]].strip()  # Slicer shows the id when a point has no label
        _add_point(
            points,
            seen_at,
            label,
            [row[indices[axis]].strip() for axis in "xyz"],
            system,
            path,
            f"line {line}",
        )
    return points


def _parse_mrk_json(text: str, path: Path) -> dict[str, NDArray[np.float64]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); expected a "
            "Slicer markups file. Re-save it from Slicer"
        ) from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise ValueError(
            f"{path}: expected a JSON object with a 'markups' list (Slicer .mrk.json), got "
            f"{type(document).__name__} with keys {sorted(document) if isinstance(document, dict) else []}"
        )
    fiducials = [(i, m) for i, m in enumerate(markups) if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not fiducials:
        types = [m.get("type") if isinstance(m, dict) else type(m).__name__ for m in markups]
        raise ValueError(
            f"{path}: no 'Fiducial' (point list) markup in the file, got types {types}; expected a "
            "point list. Save the landmarks as a point list in Slicer"
        )
    points: dict[str, NDArray[np.float64]] = {}
    seen_at: dict[str, str] = {}
    for markup_index, markup in fiducials:
        where = f"markups[{markup_index}]"
        system = _parse_coordinate_system(str(markup.get("coordinateSystem", "LPS")), path, where)
        units = markup.get("coordinateUnits", "mm")
        scale = {"mm": 1.0, "um": 1e-3}.get(units)
        if scale is None:
            raise ValueError(f"{path}: {where}: unknown coordinateUnits {units!r}; expected 'mm' or 'um'")
        controls = markup.get("controlPoints", [])
        if not isinstance(controls, list) or not all(isinstance(c, dict) for c in controls):
            raise ValueError(
                f"{path}: {where}: expected 'controlPoints' to be a list of objects, got {controls!r}"
            )
        for point_index, control in enumerate(controls):
            if control.get("positionStatus", "defined") != "defined":
                continue  # an unplaced point has a placeholder position
            label = str(control.get("label") or control.get("id") or "").strip()
            position = control.get("position")
            if not isinstance(position, list):
                raise ValueError(
                    f"{path}: {where}.controlPoints[{point_index}]: expected 'position': [x, y, z], "
                    f"got {position!r}"
                )
            _add_point(
                points, seen_at, label, [p * scale if isinstance(p, (int, float)) else p for p in position],
                system, path, f"{where}.controlPoints[{point_index}]",
            )  # fmt: skip
    return points


def write_landmarks(
    landmarks: Mapping[str, NDArray[np.float64]], path: str | Path, coordinate_system: str | None = None
) -> Path:
    """Write named LPS points atomically; the format follows the suffix of ``path``.

    Args:
        landmarks: ``{name: point}``, each point 3 finite numbers in LPS mm; order is kept.
        path: target ending in one of :data:`LANDMARK_SUFFIXES`; parent folders are created.
        coordinate_system: ``"LPS"`` or ``"RAS"`` for the numbers in the file. Default:
            RAS for ``.fcsv`` (read correctly by every Slicer version), LPS for ``.mrk.json``
            and ``.csv``. CSV columns are ``name,x_lps,y_lps,z_lps`` (or ``x_ras``...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unsupported suffix or coordinate system, no landmarks, an empty name or a
            point that is not 3 finite numbers.
    """
    path = Path(path)
    suffix = _require_suffix(path, LANDMARK_SUFFIXES, "landmark")
    if coordinate_system is None:
        system = "RAS" if suffix == ".fcsv" else "LPS"
    else:
        system = _parse_coordinate_system(coordinate_system, path, "coordinate_system argument")
    if not landmarks:
        raise ValueError(f"{path}: no landmarks to write; expected at least one name -> point")
    rows: list[tuple[str, list[float]]] = []
    for name, point in landmarks.items():
        vector = np.asarray(point, dtype=np.float64)
        if not isinstance(name, str) or not name.strip() or name != name.strip() or "\n" in name:
            raise ValueError(
                f"{path}: landmark name {name!r} is empty, spans lines or has leading/trailing spaces; "
                "expected one line of text (readers strip spaces, so the name would change)"
            )
        if vector.shape != (3,) or not np.all(np.isfinite(vector)):
            raise ValueError(
                f"{path}: landmark {name!r}: expected 3 finite LPS coordinates in mm, got {vector.tolist()}"
            )
        rows.append((name, _from_lps(vector, system).tolist()))
    if suffix == ".mrk.json":
        text = _format_mrk_json(rows, system)
    elif suffix == ".fcsv":
        text = _format_fcsv(rows, system)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        axis = system.lower()
        writer.writerow(["name", f"x_{axis}", f"y_{axis}", f"z_{axis}"])
        writer.writerows([name, *(repr(c) for c in coordinates)] for name, coordinates in rows)
        text = buffer.getvalue()
    return _write_text_atomic(path, suffix, text)


def _format_fcsv(rows: list[tuple[str, list[float]]], system: str) -> str:
    buffer = io.StringIO()
    buffer.write("# Markups fiducial file version = 4.11\n")
    buffer.write(f"# CoordinateSystem = {system}\n")
    buffer.write(f"# columns = {','.join(_FCSV_COLUMNS)}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    for number, (name, (x, y, z)) in enumerate(rows, start=1):
        # Identity orientation quaternion (0,0,0,1), visible, selected, unlocked; as Slicer writes.
        writer.writerow(
            [
                f"vtkMRMLMarkupsFiducialNode_{number}",
                repr(x),
                repr(y),
                repr(z),
                0,
                0,
                0,
                1,
                1,
                1,
                0,
                name,
                "",
                "",
            ]
        )
    return buffer.getvalue()


def _format_mrk_json(rows: list[tuple[str, list[float]]], system: str) -> str:
    control_points = [
        {
            "id": str(number),
            "label": name,
            "description": "",
            "associatedNodeID": "",
            "position": coordinates,
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for number, (name, coordinates) in enumerate(rows, start=1)
    ]
    document = {
        "@schema": _MRK_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(control_points),
                "controlPoints": control_points,
            }
        ],
    }
    return json.dumps(document, indent=4) + "\n"


def write_displacement_field(displacement_lps_mm: NDArray, grid: Volume, path: str | Path) -> Path:
    """Write a displacement field ``(z, y, x, 3)`` (LPS mm, on ``grid``'s voxels) as a vector volume.

    A point ``p`` of the grid maps to ``p + u(p)`` (ITK's displacement-field convention): 3D Slicer
    loads such a ``.nii.gz``/``.nrrd`` as a transform, SimpleITK as a
    ``DisplacementFieldTransform``. Written atomically.
    """
    path = Path(path)
    suffix = _require_suffix(path, VOLUME_SUFFIXES, "displacement field")
    field = np.asarray(displacement_lps_mm, dtype=np.float64)
    if field.shape != (*grid.shape_zyx, 3):
        raise ValueError(
            f"{path}: displacement field of shape {field.shape} does not fit the grid {grid.shape_zyx}; "
            "expected (z, y, x, 3)"
        )
    image = sitk.GetImageFromArray(field, isVector=True)
    image.SetSpacing(grid.spacing_xyz_mm.tolist())
    image.SetOrigin(grid.origin_lps_mm.tolist())
    image.SetDirection(grid.direction.reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _atomic_target(path, suffix) as temporary:
            sitk.WriteImage(image, str(temporary), True)
    except RuntimeError as error:
        raise ValueError(f"{path}: SimpleITK could not write the field ({_itk_reason(error)})") from None
    return path


# ====================================================================== transforms
def read_transform(path: str | Path) -> sitk.Transform:
    """Read an ITK transform file (``.tfm``/``.txt`` text, ``.h5``/``.hdf5``, ``.mat``).

    ITK transforms map points of the *fixed* image to the *moving* image, in LPS mm.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix or a file ITK cannot parse.
    """
    path = Path(path)
    suffix = _require_suffix(path, TRANSFORM_SUFFIXES, "transform")
    _require_file(path, "transform")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise ValueError(
            f"{path}: SimpleITK could not read it as a {suffix} transform ({_itk_reason(error)}); expected "
            "an ITK transform file. Re-export it (e.g. sitk.WriteTransform or Slicer's 'Save')"
        ) from None


def write_transform(transform: sitk.Transform, path: str | Path) -> Path:
    """Write ``transform`` atomically as an ITK transform file (format from the suffix).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unsupported suffix or ITK could not write it (nothing is left behind).
    """
    path = Path(path)
    suffix = _require_suffix(path, TRANSFORM_SUFFIXES, "transform")
    try:
        with _atomic_target(path, suffix) as temporary:
            sitk.WriteTransform(transform, str(temporary))
    except RuntimeError as error:
        raise ValueError(
            f"{path}: SimpleITK could not write the transform ({_itk_reason(error)}); expected a writable "
            f"folder and a transform type the {suffix} format supports"
        ) from None
    return path
