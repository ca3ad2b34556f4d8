"""Transform files: thin wrappers over ``sitk.ReadTransform`` / ``sitk.WriteTransform``.

ITK transforms map points of the *fixed* image to the *moving* image, in LPS mm. Writes are
atomic (:mod:`envs.io.atomic`).
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from envs.io.atomic import atomic_path
from envs.io.common import itk_reason, require_file, require_suffix

__all__ = ["TRANSFORM_SUFFIXES", "read_transform", "write_transform"]

TRANSFORM_SUFFIXES: tuple[str, ...] = (".tfm", ".txt", ".h5", ".hdf5", ".mat")


def read_transform(path: str | Path) -> sitk.Transform:
    """Read an ITK transform file (``.tfm``/``.txt`` text, ``.h5``/``.hdf5``, ``.mat``).

    ITK transforms map points of the *fixed* image to the *moving* image, in LPS mm.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix or a file ITK cannot parse.
    """
    path = Path(path)
    suffix = require_suffix(path, TRANSFORM_SUFFIXES, "transform")
    require_file(path, "transform")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise ValueError(
            f"{path}: SimpleITK could not read it as a {suffix} transform ({itk_reason(error)}); expected "
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
    suffix = require_suffix(path, TRANSFORM_SUFFIXES, "transform")
    try:
        with atomic_path(path, suffix) as temporary:
            sitk.WriteTransform(transform, str(temporary))
    except RuntimeError as error:
        raise ValueError(
            f"{path}: SimpleITK could not write the transform ({itk_reason(error)}); expected a writable "
            f"folder and a transform type the {suffix} format supports"
        ) from None
    return path
