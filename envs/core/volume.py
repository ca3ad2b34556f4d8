"""Volumes in physical space: voxels plus the geometry that places them in LPS millimetres.

Conventions (see ARCHITECTURE.md):

* ``voxels`` is a numpy array indexed ``[z, y, x]`` (the order ``SimpleITK.GetArrayFromImage``
  returns).
* Indices passed to and returned by the geometry methods are continuous ``(x, y, z)``
  indices, the order SimpleITK uses for ``TransformContinuousIndexToPhysicalPoint``.
* Points are physical LPS millimetres (SimpleITK's world frame): +x towards the patient's
  left, +y posterior, +z superior.

A :class:`Volume` never reads files (that is :mod:`envs.io`) and never hides intensity
changes: :func:`to_uint8` with a named preset does that, explicitly.

Example:
    >>> import numpy as np
    >>> vol = Volume(np.zeros((4, 5, 6), np.int16), spacing_xyz_mm=(0.5, 1.0, 2.0))
    >>> print(repr(vol).replace(", origin", ",\n origin"))
    Volume(shape_zyx=(4, 5, 6), spacing_xyz_mm=(0.5, 1.0, 2.0), dtype=int16,
     origin_lps_mm=(0.0, 0.0, 0.0), direction=identity)
    >>> vol.index_to_lps([2, 0, 1]).tolist()
    [1.0, 0.0, 2.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PRESETS",
    "IntensityPreset",
    "Pyramid",
    "Volume",
    "build_pyramid",
    "crop_patch",
    "resample_isotropic",
    "to_uint8",
]

_DIRECTION_TOLERANCE = 1e-4


def _as_vector3(value: ArrayLike, name: str) -> NDArray[np.float64]:
    vector = np.asarray(value, dtype=np.float64).reshape(-1)
    if vector.shape != (3,):
        raise ValueError(f"{name}: expected 3 values (x, y, z), got {np.asarray(value).shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{name}: expected finite values, got {vector.tolist()}")
    return vector


@dataclass(frozen=True, repr=False, eq=False)
class Volume:
    """A 3-D image placed in physical LPS space.

    Args:
        voxels: array of shape ``(z, y, x)``; any real dtype; must be finite.
        spacing_xyz_mm: voxel size along the index axes x, y, z, in mm (> 0).
        origin_lps_mm: physical LPS position (mm) of the centre of voxel index (0, 0, 0).
        direction: 3x3 matrix whose *columns* are the LPS unit vectors of the index axes
            x, y, z (SimpleITK's ``GetDirection()`` reshaped row-major).
        name: free text shown in error messages (usually the source file).

    The voxel array is stored as a read-only view; geometry arrays are copies.
    """

    voxels: NDArray
    spacing_xyz_mm: NDArray[np.float64] = field(default_factory=lambda: np.ones(3))
    origin_lps_mm: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    direction: NDArray[np.float64] = field(default_factory=lambda: np.eye(3))
    name: str = ""

    def __post_init__(self) -> None:
        where = f" ({self.name})" if self.name else ""
        voxels = np.asarray(self.voxels)
        if voxels.ndim != 3:
            raise ValueError(
                f"volume{where}: expected a 3-D array (z, y, x), got {voxels.ndim}-D with shape "
                f"{voxels.shape}; pass a single 3-D volume (split 4-D series into frames first)"
            )
        if min(voxels.shape) < 1:
            raise ValueError(f"volume{where}: empty array of shape {voxels.shape}")
        if not (np.issubdtype(voxels.dtype, np.number) and not np.iscomplexobj(voxels)):
            raise ValueError(f"volume{where}: expected real numeric voxels, got dtype {voxels.dtype}")
        if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
            bad = int(np.size(voxels) - np.count_nonzero(np.isfinite(voxels)))
            raise ValueError(
                f"volume{where}: {bad} voxel(s) are NaN or infinite; expected finite intensities. "
                "Replace them (e.g. numpy.nan_to_num) before building the volume"
            )
        view = voxels.view()
        view.flags.writeable = False
        spacing = _as_vector3(self.spacing_xyz_mm, f"volume{where} spacing_xyz_mm")
        if np.any(spacing <= 0):
            raise ValueError(
                f"volume{where}: spacing must be positive in mm, got {spacing.tolist()}; "
                "fix the header (pixdim / spacings) of the file"
            )
        origin = _as_vector3(self.origin_lps_mm, f"volume{where} origin_lps_mm")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise ValueError(f"volume{where}: direction must be a finite 3x3 matrix, got {direction!r}")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
            raise ValueError(
                f"volume{where}: direction must be orthonormal (columns are unit axes), got "
                f"{direction.round(4).tolist()}; a sheared or scaled direction belongs in spacing"
            )
        object.__setattr__(self, "voxels", view)
        object.__setattr__(self, "spacing_xyz_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", origin)
        object.__setattr__(self, "direction", direction.copy())

    # ------------------------------------------------------------------ geometry
    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(int(n) for n in self.voxels.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z (SimpleITK's ``GetSize()``)."""
        z, y, x = self.shape_zyx
        return (x, y, z)

    @property
    def index_to_lps_matrix(self) -> NDArray[np.float64]:
        """3x3 matrix ``M`` with ``lps = origin + M @ index_xyz``."""
        return self.direction * self.spacing_xyz_mm[np.newaxis, :]

    @property
    def affine_lps(self) -> NDArray[np.float64]:
        """4x4 homogeneous matrix from continuous index ``(x, y, z, 1)`` to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.index_to_lps_matrix
        affine[:3, 3] = self.origin_lps_mm
        return affine

    def index_to_lps(self, index_xyz: ArrayLike) -> NDArray[np.float64]:
        """Continuous index ``(..., 3)`` in x, y, z order -> LPS points in mm ``(..., 3)``."""
        index = np.asarray(index_xyz, dtype=np.float64)
        return index @ self.index_to_lps_matrix.T + self.origin_lps_mm

    def lps_to_index(self, points_lps_mm: ArrayLike) -> NDArray[np.float64]:
        """LPS points in mm ``(..., 3)`` -> continuous index ``(..., 3)`` in x, y, z order.

        Exact inverse of :meth:`index_to_lps` (no rounding, no bounds check).
        """
        points = np.asarray(points_lps_mm, dtype=np.float64)
        # direction is orthonormal, so its inverse is its transpose: exact and cheap.
        inverse = (self.direction / self.spacing_xyz_mm[np.newaxis, :]).T
        return (points - self.origin_lps_mm) @ inverse.T

    def contains(self, points_lps_mm: ArrayLike, margin_vox: float = 0.0) -> NDArray[np.bool_]:
        """Whether points ``(..., 3)`` lie inside the voxel grid (voxel edges), minus a margin."""
        index = self.lps_to_index(points_lps_mm)
        upper = np.asarray(self.size_xyz, dtype=np.float64) - 0.5 - margin_vox
        return np.all((index >= -0.5 + margin_vox) & (index <= upper), axis=-1)

    def corners_lps(self) -> NDArray[np.float64]:
        """The 8 outer corners of the grid (voxel edges, not centres) in LPS mm, shape (8, 3)."""
        size = np.asarray(self.size_xyz, dtype=np.float64)
        unit = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        return self.index_to_lps(unit * size - 0.5)

    @property
    def extent_lps_mm(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned LPS bounding box ``(lower, upper)`` of the grid's outer corners."""
        corners = self.corners_lps()
        return corners.min(axis=0), corners.max(axis=0)

    @property
    def center_lps_mm(self) -> NDArray[np.float64]:
        """Physical centre of the grid in LPS mm."""
        return self.index_to_lps((np.asarray(self.size_xyz, dtype=np.float64) - 1.0) / 2.0)

    @property
    def nbytes(self) -> int:
        return int(self.voxels.nbytes)

    @property
    def orientation(self) -> str:
        """Direction each index axis (x, y, z) points to, e.g. ``"LPS"`` for identity, ``"RAS"``.

        Letters: L/R (patient left/right), P/A (posterior/anterior), S/I (superior/inferior).
        """
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        code = ""
        for column in self.direction.T:
            axis = int(np.argmax(np.abs(column)))
            code += letters[axis][0 if column[axis] > 0 else 1]
        return code

    @property
    def is_axis_aligned(self) -> bool:
        return bool(np.allclose(self.direction, np.eye(3), atol=_DIRECTION_TOLERANCE))

    # ------------------------------------------------------------------ construction
    def with_voxels(self, voxels: NDArray, name: str | None = None) -> Volume:
        """A volume with the same geometry and new voxels of the same shape."""
        if np.shape(voxels) != self.shape_zyx:
            raise ValueError(f"with_voxels: expected shape {self.shape_zyx}, got {np.shape(voxels)}")
        return Volume(
            voxels,
            self.spacing_xyz_mm,
            self.origin_lps_mm,
            self.direction,
            self.name if name is None else name,
        )

    @classmethod
    def from_sitk(cls, image: sitk.Image, name: str = "") -> Volume:
        """Copy a 3-D scalar SimpleITK image into a :class:`Volume`."""
        if image.GetDimension() != 3:
            raise ValueError(f"volume {name}: expected a 3-D image, got {image.GetDimension()}-D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"volume {name}: expected one intensity per voxel, got "
                f"{image.GetNumberOfComponentsPerPixel()} components (colour or vector image); "
                "convert it to a scalar image first"
            )
        voxels = sitk.GetArrayFromImage(image)  # (z, y, x)
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(voxels, image.GetSpacing(), image.GetOrigin(), direction, name)

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (voxels are copied)."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.voxels), isVector=False)
        image.SetSpacing(self.spacing_xyz_mm.tolist())
        image.SetOrigin(self.origin_lps_mm.tolist())
        image.SetDirection(self.direction.reshape(-1).tolist())
        return image

    def __repr__(self) -> str:
        def fmt(values: NDArray) -> str:
            return (
                "("
                + ", ".join(
                    f"{float(v):.6g}" if not float(v).is_integer() else f"{float(v):.1f}" for v in values
                )
                + ")"
            )

        if self.is_axis_aligned:
            direction = "identity"
        elif np.allclose(np.abs(self.direction), np.round(np.abs(self.direction)), atol=_DIRECTION_TOLERANCE):
            direction = self.orientation
        else:
            direction = f"oblique ~{self.orientation}"
        name = f", name={self.name!r}" if self.name else ""
        return (
            f"Volume(shape_zyx={self.shape_zyx}, spacing_xyz_mm={fmt(self.spacing_xyz_mm)}, "
            f"dtype={self.voxels.dtype}, origin_lps_mm={fmt(self.origin_lps_mm)}, "
            f"direction={direction}{name})"
        )


# ---------------------------------------------------------------------- intensities
@dataclass(frozen=True)
class IntensityPreset:
    """How raw intensities become uint8 0..255.

    ``kind="window"`` maps ``[low, high]`` (e.g. Hounsfield units) linearly; ``kind="percentile"``
    maps the ``[low, high]`` percentiles of the foreground voxels (MR has no absolute scale).
    """

    kind: Literal["window", "percentile"]
    low: float
    high: float

    def bounds(self, voxels: NDArray) -> tuple[float, float]:
        if self.kind == "window":
            return float(self.low), float(self.high)
        flat = voxels.reshape(-1)
        # A strided subsample is plenty for percentiles and keeps this O(1e6).
        sample = flat[:: max(1, flat.size // 2_000_000)].astype(np.float32)
        foreground = sample[sample > sample.min()]
        if foreground.size == 0:
            foreground = sample
        low, high = np.percentile(foreground, [self.low, self.high])
        if high <= low:
            high = low + 1.0
        return float(low), float(high)


PRESETS: dict[str, IntensityPreset] = {
    # Wide CT window: lung (-850 HU) to dense bone (+1000) stay distinguishable, ~8 HU a level.
    "ct": IntensityPreset("window", -1000.0, 1000.0),
    # Soft-tissue window (level 40, width 400): organs apart, lung and bone saturate.
    "ct_soft": IntensityPreset("window", -160.0, 240.0),
    "mr": IntensityPreset("percentile", 0.5, 99.5),
}


def _preset(preset: str | IntensityPreset) -> IntensityPreset:
    if isinstance(preset, IntensityPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"intensity preset: unknown name {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _scale_to_unit_range(voxels: NDArray, preset: IntensityPreset) -> NDArray[np.float32]:
    low, high = preset.bounds(voxels)
    scaled = (voxels.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0, out=scaled)


def to_uint8(volume: Volume, preset: str | IntensityPreset = "ct") -> Volume:
    """Map intensities to uint8 with a named preset (``ct``, ``ct_soft``, ``mr``) or a custom one."""
    scaled = _scale_to_unit_range(volume.voxels, _preset(preset))
    return volume.with_voxels(np.rint(scaled).astype(np.uint8))


# ---------------------------------------------------------------------- resampling
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
    unit = volume.with_voxels(_scale_to_unit_range(volume.voxels, _preset(preset)))
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
