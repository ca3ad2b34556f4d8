"""Pictures of a volume with points on it: three orthogonal slices, pure numpy (fast enough per step)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from envs.core import Volume

__all__ = ["checkerboard_slices", "orthogonal_slices", "overlay_slices"]

_TRAJECTORY_RGB = (255, 210, 0)
_TARGET_RGB = (255, 40, 40)
_AGENT_RGB = (0, 200, 255)


def orthogonal_slices(
    level: Volume,
    center_lps_mm: NDArray,
    trajectory_lps_mm: NDArray | None = None,
    target_lps_mm: NDArray | None = None,
    height_px: int = 192,
) -> NDArray[np.uint8]:
    """Axial, coronal and sagittal slices of a canonical uint8 level, side by side (RGB).

    Args:
        level: uint8 volume with identity direction (a pyramid level).
        center_lps_mm: (3,) where the three slices cross (the agent).
        trajectory_lps_mm: (T, 3) points drawn as a path, projected onto each slice.
        target_lps_mm: (3,) drawn as a red cross (skipped when NaN).
        height_px: output height; width follows the slice aspect ratios.

    Returns:
        ``(height, width, 3)`` uint8 image. Axial is seen from the feet (patient left on
        the image right), coronal and sagittal with superior up, as radiologists read them.
    """
    voxels = level.voxels
    z, y, x = np.clip(
        np.floor(level.lps_to_index(center_lps_mm)[::-1] + 0.5).astype(int), 0, np.array(voxels.shape) - 1
    )
    # (rows, cols) index pairs into (z, y, x): which axes each view shows.
    views = [
        (voxels[z, :, :], (1, 2), False),  # axial: rows y (anterior up), cols x (left on the right)
        (voxels[:, y, :], (0, 2), True),  # coronal: rows z (superior up), cols x
        (voxels[:, :, x], (0, 1), True),  # sagittal: rows z, cols y
    ]
    panels = []
    for image, axes, flip_rows in views:
        rgb = np.repeat(image[..., np.newaxis], 3, axis=2).astype(np.uint8)
        if trajectory_lps_mm is not None and len(trajectory_lps_mm):
            _draw_points(rgb, level, np.asarray(trajectory_lps_mm), axes, _TRAJECTORY_RGB, 0)
        _draw_points(rgb, level, np.asarray(center_lps_mm)[np.newaxis], axes, _AGENT_RGB, 1)
        if target_lps_mm is not None and not np.any(np.isnan(target_lps_mm)):
            _draw_points(rgb, level, np.asarray(target_lps_mm)[np.newaxis], axes, _TARGET_RGB, 2)
        if flip_rows:
            rgb = rgb[::-1]
        scale = max(1, height_px // rgb.shape[0])
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
        pad = height_px - rgb.shape[0]
        if pad > 0:
            rgb = np.pad(rgb, ((pad // 2, pad - pad // 2), (0, 0), (0, 0)))
        panels.append(rgb[:height_px])
        panels.append(np.full((height_px, 4, 3), 40, np.uint8))
    return np.concatenate(panels[:-1], axis=1)


def _draw_points(
    rgb: NDArray[np.uint8],
    level: Volume,
    points_lps: NDArray,
    axes: tuple[int, int],
    color: tuple,
    radius: int,
) -> None:
    index_zyx = np.floor(level.lps_to_index(points_lps)[:, ::-1] + 0.5).astype(int)
    rows, cols = index_zyx[:, axes[0]], index_zyx[:, axes[1]]
    height, width = rgb.shape[:2]
    for row, col in zip(rows, cols, strict=True):
        for d in range(-radius, radius + 1):
            for r, c in ((row + d, col), (row, col + d)):
                if 0 <= r < height and 0 <= c < width:
                    rgb[r, c] = color


def _central_views(cube: NDArray) -> list[NDArray]:
    """Axial, coronal and sagittal central slices of a ``(z, y, x)`` cube, oriented as in
    :func:`orthogonal_slices` (superior up in coronal and sagittal)."""
    z, y, x = (n // 2 for n in cube.shape)
    return [cube[z, :, :], cube[::-1, y, :], cube[::-1, :, x]]


def _side_by_side(panels: list[NDArray], height_px: int) -> NDArray[np.uint8]:
    out = []
    for rgb in panels:
        scale = max(1, height_px // rgb.shape[0])
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)[:height_px]
        pad = height_px - rgb.shape[0]
        if pad > 0:
            rgb = np.pad(rgb, ((pad // 2, pad - pad // 2), (0, 0), (0, 0)))
        out.extend([rgb, np.full((height_px, 4, 3), 40, np.uint8)])
    return np.concatenate(out[:-1], axis=1).astype(np.uint8)


def overlay_slices(fixed: NDArray, moving: NDArray, height_px: int = 192) -> NDArray[np.uint8]:
    """Fixed (green) over moving (magenta) on three central slices of two ``(z, y, x)`` cubes.

    Where the two agree the picture is grey; misalignment shows as green and magenta fringes.
    """
    if np.shape(fixed) != np.shape(moving) or np.ndim(fixed) != 3:
        raise ValueError(
            f"overlay_slices: expected two equal 3-D cubes, got {np.shape(fixed)} and {np.shape(moving)}"
        )
    panels = []
    for f, m in zip(_central_views(np.asarray(fixed)), _central_views(np.asarray(moving)), strict=True):
        panels.append(np.stack([m, f, m], axis=-1))
    return _side_by_side(panels, height_px)


def checkerboard_slices(
    fixed: NDArray, moving: NDArray, tiles: int = 6, height_px: int = 192
) -> NDArray[np.uint8]:
    """Checkerboard of fixed and moving on three central slices (grey): edges must run on across tiles."""
    if np.shape(fixed) != np.shape(moving) or np.ndim(fixed) != 3:
        raise ValueError(
            f"checkerboard_slices: expected two equal 3-D cubes, got {np.shape(fixed)} and {np.shape(moving)}"
        )
    panels = []
    for f, m in zip(_central_views(np.asarray(fixed)), _central_views(np.asarray(moving)), strict=True):
        rows, cols = np.indices(f.shape)
        size = max(1, max(f.shape) // tiles)
        board = np.where(((rows // size) + (cols // size)) % 2 == 0, f, m).astype(np.uint8)
        panels.append(np.repeat(board[..., np.newaxis], 3, axis=2))
    return _side_by_side(panels, height_px)
