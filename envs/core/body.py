"""The body in a normalised (uint8) level: its mask, centre, control points and start voxels.

"Body" means voxels clearly brighter than air and field-of-view padding. Levels are the
canonical grids of :mod:`envs.core.pyramid` (identity direction, isotropic spacing); arrays
are ``(z, y, x)``, points LPS millimetres.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from envs.core.volume import Volume

__all__ = [
    "body_centre_lps",
    "body_centre_zyx",
    "body_mask",
    "body_threshold",
    "control_points",
    "start_candidates",
]


def body_threshold(voxels: NDArray) -> float:
    """The intensity above which a voxel counts as body: a quarter of the 99th percentile, >= 20."""
    return max(20.0, 0.25 * float(np.percentile(voxels, 99)))


def body_mask(voxels: NDArray) -> NDArray[np.bool_]:
    """Body voxels of ``voxels`` ``(z, y, x)``; every voxel when none passes the threshold."""
    mask = voxels > body_threshold(voxels)
    return mask if mask.any() else np.ones_like(mask)


def start_candidates(voxels: NDArray) -> NDArray[np.int64]:
    """Flat (C-order) indices of the body voxels: where an episode may start."""
    return np.flatnonzero(body_mask(voxels)).astype(np.int64)


def body_centre_zyx(voxels: NDArray) -> NDArray[np.int64]:
    """The body voxel ``(z, y, x)`` nearest the body's centroid (inside the body even if concave)."""
    body = np.argwhere(body_mask(voxels))
    return body[np.argmin(np.sum((body - body.mean(axis=0)) ** 2, axis=1))]


def body_centre_lps(level: Volume) -> NDArray[np.float64]:
    """LPS mm of the centroid of the body of ``level``."""
    index_zyx = np.argwhere(body_mask(level.voxels)).mean(axis=0)
    return level.index_to_lps(index_zyx[::-1])


def control_points(level: Volume, spacing_mm: float) -> NDArray[np.float64]:
    """LPS mm ``(n, 3)`` of body voxels on a lattice of ``spacing_mm`` (at least 8 points where the
    body has them): points spread over the anatomy. ``level`` must be isotropic."""
    mask = body_mask(level.voxels)
    stride = max(1, round(spacing_mm / float(level.spacing_xyz_mm[0])))
    while True:
        sub = np.argwhere(mask[::stride, ::stride, ::stride]) * stride
        if len(sub) >= 8 or stride == 1:
            break
        stride = max(1, stride // 2)
    return level.index_to_lps(sub[:, ::-1].astype(np.float64))
