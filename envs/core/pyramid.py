"""Resampling to isotropic canonical grids, pyramids of uint8 levels, and patch crops.

Levels have identity direction (+x patient left, +y posterior, +z superior, LPS mm) and an
isotropic spacing in mm, so a patch around a physical point is a numpy slice. Arrays are
``(z, y, x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from envs.core.intensity import IntensityPreset, as_preset, scale_to_unit_range
from envs.core.volume import Volume

__all__ = ["Pyramid", "build_pyramid", "crop_patch", "edge_map", "edge_pyramid", "resample_isotropic"]


def _canonical_grid(volume: Volume, spacing_mm: float) -> tuple[NDArray[np.float64], list[int]]:
    """Origin and size of an identity-direction grid at ``spacing_mm`` covering ``volume``."""
    lower, upper = volume.extent_lps_mm
    size = np.maximum(1, np.ceil((upper - lower) / spacing_mm - 1e-6)).astype(int)
    # Centre the new grid on the old extent so both levels share one physical box.
    origin = (lower + upper) / 2.0 - (size - 1) * spacing_mm / 2.0
    return origin, [int(n) for n in size]


def resample_isotropic(
    volume: Volume,
    spacing_mm: float,
    *,
    interpolator: Literal["linear", "nearest", "bspline"] = "linear",
    fill_value: float = 0.0,
    antialias: bool = True,
    transform: sitk.Transform | None = None,
) -> Volume:
    """Resample onto an isotropic grid in canonical LPS orientation (identity direction).

    The new grid covers the physical extent of ``volume``; voxels outside it get
    ``fill_value``. When downsampling, a Gaussian (sigma from the spacing ratio, in mm)
    is applied first so that coarse levels do not alias; it is skipped for ``nearest``.
    ``transform`` (SimpleITK convention: maps a point of the new grid to the point of
    ``volume`` that is sampled there) warps the volume on the way, on the same grid.

    Returns a float32 volume (or the input dtype for ``nearest``).
    """
    if not spacing_mm > 0:
        raise ValueError(f"resample_isotropic: spacing_mm must be > 0, got {spacing_mm}")
    image = volume.to_sitk()
    if interpolator != "nearest":
        image = sitk.Cast(image, sitk.sitkFloat32)
        if antialias:
            sigmas = [0.5 * math.sqrt(max(spacing_mm**2 - s**2, 0.0)) for s in volume.spacing_xyz_mm]
            if max(sigmas) > 0.25 * float(volume.spacing_xyz_mm.min()):
                image = sitk.DiscreteGaussian(
                    image,
                    variance=[s**2 for s in sigmas],
                    maximumKernelWidth=32,
                    maximumError=0.01,
                    useImageSpacing=True,
                )
    origin, size = _canonical_grid(volume, spacing_mm)
    sitk_interpolator = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }[interpolator]
    resampled = sitk.Resample(
        image,
        size,
        transform if transform is not None else sitk.Transform(),
        sitk_interpolator,
        origin.tolist(),
        [spacing_mm] * 3,
        np.eye(3).reshape(-1).tolist(),
        float(fill_value),
        image.GetPixelID(),
    )
    return Volume.from_sitk(resampled, name=volume.name)


# ---------------------------------------------------------------------- pyramid and patches
@dataclass(frozen=True, repr=False)
class Pyramid:
    """Isotropic uint8 levels of one volume, coarse to fine, sharing one physical box.

    ``levels[i]`` has spacing ``spacings_mm[i]`` and identity direction, so a patch at a
    physical point is a numpy slice (see :func:`crop_patch`).
    """

    levels: tuple[Volume, ...]
    spacings_mm: tuple[float, ...]

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self.levels)

    def index_zyx(self, level: int, points_lps_mm: ArrayLike) -> NDArray[np.int64]:
        """Nearest voxel ``(z, y, x)`` of ``level`` for LPS points ``(..., 3)`` (not clipped)."""
        index_xyz = self.levels[level].lps_to_index(points_lps_mm)
        return np.floor(index_xyz[..., ::-1] + 0.5).astype(np.int64)

    def lps_of_index(self, level: int, index_zyx: ArrayLike) -> NDArray[np.float64]:
        """LPS mm of voxel ``(..., 3)`` given in ``(z, y, x)`` order on ``level``."""
        return self.levels[level].index_to_lps(np.asarray(index_zyx, dtype=np.float64)[..., ::-1])

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{s:g}mm:{lvl.shape_zyx}" for s, lvl in zip(self.spacings_mm, self.levels, strict=True)
        )
        return f"Pyramid({shapes})"


def build_pyramid(
    volume: Volume,
    spacings_mm: tuple[float, ...] = (4.0, 2.0, 1.0),
    preset: str | IntensityPreset = "ct",
    *,
    transform: sitk.Transform | None = None,
    progressive: bool = False,
) -> Pyramid:
    """Normalise ``volume`` with ``preset`` and resample it to each isotropic spacing.

    Args:
        volume: raw intensities (e.g. HU); any orientation and spacing.
        spacings_mm: level spacings, coarse to fine (strictly decreasing).
        preset: intensity preset name or :class:`IntensityPreset`.
        transform: optional spatial warp applied while resampling (see :func:`resample_isotropic`).
        progressive: build each coarser level from the next finer one (smoothing only the
            missing blur) instead of from the original: several times faster on fine data,
            while every level keeps its anti-aliasing; grids may differ by a fraction of a voxel.

    Outside the scanned field of view the levels hold 0 (the preset's lowest intensity).
    """
    spacings = tuple(float(s) for s in spacings_mm)
    if not spacings or any(not s > 0 for s in spacings):
        raise ValueError(f"pyramid: spacings_mm must be positive, got {spacings_mm}")
    if any(b >= a for a, b in pairwise(spacings)):
        raise ValueError(f"pyramid: spacings_mm must go from coarse to fine (decreasing), got {spacings}")
    unit = volume.with_voxels(scale_to_unit_range(volume.voxels, as_preset(preset)))
    levels = []
    if progressive:
        finer = resample_isotropic(unit, spacings[-1], fill_value=0.0, transform=transform)
        built = [finer]
        for spacing in reversed(spacings[:-1]):
            finer = resample_isotropic(finer, spacing, fill_value=0.0)
            built.append(finer)
        float_levels = built[::-1]
    else:
        float_levels = [resample_isotropic(unit, s, fill_value=0.0, transform=transform) for s in spacings]
    for level in float_levels:
        levels.append(level.with_voxels(np.rint(level.voxels).astype(np.uint8)))
    return Pyramid(tuple(levels), spacings)


def crop_patch(
    voxels: NDArray, center_zyx: ArrayLike, size_vox: int | tuple[int, int, int], fill: int = 0
) -> NDArray:
    """A ``size`` patch of ``voxels`` centred on integer voxel ``center_zyx``; outside is ``fill``.

    Odd sizes are centred exactly; the result is always a new C-contiguous array. Inside the
    array this is a numpy slice plus copy; near a border only the overlap is copied.
    """
    sizes = (size_vox,) * 3 if isinstance(size_vox, (int, np.integer)) else tuple(size_vox)
    cz, cy, cx = (int(c) for c in center_zyx)
    sz, sy, sx = sizes
    z0, y0, x0 = cz - sz // 2, cy - sy // 2, cx - sx // 2
    z1, y1, x1 = z0 + sz, y0 + sy, x0 + sx
    depth, height, width = voxels.shape
    if z0 >= 0 and y0 >= 0 and x0 >= 0 and z1 <= depth and y1 <= height and x1 <= width:
        return voxels[z0:z1, y0:y1, x0:x1].copy()
    patch = np.full(sizes, fill, dtype=voxels.dtype)
    vz0, vy0, vx0 = max(z0, 0), max(y0, 0), max(x0, 0)
    vz1, vy1, vx1 = min(z1, depth), min(y1, height), min(x1, width)
    if vz0 < vz1 and vy0 < vy1 and vx0 < vx1:
        patch[vz0 - z0 : vz1 - z0, vy0 - y0 : vy1 - y0, vx0 - x0 : vx1 - x0] = voxels[
            vz0:vz1, vy0:vy1, vx0:vx1
        ]
    return patch


# ---------------------------------------------------------------------- contrast-robust edges
def edge_map(voxels: NDArray, sigma_vox: float = 1.0, eta_percentile: float = 75.0) -> NDArray[np.uint8]:
    """A contrast-robust uint8 edge map of uint8 ``voxels`` (normalised gradient magnitude).

    ``g = |grad(G_sigma * v)|`` (voxel units), then ``e = g / sqrt(g^2 + eta^2)`` with ``eta``
    the ``eta_percentile`` of ``g`` over the foreground (``v > 0``), mapped to 0..255. Any
    intensity map that keeps tissue boundaries (monotonic or not, e.g.
    :func:`envs.data.multimodal_lut`) moves ``g`` by a factor per boundary, which the
    saturation and the per-volume ``eta`` largely cancel: the edges stay where they were.
    An all-zero volume gives all zeros.
    """
    if not sigma_vox > 0 or not 0 < eta_percentile < 100:
        raise ValueError(
            "edge_map: expected sigma_vox > 0 and eta_percentile in (0, 100), "
            f"got {sigma_vox}, {eta_percentile}"
        )
    values = np.asarray(voxels, dtype=np.float32)
    magnitude = ndimage.gaussian_gradient_magnitude(values, sigma_vox)
    foreground = magnitude[np.asarray(voxels) > 0]
    eta = float(np.percentile(foreground, eta_percentile)) if foreground.size else 0.0
    if not eta > 0:
        eta = float(magnitude.max()) or 1.0
    edges = magnitude / np.sqrt(magnitude * magnitude + eta * eta)
    return np.rint(edges * 255.0).astype(np.uint8)


def edge_pyramid(pyramid: Pyramid, sigma_vox: float = 1.0, eta_percentile: float = 75.0) -> Pyramid:
    """:func:`edge_map` of every level of ``pyramid`` (same grids), normalised per level."""
    levels = tuple(
        level.with_voxels(edge_map(level.voxels, sigma_vox, eta_percentile)) for level in pyramid.levels
    )
    return Pyramid(levels, pyramid.spacings_mm)
