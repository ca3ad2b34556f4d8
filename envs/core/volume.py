r"""Volumes in physical space: voxels plus the geometry that places them in LPS millimetres.

Conventions:

* ``voxels`` is a numpy array indexed ``[z, y, x]`` (the order ``SimpleITK.GetArrayFromImage``
  returns).
* Indices passed to and returned by the geometry methods are continuous ``(x, y, z)``
  indices, the order SimpleITK uses for ``TransformContinuousIndexToPhysicalPoint``.
* Points are physical LPS millimetres (SimpleITK's world frame): +x towards the patient's
  left, +y posterior, +z superior.

A :class:`Volume` never reads files (that is :mod:`envs.io`) and never hides intensity
changes: :func:`envs.core.intensity.to_uint8` with a named preset does that, explicitly.

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

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

__all__ = ["Volume"]

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
