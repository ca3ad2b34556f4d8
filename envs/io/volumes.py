"""Volume files: read a 3-D image file or a DICOM series into a Volume; write volumes and fields.

Formats (SimpleITK underneath): NIfTI-1 (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``),
MetaImage (``.mha``, ``.mhd``), or a folder holding one DICOM series. Headers that ITK would
silently repair are refused first (:mod:`envs.io.headers`). A :class:`~envs.core.Volume` holds
voxels ``(z, y, x)``, spacing in mm, origin and direction in LPS; SimpleITK's images are
indexed ``(x, y, z)``. Writers are atomic (:mod:`envs.io.atomic`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from envs.core import Volume
from envs.io.atomic import atomic_path, atomic_staging
from envs.io.common import itk_reason, require_suffix
from envs.io.headers import check_header

__all__ = ["VOLUME_SUFFIXES", "read_volume", "write_displacement_field", "write_volume"]

VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

_FORMAT_NAMES = {
    ".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD",
    ".mha": "MetaImage", ".mhd": "MetaImage",
}  # fmt: skip
# Detached-header formats: ITK writes a header plus a data file named after it.
_DETACHED_SUFFIXES = (".nhdr", ".mhd")
# Relative tolerance on DICOM slice gaps: scanners round positions to ~1e-3 mm.
_SLICE_GAP_TOLERANCE = 0.01
# Sideways drift of slice positions allowed, as a fraction of the in-plane spacing.
_SLICE_SHEAR_TOLERANCE = 0.1


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
        ValueError: unsupported suffix; unreadable, truncated or non-image file; a header
            ITK would misread or repair (:mod:`envs.io.headers`); dimensions needing more
            memory than is available (with an estimate); not 3-D; several components per
            voxel; NaN/inf voxels; zero, negative or missing spacing; NaN geometry;
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
        suffix = require_suffix(path, VOLUME_SUFFIXES, "volume")
        check_header(path, suffix)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ValueError(
                f"{path}: SimpleITK could not read it as a {_FORMAT_NAMES[suffix]} image "
                f"({itk_reason(error)}); the file is corrupt, truncated or not an image. Re-export "
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
    if not (np.all(np.isfinite(direction)) and all(math.isfinite(c) for c in image.GetOrigin())):
        raise ValueError(
            f"{path}: NaN or infinite geometry in the header (origin {list(image.GetOrigin())}, direction "
            f"{direction.round(4).tolist()}); expected finite numbers. Fix the header"
        )
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
            f"{folder}: SimpleITK could not read DICOM series {series_id} ({itk_reason(error)}); "
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
    suffix = require_suffix(path, VOLUME_SUFFIXES, "volume")
    image = volume.to_sitk()
    try:
        _write_image(image, path, suffix, compress)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: SimpleITK could not write the volume ({itk_reason(error)}); expected a writable "
            f"folder and a pixel type the {suffix} format supports (got {volume.voxels.dtype})"
        ) from None
    return path


def write_displacement_field(displacement_lps_mm: NDArray, grid: Volume, path: str | Path) -> Path:
    """Write a displacement field ``(z, y, x, 3)`` (LPS mm, on ``grid``'s voxels) as a vector volume.

    A point ``p`` of the grid maps to ``p + u(p)`` (ITK's displacement-field convention): 3D Slicer
    loads such a ``.nii.gz``/``.nrrd`` as a transform, SimpleITK as a
    ``DisplacementFieldTransform``. Written atomically.
    """
    path = Path(path)
    suffix = require_suffix(path, VOLUME_SUFFIXES, "displacement field")
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
    try:
        _write_image(image, path, suffix, compress=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: SimpleITK could not write the field ({itk_reason(error)})") from None
    return path


def _write_image(image: sitk.Image, path: Path, suffix: str, compress: bool) -> None:
    """``sitk.WriteImage`` through the atomic writer; a detached header keeps its final name."""
    if suffix in _DETACHED_SUFFIXES:
        # The header names its data file, so both are written under their final names.
        with atomic_staging(path) as staged:
            sitk.WriteImage(image, str(staged), compress)
    else:
        with atomic_path(path, suffix) as temporary:
            sitk.WriteImage(image, str(temporary), compress)
