"""Reading and writing medical files: volumes, landmark lists and transforms.

This package is medgym's only boundary with medical file formats. Everything it returns is in
medgym's conventions: voxels ``(z, y, x)`` in a :class:`~envs.core.Volume`, points in physical
LPS millimetres. Bad input raises :class:`FileNotFoundError` or :class:`ValueError` naming the
file, what was expected, what came and how to fix it. Every write is atomic.

Modules:
    volumes     ``read_volume`` (NIfTI-1, NRRD, MetaImage, a DICOM series folder),
                ``write_volume``, ``write_displacement_field``
    headers     refusals of the headers SimpleITK would misread or silently repair (NIfTI)
    text_headers  the same for NRRD and MetaImage text headers
    nifti       NIfTI datatype codes and the raw scan for NaN/inf voxels (ITK reads them as 0)
    landmarks   ``read_landmarks`` / ``write_landmarks`` by suffix; the CSV dialects
    slicer      3D Slicer ``.fcsv`` and ``.mrk.json``
    points      coordinate systems and the RAS <-> LPS flip (here and nowhere else)
    transforms  ``read_transform`` / ``write_transform`` (ITK transform files)
    atomic      THE atomic writer every file write in medgym goes through
    common      suffix, file, memory and ITK-error helpers shared by these modules

Example:
    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from envs import io
    >>> from envs.core import Volume
    >>> folder = Path(tempfile.mkdtemp())
    >>> volume = Volume(np.zeros((2, 3, 4), np.int16), spacing_xyz_mm=(0.5, 1.0, 2.0))
    >>> io.read_volume(io.write_volume(volume, folder / "ct.nii.gz")).spacing_xyz_mm.tolist()
    [0.5, 1.0, 2.0]
    >>> path = io.write_landmarks({"apex": np.array([1.0, 2.0, 3.0])}, folder / "points.fcsv")
    >>> io.read_landmarks(path)["apex"].tolist()  # stored as RAS (-1, -2, 3), read back as LPS
    [1.0, 2.0, 3.0]
    >>> shutil.rmtree(folder)
"""

from envs.io.atomic import (
    atomic_path,
    atomic_staging,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_output_folder,
    make_folders,
    new_folder,
    temporary_sibling,
)
from envs.io.landmarks import LANDMARK_SUFFIXES, read_landmarks, write_landmarks
from envs.io.points import COORDINATE_SYSTEMS
from envs.io.transforms import TRANSFORM_SUFFIXES, read_transform, write_transform
from envs.io.volumes import VOLUME_SUFFIXES, read_volume, write_displacement_field, write_volume

__all__ = [
    "COORDINATE_SYSTEMS",
    "LANDMARK_SUFFIXES",
    "TRANSFORM_SUFFIXES",
    "VOLUME_SUFFIXES",
    "atomic_path",
    "atomic_staging",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_folder",
    "make_folders",
    "new_folder",
    "read_landmarks",
    "read_transform",
    "read_volume",
    "temporary_sibling",
    "write_displacement_field",
    "write_landmarks",
    "write_transform",
    "write_volume",
]
