"""A label map on an axis-aligned LPS grid, painted by primitives within their bounding boxes.

Coordinates are LPS mm; the label array is indexed ``(z, y, x)``; label values are
:data:`envs.phantom.anatomy.LABELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from envs.phantom.anatomy import LABELS


class Painter:
    """A label map on an axis-aligned grid, painted by primitives within their bounding boxes."""

    def __init__(self, lower_mm: NDArray, upper_mm: NDArray, spacing_mm: float) -> None:
        self.spacing_mm = spacing_mm
        self.origin_mm = np.asarray(lower_mm, dtype=np.float64)
        size = np.floor((np.asarray(upper_mm) - lower_mm) / spacing_mm).astype(int) + 1
        self.labels = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
        # 1-D voxel-centre coordinates per axis (mm); primitives broadcast them.
        self.axes_mm = [self.origin_mm[i] + spacing_mm * np.arange(size[i]) for i in range(3)]

    def _box(self, lower: ArrayLike, upper: ArrayLike):
        """Slices (z, y, x) and broadcastable x, y, z coordinates of the grid inside a box."""
        lower = np.asarray(lower, dtype=np.float64)
        upper = np.asarray(upper, dtype=np.float64)
        slices = []
        for axis in range(3):
            coords = self.axes_mm[axis]
            start = int(np.searchsorted(coords, lower[axis], side="left"))
            stop = int(np.searchsorted(coords, upper[axis], side="right"))
            slices.append(slice(start, max(start, stop)))
        x = self.axes_mm[0][slices[0]][np.newaxis, np.newaxis, :]
        y = self.axes_mm[1][slices[1]][np.newaxis, :, np.newaxis]
        z = self.axes_mm[2][slices[2]][:, np.newaxis, np.newaxis]
        return (slices[2], slices[1], slices[0]), x, y, z

    def paint(
        self,
        label: str,
        inside: Callable[[NDArray, NDArray, NDArray], NDArray],
        lower: ArrayLike,
        upper: ArrayLike,
        only: Sequence[str] | None = None,
    ) -> None:
        """Set ``label`` where ``inside(x, y, z)`` holds within the box (and the old label is in ``only``)."""
        slices, x, y, z = self._box(lower, upper)
        if any(s.stop <= s.start for s in slices):
            return
        mask = np.broadcast_to(inside(x, y, z), (z.shape[0], y.shape[1], x.shape[2]))
        region = self.labels[slices]
        if only is not None:
            mask = mask & np.isin(region, [LABELS[name] for name in only])
        region[mask] = LABELS[label]

    def ellipsoid(
        self,
        label: str,
        center: ArrayLike,
        semi_axes: ArrayLike,
        axes: NDArray | None = None,
        only: Sequence[str] | None = None,
        extra: Callable[[NDArray, NDArray, NDArray], NDArray] | None = None,
    ) -> None:
        """Ellipsoid; ``axes`` rows are its unit axes in LPS (default: x, y, z)."""
        center = np.asarray(center, dtype=np.float64)
        semi = np.asarray(semi_axes, dtype=np.float64)
        frame = np.eye(3) if axes is None else np.asarray(axes, dtype=np.float64)
        reach = np.sqrt(((frame * semi[:, np.newaxis]) ** 2).sum(axis=0))

        def inside(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
            dx, dy, dz = x - center[0], y - center[1], z - center[2]
            total = 0.0
            for row, half in zip(frame, semi, strict=True):
                total = total + ((row[0] * dx + row[1] * dy + row[2] * dz) / half) ** 2
            result = total <= 1.0
            return result & extra(x, y, z) if extra is not None else result

        self.paint(label, inside, center - reach, center + reach, only)

    def capsule(
        self,
        label: str,
        start: ArrayLike,
        end: ArrayLike,
        radius_start: float,
        radius_end: float | None = None,
        only: Sequence[str] | None = None,
        extra: Callable[[NDArray, NDArray, NDArray], NDArray] | None = None,
    ) -> None:
        """Tube with round ends from ``start`` to ``end`` (LPS mm), radius tapering linearly."""
        a = np.asarray(start, dtype=np.float64)
        b = np.asarray(end, dtype=np.float64)
        r0 = float(radius_start)
        r1 = r0 if radius_end is None else float(radius_end)
        axis = b - a
        length_sq = max(float(axis @ axis), 1e-12)

        def inside(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
            px, py, pz = x - a[0], y - a[1], z - a[2]
            t = np.clip((px * axis[0] + py * axis[1] + pz * axis[2]) / length_sq, 0.0, 1.0)
            distance_sq = (px - t * axis[0]) ** 2 + (py - t * axis[1]) ** 2 + (pz - t * axis[2]) ** 2
            radius = r0 + (r1 - r0) * t
            result = distance_sq <= radius**2
            return result & extra(x, y, z) if extra is not None else result

        reach = max(r0, r1)
        self.paint(label, inside, np.minimum(a, b) - reach, np.maximum(a, b) + reach, only)

    def polyline(self, label: str, points: ArrayLike, radii: ArrayLike, **kwargs) -> None:
        """Chain of capsules through ``points`` ``(n, 3)`` with radii ``(n,)`` at the points."""
        points = np.asarray(points, dtype=np.float64)
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
        for i in range(len(points) - 1):
            self.capsule(label, points[i], points[i + 1], radii[i], radii[i + 1], **kwargs)
