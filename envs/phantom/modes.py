"""The generator's deformation modes: fixed smooth vector fields in the template frame.

Each mode is a ``(3, z, y, x)`` field of LPS x, y, z displacements in mm per unit coefficient
(one std-dev), on a coarse grid that covers the template; :func:`evaluate_field` samples such a
field at LPS points.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from envs.core import sample_field
from envs.phantom.anatomy import FOV_CENTER_LPS_MM, FOV_MM, TEMPLATE_LOWER_MM, TEMPLATE_UPPER_MM

# Deformation-mode RMS magnitudes (mm) and control-point spacings (mm): coarse modes move
# more, finer modes less, which keeps every subject mapping smooth and invertible.
MODE_STD_MM: tuple[float, ...] = (10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0)
_MODE_CONTROL_SPACING_MM: tuple[float, ...] = (
    260.0,
    230.0,
    200.0,
    180.0,
    165.0,
    150.0,
    140.0,
    130.0,
    120.0,
    110.0,
)
_MODE_SEED = 20240611  # fixed: the modes are part of the generator, not of a subject
_MODE_GRID_SPACING_MM = 8.0


@functools.lru_cache(maxsize=1)
def mode_grid() -> tuple[NDArray[np.float32], NDArray[np.float64], float]:
    """All modes on a coarse template-frame grid: ``(k, 3, z, y, x)`` mm per unit coefficient.

    Each mode starts as Gaussian control values on its own control lattice, upsampled with
    cubic splines (so it is smooth), then the modes are orthogonalised (Gram-Schmidt over the
    field of view) and scaled to an RMS vector magnitude of ``MODE_STD_MM[i]`` there.
    Returns the fields, the grid origin (LPS mm) and spacing (mm).
    """
    spacing = _MODE_GRID_SPACING_MM
    lower = TEMPLATE_LOWER_MM - 2 * spacing
    upper = TEMPLATE_UPPER_MM + 2 * spacing
    size_xyz = np.ceil((upper - lower) / spacing).astype(int) + 1
    axes = [lower[i] + spacing * np.arange(size_xyz[i]) for i in range(3)]
    rng = np.random.default_rng(_MODE_SEED)
    fields = []
    for control_spacing in _MODE_CONTROL_SPACING_MM:
        control_size = np.ceil((upper - lower) / control_spacing).astype(int) + 3
        control = rng.standard_normal((3, control_size[2], control_size[1], control_size[0]))
        # Grid nodes in control-lattice index units (one control node of margin on each side).
        coords = [(axes[i] - lower[i]) / control_spacing + 1.0 for i in range(3)]
        zz, yy, xx = np.meshgrid(coords[2], coords[1], coords[0], indexing="ij")
        field = np.stack([ndimage.map_coordinates(c, [zz, yy, xx], order=3, mode="nearest") for c in control])
        fields.append(field)
    fields_array = np.stack(fields)  # (k, 3, z, y, x)

    # Inner products over the field of view only: that is where subjects are sampled.
    fov_lower = FOV_CENTER_LPS_MM - FOV_MM / 2
    fov_upper = FOV_CENTER_LPS_MM + FOV_MM / 2
    in_fov = [(axes[i] >= fov_lower[i]) & (axes[i] <= fov_upper[i]) for i in range(3)]
    weight = (in_fov[2][:, None, None] & in_fov[1][None, :, None] & in_fov[0][None, None, :]).astype(
        np.float64
    )
    count = weight.sum()

    def inner(a: NDArray, b: NDArray) -> float:
        return float((a * b * weight).sum() / count)

    orthonormal: list[NDArray] = []
    for field in fields_array:
        for basis in orthonormal:
            field = field - inner(field, basis) * basis
        orthonormal.append(field / math.sqrt(inner(field, field)))
    modes = np.stack([basis * std for basis, std in zip(orthonormal, MODE_STD_MM, strict=True)])
    return modes.astype(np.float32), lower, spacing


def evaluate_field(field: NDArray, origin: NDArray, spacing: float, points_lps_mm: NDArray) -> NDArray:
    """Trilinear value of a ``(3, z, y, x)`` field at points ``(..., 3)`` (LPS mm) -> ``(..., 3)``."""
    shape = points_lps_mm.shape[:-1]
    # Index by division, not envs.core.field_at_points' matrix product: that differs in the last
    # bit, and phantoms must stay bit-identical for a given seed.
    index_xyz = (points_lps_mm.reshape(-1, 3) - origin) / spacing
    return sample_field(np.moveaxis(field, 0, -1), index_xyz[:, ::-1].T).reshape(*shape, 3)
