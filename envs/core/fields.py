"""Voxel-centre grids and displacement (vector) fields.

A field is an array ``(z, y, x, 3)`` of LPS millimetre vectors on the voxel centres of a grid
(a :class:`~envs.core.volume.Volume`'s geometry; :func:`empty_grid` makes one without voxel
storage). Sampling is trilinear and takes the edge value beyond the grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from envs.core.volume import Volume

__all__ = [
    "cube_grid_lps",
    "empty_grid",
    "field_at_points",
    "field_from_transform",
    "field_to_sitk",
    "field_transform",
    "sample_field",
    "strided_indices",
    "voxel_centres_lps",
]


def empty_grid(
    size_xyz: ArrayLike,
    spacing_xyz_mm: ArrayLike,
    origin_lps_mm: ArrayLike,
    direction: ArrayLike | None = None,
) -> Volume:
    """A :class:`Volume` that is geometry only: ``size_xyz`` voxels (x, y, z) of ``spacing_xyz_mm``
    whose voxel ``(0, 0, 0)`` centre is at ``origin_lps_mm``; the voxels are a zero-stride uint8
    0 (no memory). ``direction`` defaults to the identity."""
    nx, ny, nz = (int(n) for n in np.asarray(size_xyz))
    voxels = np.broadcast_to(np.zeros((), np.uint8), (nz, ny, nx))
    return Volume(voxels, spacing_xyz_mm, origin_lps_mm, np.eye(3) if direction is None else direction)


def strided_indices(size: int, step: int) -> NDArray[np.int64]:
    """``0, step, 2 step, ...`` below ``size``, with ``size - 1`` appended when the stride misses it."""
    indices = np.arange(0, size, step)
    return indices if indices[-1] == size - 1 else np.append(indices, size - 1)


def voxel_centres_lps(grid: Volume, step: int = 1) -> NDArray[np.float64]:
    """LPS mm ``(z, y, x, 3)`` of the voxel centres of ``grid`` (any direction).

    With ``step > 1``, of every ``step``-th voxel per axis, the last voxel always included
    (:func:`strided_indices`).
    """
    indices = [strided_indices(n, step) for n in grid.size_xyz]
    kk, jj, ii = np.meshgrid(indices[2], indices[1], indices[0], indexing="ij")
    return grid.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(np.float64))


def cube_grid_lps(origin_lps_mm: ArrayLike, size_vox: int, spacing_mm: float) -> NDArray[np.float64]:
    """LPS mm ``(S, S, S, 3)`` of the voxel centres of an axis-aligned cube of ``S = size_vox``
    voxels at ``spacing_mm`` whose voxel ``(0, 0, 0)`` is at ``origin_lps_mm`` (axes z, y, x)."""
    axis = np.arange(size_vox, dtype=np.float64) * spacing_mm
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    return origin_lps_mm + np.stack([xx, yy, zz], axis=-1)


def sample_field(field: NDArray, index_zyx: ArrayLike) -> NDArray:
    """``field`` ``(z, y, x, 3)`` at continuous indices ``index_zyx`` ``(3, ...)`` (z, y, x rows).

    Trilinear, edge values beyond the grid; the result is ``(..., 3)`` in ``field``'s dtype.
    """
    return np.stack(
        [ndimage.map_coordinates(field[..., c], index_zyx, order=1, mode="nearest") for c in range(3)],
        axis=-1,
    )


def field_at_points(field: NDArray, grid: Volume, points_lps_mm: ArrayLike) -> NDArray:
    """``field`` ``(z, y, x, 3)`` on ``grid``'s voxel centres, sampled at LPS points ``(..., 3)``."""
    index_zyx = np.moveaxis(grid.lps_to_index(points_lps_mm)[..., ::-1], -1, 0)
    return sample_field(field, index_zyx)


def field_to_sitk(field: ArrayLike, grid: Volume) -> sitk.Image:
    """``field`` ``(z, y, x, 3)`` (LPS mm) as a float64 vector image with ``grid``'s geometry."""
    values = np.asarray(field, dtype=np.float64)
    if values.shape != (*grid.shape_zyx, 3):
        raise ValueError(
            f"displacement field: shape {values.shape} does not fit the grid {grid.shape_zyx}; "
            "expected (z, y, x, 3)"
        )
    image = sitk.GetImageFromArray(values, isVector=True)  # (z, y, x, 3) -> image size (x, y, z)
    image.SetSpacing(grid.spacing_xyz_mm.tolist())
    image.SetOrigin(grid.origin_lps_mm.tolist())
    image.SetDirection(grid.direction.reshape(-1).tolist())
    return image


def field_transform(field: ArrayLike, grid: Volume) -> sitk.DisplacementFieldTransform:
    """The SimpleITK transform ``p -> p + u(p)`` of ``field`` on ``grid`` (linear between nodes)."""
    return sitk.DisplacementFieldTransform(field_to_sitk(field, grid))


def field_from_transform(transform: sitk.Transform, grid: Volume) -> NDArray[np.float32]:
    """``transform(p) - p`` ``(z, y, x, 3)`` in LPS mm at every voxel centre of ``grid``."""
    image = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat32,
        grid.size_xyz,
        grid.origin_lps_mm.tolist(),
        grid.spacing_xyz_mm.tolist(),
        grid.direction.reshape(-1).tolist(),
    )
    return sitk.GetArrayFromImage(image)
