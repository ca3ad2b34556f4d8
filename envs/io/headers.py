"""Header refusals: the volume headers that SimpleITK would silently repair.

ITK (5.4) *invents* geometry for some broken headers, so :func:`check_header` reads the
header itself before ITK is trusted with the file:

* NIfTI ``pixdim[1..3]`` of 0 or NaN becomes 1 mm and a negative one becomes its absolute
  value with the axis flipped; the 348-byte header is parsed here (no nibabel needed) and such
  files are refused. NIfTI-2 is refused with a hint to convert it: ITK 5.4 cannot read it.
* A NIfTI whose voxel data are cut short (truncated download) is read by ITK without any
  error, the missing part filled with zeros; the (decompressed) file size is compared with
  what the header promises.
* NRRD ``spacings:`` and MetaImage ``ElementSpacing`` that are negative are turned into flipped
  axes, and NaN NRRD spacings into 1 mm; they are refused (a flip belongs in
  ``space directions`` / ``TransformMatrix``). Zero spacings make ITK fail with a cryptic
  message; the error here says which field is wrong instead.

Every refusal is a :class:`ValueError` naming the file, the field, what was expected and how
to fix it.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path

__all__ = ["check_header"]


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
        _check_nrrd_header(path)
    else:
        _check_metaimage_header(path)


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


# ====================================================================== NRRD and MetaImage
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
