"""Header refusals: the volume headers that SimpleITK would misread or silently repair.

ITK (5.4) *invents* geometry or intensities for some broken headers, so :func:`check_header`
reads the header itself before ITK is trusted with the file. NRRD and MetaImage headers are
checked in :mod:`envs.io.text_headers`; NIfTI-1 here (the 348-byte header is parsed directly,
no nibabel needed):

* Refused because ITK repairs or misreads them silently: ``pixdim[1..3]`` of 0 or NaN (read as
  1 mm) or negative (read as its absolute value, the axis flipped); a magic other than ``n+1``
  (read as Analyze 7.5 without orientation; ``ni1`` means a separate .img file); unknown
  ``qform_code``/``sform_code`` or spatial units (dropped); NaN in the transform that applies;
  a non-unit quaternion (renormalised); a ``vox_offset`` below 352 or fractional; a ``bitpix``
  that disagrees with ``datatype``; a ``scl_slope``/``scl_inter`` pair that ITK and the
  standard read differently. Complex, RGB and unknown datatypes are refused with the list of
  real ones, NIfTI-2 with a hint to convert it (ITK 5.4 cannot read it).
* Voxel data cut short (truncated download) are read by ITK without an error, the missing part
  filled with zeros; the (decompressed) size is compared with what the header promises.
* NaN/inf float voxels are read by ITK as 0; :mod:`envs.io.nifti` counts them in the raw data.
* Dimensions that need more memory than is available are refused before anything is allocated.

Every refusal is a :class:`ValueError` naming the file, the field, what was expected and how
to fix it.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from envs.io.common import require_memory
from envs.io.nifti import NIFTI_DATATYPES, count_non_finite
from envs.io.text_headers import check_metaimage_header, check_nrrd_header

__all__ = ["check_header"]

# NIfTI-1 xform codes: unknown, scanner, aligned, Talairach, MNI (and template, NIfTI 2019).
_MAX_XFORM_CODE = 5
# ITK drops a NIfTI scl_slope below double epsilon (and its intercept) as if it were 0.
_ITK_EPSILON = 2.220446049250313e-16
# float32 rounding of a unit quaternion's (b, c, d) stays far below this.
_QUATERN_TOLERANCE = 1e-3


def check_header(path: Path, suffix: str) -> None:
    """Refuse the volume file ``path`` if its header is one ITK would repair (see module doc).

    Args:
        path: an existing NIfTI, NRRD or MetaImage file.
        suffix: its format suffix as spelled in ``envs.io.VOLUME_SUFFIXES`` (lower case).

    Raises:
        ValueError: the header is broken, not of the format its suffix claims, or (NIfTI)
            promises more voxel data than the file holds.
    """
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_header(path)
    elif suffix in (".nrrd", ".nhdr"):
        check_nrrd_header(path)
    else:
        check_metaimage_header(path)


# ====================================================================== NIfTI
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
    """Refuse NIfTI files that ITK would misread or silently repair (see module doc)."""
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
    magic = head[344:348]
    if magic == b"ni1\0":
        raise ValueError(
            f"{path}: header-only NIfTI (magic 'ni1', voxels in a separate .img file); expected a "
            "single-file NIfTI (magic 'n+1'). Convert the .hdr/.img pair, e.g. nibabel.save(nibabel.load("
            "'x.hdr'), 'x.nii.gz')"
        )
    if magic != b"n+1\0":
        raise ValueError(
            f"{path}: not a NIfTI-1 file (magic {magic!r}, expected b'n+1\\x00'); ITK would read it as "
            "an Analyze 7.5 file and drop its orientation. Convert it to NIfTI-1 (e.g. with nibabel)"
        )
    dims = struct.unpack(endian + "8h", head[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
    pixdim = struct.unpack(endian + "8f", head[76:108])
    vox_offset, slope, intercept = struct.unpack(endian + "3f", head[108:120])
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(n < 1 for n in dims[1 : ndim + 1]):
        raise ValueError(
            f"{path}: invalid NIfTI dim field {list(dims)}; expected dim[0] in 1..7 and that many sizes "
            ">= 1. The header is corrupt: re-export the file"
        )
    shape = list(dims[1 : ndim + 1])
    type_name, bits = _check_nifti_datatype(path, datatype, bitpix)
    spatial = [float(p) for p in pixdim[1 : min(ndim, 3) + 1]]
    if not all(math.isfinite(p) and p > 0 for p in spatial):
        raise ValueError(
            f"{path}: invalid voxel spacing in the NIfTI header: pixdim[1..3] = {spatial}; expected "
            "finite values > 0 mm. SimpleITK would silently replace 0/NaN by 1 mm and negative values "
            "by their absolute value (flipping the axis), so medgym refuses the file. Fix the header, "
            "e.g. nibabel: img.header.set_zooms(...) with the true spacing"
        )
    space_units = head[123] & 0x07  # xyzt_units: 0 unknown, 1 m, 2 mm, 3 um (ITK converts to mm)
    if space_units > 3:
        raise ValueError(
            f"{path}: invalid NIfTI spatial unit code {space_units} in xyzt_units {head[123]}; expected "
            "0 (unknown), 1 (m), 2 (mm) or 3 (micron). Fix the header (e.g. nibabel: set_xyzt_units)"
        )
    _check_nifti_orientation(path, endian, head)
    count = math.prod(shape)
    scaled = _check_nifti_scaling(path, slope, intercept)
    # ITK's buffer plus the numpy copy; scaled integers become (at least) float32.
    require_memory(path, f"dim {shape} of {type_name}", 2 * count * max(bits // 8, 4 if scaled else 1))
    if not (math.isfinite(vox_offset) and vox_offset == int(vox_offset) and vox_offset >= 352):
        raise ValueError(
            f"{path}: invalid vox_offset {vox_offset} in the NIfTI header; expected a whole number >= 352 "
            "(where the voxels start in a single-file .nii). The header is corrupt: re-export the file"
        )
    offset = int(vox_offset)
    expected = offset + (count * bits + 7) // 8
    actual = _decompressed_size_at_least(path, expected) if compressed else path.stat().st_size
    if actual < expected:
        raise ValueError(
            f"{path}: truncated NIfTI file: the header promises {expected} bytes of header and voxels "
            f"(dim {shape}, {bits} bits), got {actual}. SimpleITK would fill the "
            "rest with zeros; re-download or re-export the file"
        )
    if type_name in ("float32", "float64"):
        bad = count_non_finite(path, compressed, offset, np.dtype(type_name).newbyteorder(endian), count)
        if bad:
            raise ValueError(
                f"{path}: {bad} of {count} voxels are NaN or infinite; expected finite intensities "
                "(SimpleITK would silently read them as 0). Replace them in the file (e.g. "
                "numpy.nan_to_num with the background value) and save again"
            )


def _check_nifti_datatype(path: Path, datatype: int, bitpix: int) -> tuple[str, int]:
    """The numpy type name and bits per voxel of a NIfTI ``datatype`` code medgym can read."""
    readable = [name for name, _, ok in NIFTI_DATATYPES.values() if ok]
    if datatype not in NIFTI_DATATYPES or not NIFTI_DATATYPES[datatype][2]:
        got = NIFTI_DATATYPES[datatype][0] if datatype in NIFTI_DATATYPES else "unknown"
        raise ValueError(
            f"{path}: NIfTI datatype code {datatype} ({got}) is not supported; expected one real "
            f"intensity per voxel ({', '.join(readable)}). Convert the image (e.g. one channel, real part)"
        )
    type_name, bits, _ = NIFTI_DATATYPES[datatype]
    if bitpix != bits:
        raise ValueError(
            f"{path}: NIfTI bitpix {bitpix} does not match datatype {datatype} ({type_name}, {bits} bits); "
            "the header is corrupt: re-export the file"
        )
    return type_name, bits


def _check_nifti_scaling(path: Path, slope: float, intercept: float) -> bool:
    """Whether ITK scales the voxels; refuse the scalings where ITK and the standard disagree.

    The NIfTI standard (and nibabel) ignore ``scl_inter`` when ``scl_slope`` is 0 or not finite;
    ITK then still adds a finite intercept, and it treats a slope below double epsilon as 1.
    """
    applies = math.isfinite(slope) and slope != 0
    tiny = applies and abs(slope) < _ITK_EPSILON
    unscaled_offset = not applies and math.isfinite(intercept) and intercept != 0
    if tiny or unscaled_offset or (applies and not math.isfinite(intercept)):
        raise ValueError(
            f"{path}: ambiguous intensity scaling scl_slope={slope}, scl_inter={intercept} in the NIfTI "
            "header; expected a finite slope >= 2.2e-16 in size with a finite intercept, or no scaling "
            "(slope 0 or NaN with intercept 0 or NaN): ITK and nibabel would read different intensities. "
            "Fix the header (e.g. nibabel: img.header.set_slope_inter(slope, inter))"
        )
    return applies and (slope, intercept) != (1, 0)


def _check_nifti_orientation(path: Path, endian: str, head: bytes) -> None:
    """Refuse unknown qform/sform codes and non-finite numbers in the transform that applies."""
    qform_code, sform_code = struct.unpack(endian + "2h", head[252:256])
    for name, code in (("qform_code", qform_code), ("sform_code", sform_code)):
        if not 0 <= code <= _MAX_XFORM_CODE:
            raise ValueError(
                f"{path}: invalid NIfTI {name} {code}; expected 0..{_MAX_XFORM_CODE}. ITK would silently "
                "ignore that transform; fix the header (e.g. nibabel: img.set_qform/set_sform)"
            )
    quatern = struct.unpack(endian + "6f", head[256:280])
    srow = struct.unpack(endian + "12f", head[280:328])
    for name, code, values in (("quatern/qoffset", qform_code, quatern), ("srow", sform_code, srow)):
        if code > 0 and not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"{path}: NIfTI {name} holds NaN or infinite values {list(values)}; expected a finite "
                "orientation. Fix the header (e.g. nibabel: img.set_qform/set_sform)"
            )
    if qform_code > 0 and sum(q * q for q in quatern[:3]) > 1 + _QUATERN_TOLERANCE:
        raise ValueError(
            f"{path}: NIfTI quaternion (b, c, d) = {list(quatern[:3])} has length > 1; expected a unit "
            "quaternion's b, c, d. ITK would silently renormalise it; fix the header"
        )
