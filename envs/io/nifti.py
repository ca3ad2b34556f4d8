"""NIfTI-1 voxel data read without ITK: datatype codes and the scan for NaN/inf voxels.

ITK's NIfTI reader (nifticlib) replaces every NaN or infinite float voxel by 0 while it reads,
so a check on the array it returns cannot see them. :func:`count_non_finite` streams the raw
data block itself (plain or gzip, in chunks, no full copy) and counts them, so that
:mod:`envs.io.headers` can refuse the file. Voxels are counted as stored, before
``scl_slope``/``scl_inter``: nifticlib zeroes them before scaling, and a finite slope cannot
turn NaN into a number.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["NIFTI_DATATYPES", "count_non_finite"]

# NIfTI-1 datatype code -> (numpy type, bits per voxel, readable by medgym). Complex and RGB
# voxels are not one real intensity; float128 has no portable numpy type and ITK cannot read it.
NIFTI_DATATYPES: dict[int, tuple[str, int, bool]] = {
    1: ("bool", 1, False),
    2: ("uint8", 8, True),
    4: ("int16", 16, True),
    8: ("int32", 32, True),
    16: ("float32", 32, True),
    32: ("complex64", 64, False),
    64: ("float64", 64, True),
    128: ("RGB24", 24, False),
    256: ("int8", 8, True),
    512: ("uint16", 16, True),
    768: ("uint32", 32, True),
    1024: ("int64", 64, True),
    1280: ("uint64", 64, True),
    1536: ("float128", 128, False),
    1792: ("complex128", 128, False),
    2048: ("complex256", 256, False),
    2304: ("RGBA32", 32, False),
}

# Bytes decoded per step: large enough to amortise numpy calls, small enough to stay in cache.
_CHUNK_BYTES = 1 << 22


def count_non_finite(path: Path, compressed: bool, offset: int, dtype: np.dtype, count: int) -> int:
    """The number of NaN or infinite values among ``count`` voxels of ``dtype`` at byte ``offset``.

    Args:
        path: a single-file NIfTI (``.nii`` or gzip-compressed ``.nii.gz``).
        compressed: whether the file is a gzip stream (offsets are in the decompressed stream).
        offset: ``vox_offset``, where the voxel data start.
        dtype: the floating numpy dtype of the voxels, with the file's byte order.
        count: the number of voxels the header promises.

    Raises:
        ValueError: the data end early or the gzip stream is corrupt (names the file).
    """
    itemsize = dtype.itemsize
    step = max(1, _CHUNK_BYTES // itemsize) * itemsize
    remaining = count * itemsize
    bad = 0
    pending = b""
    try:
        opener = gzip.open if compressed else open
        with opener(path, "rb") as stream:
            _skip(stream, offset)
            while remaining > 0:
                chunk = stream.read(min(step, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                chunk = pending + chunk
                usable = len(chunk) - len(chunk) % itemsize
                values = np.frombuffer(chunk, dtype=dtype, count=usable // itemsize)
                bad += values.size - int(np.count_nonzero(np.isfinite(values)))
                pending = chunk[usable:]
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path}: truncated or corrupt gzip stream in the voxel data ({error}); expected a complete "
            "NIfTI file. Re-download or re-export the file"
        ) from None
    if remaining > 0:
        raise ValueError(
            f"{path}: truncated NIfTI file: the voxel data end {remaining} bytes early; expected "
            f"{count} voxels of {dtype.name} from byte {offset}. Re-download or re-export the file"
        )
    return bad


def _skip(stream, offset: int) -> None:
    """Advance ``stream`` to ``offset`` (gzip streams seek by decompressing)."""
    stream.seek(offset)
    if stream.tell() != offset:
        raise EOFError(f"stream ends before the voxel offset {offset}")
