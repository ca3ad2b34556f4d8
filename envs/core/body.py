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
    "COARSE_DATA_FACTOR",
    "body_centre_lps",
    "body_centre_zyx",
    "body_mask",
    "body_threshold",
    "check_image",
    "control_points",
    "finest_level_warning",
    "start_candidates",
]


def check_image(volume: Volume, what: str, levels_mm: tuple[float, ...], edge_vox: int | None = None) -> None:
    """Raise ``ValueError`` naming ``what`` and the reason when ``volume`` cannot be searched.

    Refused: a constant image (nothing to see: all-zero, all-air), an image with fewer than two
    voxels per axis at the coarsest level ``levels_mm[0]``, or, with ``edge_vox``, one whose
    extent along an axis is under half the observed cube (``edge_vox`` voxels at the finest level).
    """
    voxels = volume.voxels
    low, high = voxels.min(), voxels.max()
    if low == high:
        raise ValueError(
            f"{what} is constant (every voxel {float(low):g}): there is nothing to search in it; "
            "check that the file holds the image"
        )
    extent = [
        round(float(n) * float(s), 1)
        for n, s in zip(volume.shape_zyx[::-1], volume.spacing_xyz_mm, strict=True)
    ]
    needed = 2.0 * float(levels_mm[0])
    if edge_vox is not None:
        needed = max(needed, 0.5 * edge_vox * float(levels_mm[-1]))
    if min(extent) < needed:
        raise ValueError(
            f"{what} is too small: it covers {extent} mm (x, y, z) but the search needs >= {needed:g} mm "
            f"per axis (two voxels at the coarsest level {levels_mm[0]:g} mm"
            + (f", half of the {edge_vox}-voxel cube at {levels_mm[-1]:g} mm)" if edge_vox else ")")
        )


COARSE_DATA_FACTOR = 1.5
"""a scan whose coarsest voxel edge exceeds this many finest-level spacings gets a warning"""


def finest_level_warning(volume: Volume, what: str, levels_mm: tuple[float, ...]) -> str | None:
    """A warning when ``volume`` is much coarser than the finest level, else ``None``.

    Any spacing is accepted: every level is resampled from the scan, finer or coarser. A scan
    whose coarsest voxel edge exceeds ``COARSE_DATA_FACTOR`` times the finest level is
    interpolated there (e.g. 5 mm slices seen at 2 mm), which limits precision along that axis.
    """
    coarsest = float(volume.spacing_xyz_mm.max())
    if coarsest > COARSE_DATA_FACTOR * levels_mm[-1]:
        return (
            f"{what}: spacing {volume.spacing_xyz_mm.round(3).tolist()} mm is much coarser than the "
            f"finest level ({levels_mm[-1]:g} mm); it is interpolated there, so precision along "
            f"its {coarsest:.3g} mm axis is limited by the scan"
        )
    return None


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
