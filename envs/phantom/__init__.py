"""Synthetic CT torso phantoms with known landmarks and a known deformation model.

A phantom is a CT-like volume (int16 Hounsfield units) of a torso from about T3 to L4:
skin and subcutaneous fat, body-wall and paraspinal muscles, lungs with airway and vessel
trees, mediastinum, heart (myocardium and contrast-filled blood pool), aorta and venae
cavae, liver, spleen, stomach, colon, kidneys with a fatty renal sinus, psoas muscles, a
spine of vertebrae (cortical shell, cancellous core, discs, posterior elements, spinal
canal), sloping ribs with costal cartilage, the sternum with the xiphoid and the iliac
crests. :data:`LANDMARK_NAMES` lists the named points that lie in that anatomy.

All geometry is LPS millimetres (+x patient left, +y posterior, +z superior). The
*template* (the mean phantom) is painted once, as a label map on a fine grid, from simple
primitives (ellipsoids, capsules, superellipse cross-sections); every subject is the
template seen through a known mapping. For a subject point ``p`` (LPS mm)::

    r = c + R^T (p - c - t) / s          # undo pose (rotation R, translation t) and scale s
    q = r + sum_i coef_i * mode_i(r)     # add the smooth deformation modes
    subject(p) == mean_phantom(q)        # D(p) = q - p is stored per voxel

with ``c`` the centre of the field of view. The modes are fixed smooth vector fields
(see :func:`deformation_modes`), so a statistical deformation model fitted to the stored
displacement fields can be checked against the truth.

Example:
    >>> phantom = generate_phantom(0, PhantomConfig(spacing_mm=4.0))
    >>> phantom.volume.shape_zyx
    (75, 60, 80)
    >>> sorted(phantom.landmarks) == sorted(LANDMARK_NAMES)
    True
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from envs.core import Volume

__all__ = [
    "HU",
    "LABELS",
    "LANDMARK_NAMES",
    "MODE_STD_MM",
    "Phantom",
    "PhantomConfig",
    "deformation_modes",
    "generate_phantom",
    "main",
    "mean_phantom",
]

# ---------------------------------------------------------------------- public constants
LANDMARK_NAMES: tuple[str, ...] = (
    "carina",
    "T6_body",
    "T9_body",
    "T12_body",
    "L2_body",
    "left_kidney_hilum",
    "right_kidney_hilum",
    "heart_apex",
    "xiphoid_tip",
    "liver_dome",
)

_TISSUES: tuple[tuple[str, float], ...] = (
    # (structure, nominal HU). Order gives the label values; 0 is air outside the body.
    ("air", -1000.0),
    ("fat", -100.0),
    ("muscle", 45.0),
    ("abdomen", 25.0),  # bowel and mesentery, averaged
    ("lung", -850.0),
    ("airway", -1000.0),
    ("mediastinum", -70.0),  # mediastinal fat with connective tissue
    ("myocardium", 60.0),
    ("blood_pool", 170.0),  # contrast-enhanced heart chambers
    ("aorta", 190.0),  # arterial-phase contrast
    ("vena_cava", 100.0),
    ("lung_vessel", 60.0),
    ("liver", 60.0),
    ("spleen", 50.0),
    ("stomach", 15.0),
    ("colon", -30.0),
    ("bowel_gas", -950.0),
    ("kidney", 35.0),
    ("renal_sinus", -70.0),
    ("bone_cortical", 700.0),
    ("bone_cancellous", 250.0),
    ("bone_posterior", 450.0),  # vertebral arches, processes
    ("disc", 80.0),
    ("spinal_canal", 15.0),
    ("rib", 450.0),
    ("cartilage", 110.0),
    ("sternum", 350.0),
    ("pelvis", 420.0),
)
LABELS: dict[str, int] = {name: value for value, (name, _) in enumerate(_TISSUES)}
HU: dict[str, float] = dict(_TISSUES)
_BONE_LABELS = frozenset(
    LABELS[n] for n in ("bone_cortical", "bone_cancellous", "bone_posterior", "rib", "sternum", "pelvis")
)

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
_COEFFICIENT_CLIP = 3.0

# Scanner field of view (x, y, z) in mm and its centre; the template grid is larger so that
# posed and deformed subjects still sample real anatomy near the borders.
_FOV_MM = np.array([320.0, 240.0, 300.0])
_FOV_CENTER_LPS_MM = np.array([0.0, 0.0, 10.0])
_TEMPLATE_LOWER_MM = np.array([-190.0, -150.0, -260.0])
_TEMPLATE_UPPER_MM = np.array([190.0, 150.0, 280.0])
_TEMPLATE_SPACING_MM = 1.5
_ROUND_TRIP_TOLERANCE_MM = 0.1


# ---------------------------------------------------------------------- public dataclasses
@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms vary and how they are sampled.

    Args:
        spacing_mm: isotropic output voxel size in mm.
        n_modes: number of deformation modes used (0 .. ``len(MODE_STD_MM)``).
        mode_scale: multiplies the mode std-devs (0 = no shape variation).
        size_std: std-dev of the global scale factor ``1 +- size_std`` (clipped at 3 std).
        rotation_deg: max absolute rotation about each LPS axis in degrees (uniform).
        translation_mm: max absolute translation per axis in mm (uniform).
        noise_hu: std-dev of the Gaussian CT noise in HU.
        partial_fov: crop the scan along its z axis at random, so some landmarks fall outside.
        oblique: give the output grid a random non-identity direction (10-25 degrees).
        hu_jitter: max absolute per-subject, per-tissue HU offset (uniform; air is exempt).
        texture_hu: std-dev in HU of a smooth low-frequency texture added to every voxel.
    """

    spacing_mm: float = 2.0
    n_modes: int = 6
    mode_scale: float = 1.0
    size_std: float = 0.06
    rotation_deg: float = 8.0
    translation_mm: float = 10.0
    noise_hu: float = 15.0
    partial_fov: bool = False
    oblique: bool = False
    hu_jitter: float = 15.0
    texture_hu: float = 8.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.spacing_mm) and 0.5 <= self.spacing_mm <= 16.0):
            raise ValueError(f"PhantomConfig.spacing_mm: expected 0.5 .. 16 mm, got {self.spacing_mm}")
        if not 0 <= self.n_modes <= len(MODE_STD_MM):
            raise ValueError(f"PhantomConfig.n_modes: expected 0 .. {len(MODE_STD_MM)}, got {self.n_modes}")
        for name in (
            "mode_scale",
            "size_std",
            "rotation_deg",
            "translation_mm",
            "noise_hu",
            "hu_jitter",
            "texture_hu",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PhantomConfig.{name}: expected a finite value >= 0, got {value}")
        if self.size_std > 0.25:
            raise ValueError(
                f"PhantomConfig.size_std: expected <= 0.25 (scale stays positive), got {self.size_std}"
            )


@dataclass(frozen=True, repr=False)
class Phantom:
    """One synthetic subject.

    Attributes:
        volume: int16 HU, voxels ``(z, y, x)``.
        labels: uint8 label map on the same grid (values in :data:`LABELS`).
        landmarks: name -> LPS mm ``(3,)`` for the landmarks inside the volume.
        landmarks_outside: name -> LPS mm ``(3,)`` for those outside the field of view.
        displacement_lps_mm: ``(z, y, x, 3)`` float32; for voxel centre ``p`` (LPS mm) the
            mean-phantom point is ``q = p + D(p)``; components are LPS x, y, z in mm.
        mode_coefficients: ``(n_modes,)`` in units of each mode's std-dev.
        scale: global size factor.
        rotation_deg: ``(3,)`` rotations about the LPS x, y, z axes in degrees.
        translation_mm: ``(3,)`` LPS translation in mm.
        seed: the seed that made it.
    """

    volume: Volume
    labels: Volume
    landmarks: dict[str, np.ndarray]
    landmarks_outside: dict[str, np.ndarray]
    displacement_lps_mm: np.ndarray
    mode_coefficients: np.ndarray
    scale: float
    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    seed: int

    def __repr__(self) -> str:
        return (
            f"Phantom(seed={self.seed}, {self.volume!r}, landmarks={len(self.landmarks)} inside + "
            f"{len(self.landmarks_outside)} outside, scale={self.scale:.3f})"
        )


# ---------------------------------------------------------------------- template painting
class _Painter:
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


def _unit(vector: ArrayLike) -> NDArray[np.float64]:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def _frame(long_axis: ArrayLike, toward: ArrayLike) -> NDArray[np.float64]:
    """Orthonormal rows (u, v, w): w along ``long_axis``, u as close to ``toward`` as possible."""
    w = _unit(long_axis)
    u = np.asarray(toward, dtype=np.float64)
    u = _unit(u - (u @ w) * w)
    return np.stack([u, np.cross(w, u), w])


# Body outline: superellipse cross-section whose semi-axes grow slightly towards the pelvis.
_SUPERELLIPSE_POWER = 2.4
_FAT_MM = 12.0
_WALL_MM = 10.0


def _body_semi_axes(z: NDArray | float) -> tuple[NDArray, NDArray]:
    """Body semi-axes (x, y) in mm at height ``z`` (mm)."""
    z = np.asarray(z, dtype=np.float64)
    return 142.0 + 8.0 * np.tanh(-z / 100.0), 98.0 + 6.0 * np.tanh(-z / 100.0)


def _superellipse(x: NDArray, y: NDArray, z: NDArray, shrink_mm: float) -> NDArray:
    semi_x, semi_y = _body_semi_axes(z)
    return (np.abs(x) / (semi_x - shrink_mm)) ** _SUPERELLIPSE_POWER + (
        np.abs(y) / (semi_y - shrink_mm)
    ) ** _SUPERELLIPSE_POWER <= 1.0


def _superellipse_point(angle_rad: float, z: float, shrink_mm: float, side: float) -> NDArray[np.float64]:
    """Point of the cross-section outline at ``angle`` from posterior (0) to anterior (pi)."""
    semi_x, semi_y = _body_semi_axes(z)
    exponent = 2.0 / _SUPERELLIPSE_POWER
    s, c = math.sin(angle_rad), math.cos(angle_rad)
    x = (float(semi_x) - shrink_mm) * abs(s) ** exponent
    y = (float(semi_y) - shrink_mm) * math.copysign(abs(c) ** exponent, c)
    return np.array([side * x, y, z])


def _spine_center_y(z: NDArray | float) -> NDArray:
    """y (mm) of the vertebral-body axis: thoracic kyphosis bulges back, lumbar lordosis forward."""
    z = np.asarray(z, dtype=np.float64)
    return 30.0 + 10.0 * np.exp(-(((z - 60.0) / 90.0) ** 2)) - 8.0 * np.exp(-(((z + 120.0) / 50.0) ** 2))


def _diaphragm_z(x: NDArray, y: NDArray) -> NDArray:
    """Height (mm) of the diaphragm: two paraboloid domes, the right one higher (liver)."""
    right = _RIGHT_DOME[2] - ((x - _RIGHT_DOME[0]) ** 2 + (y - _RIGHT_DOME[1]) ** 2) / (2 * _DOME_RADIUS_MM)
    left = _LEFT_DOME[2] - ((x - _LEFT_DOME[0]) ** 2 + (y - _LEFT_DOME[1]) ** 2) / (2 * _DOME_RADIUS_MM)
    return np.maximum(right, left)


_RIGHT_DOME = np.array([-60.0, -5.0, 35.0])
_LEFT_DOME = np.array([55.0, 0.0, 22.0])
_DOME_RADIUS_MM = 70.0


@dataclass(frozen=True)
class _Vertebra:
    name: str
    z_mm: float  # centre of the body
    height_mm: float
    semi_x_mm: float
    semi_y_mm: float

    @property
    def center(self) -> NDArray[np.float64]:
        return np.array([0.0, float(_spine_center_y(self.z_mm)), self.z_mm])


def _vertebrae() -> list[_Vertebra]:
    """C5 .. L5 from top to bottom, with heights and body sizes growing caudally."""
    names = [f"C{i}" for i in (5, 6, 7)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    vertebrae = []
    z = 264.0  # C5 centre; thoracic pitch 21 mm, lumbar 28 mm, scaled to fit T3..L4 in the FOV
    for index, name in enumerate(names):
        lumbar = name.startswith("L")
        height = 22.0 if lumbar else (14.0 if name.startswith("C") else 16.0)
        grow = index / (len(names) - 1)
        vertebrae.append(_Vertebra(name, z, height, 15.0 + 10.0 * grow, 12.0 + 6.0 * grow))
        if index + 1 < len(names):
            next_lumbar = names[index + 1].startswith("L")
            z -= 28.0 if next_lumbar and lumbar else (25.0 if next_lumbar else 21.0)
    return vertebrae


def _airway_tree() -> list[tuple[NDArray, NDArray, float, float]]:
    """Segments (start, end, radius_start, radius_end) of the trachea and bronchi (lumen)."""
    carina = _CARINA
    tree = [
        (np.array([0.0, -22.0, 285.0]), np.array([0.0, -14.0, 190.0]), 9.0, 9.0),
        (np.array([0.0, -14.0, 190.0]), carina, 9.0, 8.0),
        # Right main bronchus: short and steep; left: longer and more horizontal.
        (carina, np.array([-38.0, 2.0, 105.0]), 7.0, 6.0),
        (np.array([-38.0, 2.0, 105.0]), np.array([-68.0, -8.0, 128.0]), 4.5, 3.0),
        (np.array([-38.0, 2.0, 105.0]), np.array([-52.0, 8.0, 65.0]), 5.0, 4.5),
        (np.array([-52.0, 8.0, 65.0]), np.array([-78.0, 35.0, 25.0]), 4.0, 2.5),
        (np.array([-52.0, 8.0, 65.0]), np.array([-72.0, -35.0, 55.0]), 3.5, 2.5),
        (carina, np.array([46.0, 6.0, 98.0]), 6.5, 5.5),
        (np.array([46.0, 6.0, 98.0]), np.array([70.0, -15.0, 122.0]), 4.0, 2.5),
        (np.array([46.0, 6.0, 98.0]), np.array([72.0, 32.0, 32.0]), 4.5, 2.5),
    ]
    return tree


_CARINA = np.array([0.0, -6.0, 125.0])

_HEART_CENTER = np.array([22.0, -36.0, 62.0])
_HEART_AXIS = _unit([0.6, -0.45, -0.66])  # base -> apex: left, anterior, inferior
_HEART_SEMI_MM = np.array([44.0, 40.0, 62.0])  # (across, across, along the long axis)


def _kidney_frame(side: float) -> tuple[NDArray, NDArray, NDArray]:
    """Centre, frame rows (hilum direction, antero-posterior, long axis) and semi-axes (mm)."""
    center = np.array([68.0, 55.0, -70.0]) if side > 0 else np.array([-68.0, 55.0, -82.0])
    # Upper pole medial and posterior; the hilum faces medially and 30 degrees anteriorly.
    long_axis = [-0.25 * side, 0.15, 1.0]
    hilum_direction = [-side * math.cos(math.radians(30)), -math.sin(math.radians(30)), 0.0]
    return center, _frame(long_axis, hilum_direction), np.array([25.0, 22.0, 55.0])


def _sternum_y(z: float) -> float:
    _, semi_y = _body_semi_axes(z)
    return -(float(semi_y) - _FAT_MM - _WALL_MM + 2.0)


_XIPHOID_TOP_Z = 25.0
_XIPHOID_END_Z = -3.0


def _template_landmarks() -> dict[str, NDArray[np.float64]]:
    """Landmarks of the mean phantom (LPS mm), each defined by the geometry that paints it."""
    vertebrae = {v.name: v for v in _vertebrae()}
    landmarks = {"carina": _CARINA.copy()}
    for name in ("T6", "T9", "T12", "L2"):
        landmarks[f"{name}_body"] = vertebrae[name].center
    for side, name in ((1.0, "left_kidney_hilum"), (-1.0, "right_kidney_hilum")):
        center, frame, semi = _kidney_frame(side)
        # On the medial surface, in the opening of the renal sinus.
        landmarks[name] = center + semi[0] * frame[0]
    landmarks["heart_apex"] = _HEART_CENTER + (_HEART_SEMI_MM[2] - 1.5) * _HEART_AXIS
    xiphoid_end = np.array([0.0, _sternum_y(_XIPHOID_END_Z) + 3.0, _XIPHOID_END_Z])
    xiphoid_top = np.array([0.0, _sternum_y(_XIPHOID_TOP_Z), _XIPHOID_TOP_Z])
    landmarks["xiphoid_tip"] = xiphoid_end + 2.5 * _unit(xiphoid_top - xiphoid_end)
    # The top of the right diaphragm dome caps the liver; 1.5 mm below it is liver.
    landmarks["liver_dome"] = _RIGHT_DOME - np.array([0.0, 0.0, 1.5])
    assert tuple(landmarks) == LANDMARK_NAMES, "landmark order drifted from LANDMARK_NAMES"
    return landmarks


@functools.lru_cache(maxsize=1)
def _template() -> tuple[NDArray[np.uint8], NDArray[np.float64], float]:
    """The mean phantom's label map ``(z, y, x)``, its origin (LPS mm) and spacing (mm).

    Painted once per process (about a second); later structures overwrite earlier ones.
    """
    painter = _Painter(_TEMPLATE_LOWER_MM, _TEMPLATE_UPPER_MM, _TEMPLATE_SPACING_MM)
    lower, upper = _TEMPLATE_LOWER_MM, _TEMPLATE_UPPER_MM
    _paint_body(painter, lower, upper)
    _paint_thorax(painter, lower, upper)
    _paint_abdomen(painter)
    _paint_spine(painter)
    _paint_ribs_and_sternum(painter)
    _paint_pelvis(painter)
    return painter.labels, painter.origin_mm.copy(), painter.spacing_mm


def _paint_body(painter: _Painter, lower: NDArray, upper: NDArray) -> None:
    painter.paint("fat", lambda x, y, z: _superellipse(x, y, z, 0.0), lower, upper)
    painter.paint("muscle", lambda x, y, z: _superellipse(x, y, z, _FAT_MM), lower, upper)
    painter.paint("abdomen", lambda x, y, z: _superellipse(x, y, z, _FAT_MM + _WALL_MM), lower, upper)


def _paint_thorax(painter: _Painter, lower: NDArray, upper: NDArray) -> None:
    # Lungs fill the cavity above the diaphragm; the mediastinum splits them.
    painter.paint("lung", lambda x, y, z: z > _diaphragm_z(x, y), lower, upper, only=["abdomen"])

    def mediastinum(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        half_width = 24.0 + 18.0 * np.clip((120.0 - z) / 80.0, 0.0, 1.0)  # widens towards the heart
        return (x / half_width) ** 2 + ((y + 22.0) / 62.0) ** 2 <= 1.0

    painter.paint("mediastinum", mediastinum, [-60, -90, -20], [60, 45, upper[2]], only=["lung"])
    # Oesophagus between trachea and spine.
    painter.capsule("muscle", [4.0, 12.0, 285.0], [14.0, 5.0, 0.0], 8.0, only=["lung", "mediastinum"])

    # Pulmonary vessel trees from each hilum (fixed seed: part of the template), lung only.
    rng = np.random.default_rng(7)
    for hilum, side in ((np.array([-42.0, 4.0, 98.0]), -1.0), (np.array([46.0, 8.0, 92.0]), 1.0)):
        for _ in range(20):
            direction = _unit([side * 1.0, rng.normal(0.0, 0.7), rng.normal(0.0, 1.0)])
            _paint_vessel_branch(painter, rng, hilum, direction, 5.0, 32.0, depth=5)

    _paint_heart(painter)

    # Great vessels: ascending aorta, arch, descending aorta beside the spine to the bifurcation.
    def spine_front(z: float, offset: float) -> float:
        return float(_spine_center_y(z)) - 18.0 - offset

    aorta = [
        [8.0, -32.0, 92.0],
        [2.0, -36.0, 130.0],
        [6.0, -18.0, 160.0],
        [18.0, 2.0, 150.0],
        [22.0, spine_front(120.0, 8.0), 120.0],
        [20.0, spine_front(40.0, 10.0), 40.0],
        [12.0, spine_front(-50.0, 12.0), -50.0],
        [4.0, spine_front(-135.0, 12.0), -135.0],
    ]
    radii = [14.0, 14.0, 13.0, 12.0, 11.5, 11.0, 10.0, 9.0]
    painter.polyline("aorta", aorta, radii)
    for side in (-1.0, 1.0):  # common iliac arteries
        painter.capsule("aorta", aorta[-1], [side * 40.0, spine_front(-135.0, 8.0), -215.0], 7.0, 6.0)
    venae_cavae = [
        [-24.0, spine_front(-200.0, 6.0), -200.0],
        [-24.0, spine_front(-60.0, 8.0), -60.0],
        [-20.0, -12.0, 30.0],
        [-15.0, -18.0, 45.0],
    ]
    painter.polyline("vena_cava", venae_cavae, [10.0, 11.0, 12.0, 12.0])
    painter.capsule("vena_cava", [-26.0, -30.0, 285.0], [-20.0, -26.0, 95.0], 9.0)  # superior vena cava

    # Airways last in the chest: air lumen with a soft-tissue wall.
    for start, end, r0, r1 in _airway_tree():
        painter.capsule("muscle", start, end, r0 + 1.8, r1 + 1.8, only=["lung", "mediastinum", "lung_vessel"])
    for start, end, r0, r1 in _airway_tree():
        painter.capsule("airway", start, end, r0, r1, only=["lung", "mediastinum", "lung_vessel", "muscle"])


def _paint_vessel_branch(
    painter: _Painter,
    rng: np.random.Generator,
    start: NDArray,
    direction: NDArray,
    radius_mm: float,
    length_mm: float,
    depth: int,
) -> None:
    end = start + length_mm * direction
    painter.capsule("lung_vessel", start, end, radius_mm, radius_mm * 0.8, only=["lung"])
    if depth == 0:
        return
    for _ in range(2):
        child = _unit(direction + rng.normal(0.0, 0.55, size=3))
        _paint_vessel_branch(painter, rng, end, child, radius_mm * 0.72, length_mm * 0.78, depth - 1)


def _paint_heart(painter: _Painter) -> None:
    frame = _frame(_HEART_AXIS, [1.0, 1.0, 0.0])  # rows: across, across, long axis
    painter.ellipsoid("myocardium", _HEART_CENTER, _HEART_SEMI_MM, frame)
    # Chambers: left ventricle towards the apex, right ventricle anterior-right, atria at the base.
    painter.ellipsoid(
        "blood_pool", _HEART_CENTER + 8.0 * frame[2] + 10.0 * frame[0], [20.0, 17.0, 36.0], frame
    )
    painter.ellipsoid(
        "blood_pool", _HEART_CENTER + 2.0 * frame[2] - 20.0 * frame[0], [13.0, 20.0, 34.0], frame
    )
    painter.ellipsoid("blood_pool", _HEART_CENTER - 38.0 * frame[2], [26.0, 24.0, 16.0], frame)


def _paint_abdomen(painter: _Painter) -> None:
    def below_diaphragm(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        return z <= _diaphragm_z(x, y)

    cavity = ["abdomen"]
    painter.ellipsoid("liver", [-55.0, -5.0, -15.0], [92.0, 85.0, 65.0], only=cavity, extra=below_diaphragm)
    painter.ellipsoid("liver", [12.0, -45.0, -8.0], [45.0, 30.0, 32.0], only=cavity, extra=below_diaphragm)
    spleen_frame = _frame([0.0, 0.3, 1.0], [1.0, -0.6, 0.0])
    painter.ellipsoid(
        "spleen", [82.0, 45.0, -25.0], [28.0, 48.0, 50.0], spleen_frame, only=cavity, extra=below_diaphragm
    )
    painter.ellipsoid("stomach", [45.0, -40.0, -22.0], [40.0, 30.0, 40.0], only=cavity, extra=below_diaphragm)
    # Supine patient: gas rises anteriorly (-y) in the stomach.
    painter.ellipsoid("bowel_gas", [45.0, -50.0, -10.0], [30.0, 16.0, 26.0], only=["stomach"])

    # Colon frame: ascending (right), transverse (anterior), descending (left), with a gas layer.
    colon = [
        [-95.0, 0.0, -200.0],
        [-95.0, -15.0, -70.0],
        [-60.0, -60.0, -60.0],
        [0.0, -70.0, -75.0],
        [60.0, -60.0, -60.0],
        [95.0, 5.0, -65.0],
        [92.0, 10.0, -200.0],
    ]
    painter.polyline("colon", colon, 17.0, only=cavity)
    anterior_mm = np.array([0.0, -8.0, 0.0])
    for start, end in itertools.pairwise(colon):
        painter.capsule(
            "bowel_gas", np.add(start, anterior_mm), np.add(end, anterior_mm), 6.0, only=["colon"]
        )

    # Psoas muscles: beside the lumbar spine, thickening caudally.
    for side in (-1.0, 1.0):
        for z in np.arange(-40.0, -250.0, -6.0):
            radius = 8.0 + 16.0 * min(1.0, (-40.0 - z) / 130.0)
            x = side * (24.0 + radius * 0.9)
            painter.capsule(
                "muscle",
                [x, float(_spine_center_y(z)) + 2.0, z],
                [x, float(_spine_center_y(z - 6.0)) + 2.0, z - 6.0],
                radius,
                only=["abdomen", "fat", "colon", "liver"],
            )

    # Kidneys in perirenal fat, renal vessels to aorta/IVC, fatty sinus opening medially.
    for side in (1.0, -1.0):
        center, frame, semi = _kidney_frame(side)
        painter.ellipsoid("fat", center, semi + 8.0, frame, only=["abdomen", "liver", "spleen", "colon"])
        hilum = center + semi[0] * frame[0]
        aorta_point = [4.0 + 8.0 * side, float(_spine_center_y(center[2])) - 30.0, center[2] + 8.0]
        cava_point = [-24.0 + 8.0 * side, float(_spine_center_y(center[2])) - 26.0, center[2] + 12.0]
        painter.capsule("aorta", hilum, aorta_point, 3.5, only=["fat", "abdomen"])
        painter.capsule(
            "vena_cava", hilum + np.array([0.0, -5.0, 0.0]), cava_point, 4.5, only=["fat", "abdomen"]
        )
        painter.ellipsoid("kidney", center, semi, frame)
        painter.ellipsoid(
            "renal_sinus",
            center + 14.0 * frame[0],
            [18.0, 8.0, 24.0],
            frame,
            only=["kidney", "fat", "aorta", "vena_cava"],
        )


def _paint_spine(painter: _Painter) -> None:
    vertebrae = _vertebrae()
    cortical_mm = 2.5
    for upper_vertebra, lower_vertebra in itertools.pairwise(vertebrae):
        top = lower_vertebra.z_mm + lower_vertebra.height_mm / 2
        bottom = upper_vertebra.z_mm - upper_vertebra.height_mm / 2
        semi_x = (upper_vertebra.semi_x_mm + lower_vertebra.semi_x_mm) / 2
        semi_y = (upper_vertebra.semi_y_mm + lower_vertebra.semi_y_mm) / 2
        center_y = float(_spine_center_y((top + bottom) / 2))
        _elliptic_cylinder(painter, "disc", center_y, semi_x - 1.0, semi_y - 1.0, top, bottom)
    for vertebra in vertebrae:
        z, half = vertebra.z_mm, vertebra.height_mm / 2
        center_y = float(_spine_center_y(z))
        sx, sy = vertebra.semi_x_mm, vertebra.semi_y_mm
        _elliptic_cylinder(painter, "bone_cortical", center_y, sx, sy, z - half, z + half)
        _elliptic_cylinder(
            painter,
            "bone_cancellous",
            center_y,
            sx - cortical_mm,
            sy - cortical_mm,
            z - half + cortical_mm,
            z + half - cortical_mm,
        )
        lumbar = vertebra.name.startswith("L")
        canal_y = center_y + sy + 10.0
        arch_half = half + 1.0

        def arch(x: NDArray, y: NDArray, zz: NDArray, canal_y: float = canal_y) -> NDArray:
            return (x**2 + (y - canal_y) ** 2 <= 16.5**2) & (y >= canal_y - 12.0)

        painter.paint(
            "bone_posterior", arch, [-17, canal_y - 17, z - arch_half], [17, canal_y + 17, z + arch_half]
        )
        spinous_drop = 8.0 if lumbar else 22.0
        painter.capsule(
            "bone_posterior",
            [0.0, canal_y + 12.0, z],
            [0.0, canal_y + 40.0, z - spinous_drop],
            6.0 if lumbar else 4.5,
        )
        for side in (-1.0, 1.0):
            tip = [side * (46.0 if lumbar else 36.0), canal_y + (-6.0 if lumbar else 5.0), z + 2.0]
            painter.capsule("bone_posterior", [side * 10.0, canal_y - 3.0, z + 2.0], tip, 5.0, 4.0)
    # One continuous canal (cord and CSF) through bodies' arches and the gaps between them.
    top, bottom = vertebrae[0].z_mm + 20.0, vertebrae[-1].z_mm - 20.0
    zs = np.linspace(top, bottom, 40)
    canal = [[0.0, float(_spine_center_y(z)) + 15.0 + 10.0, z] for z in zs]
    painter.polyline("spinal_canal", canal, 9.0)
    # Paraspinal (erector spinae) muscles behind the transverse processes.
    for side in (-1.0, 1.0):
        zs = np.linspace(_TEMPLATE_UPPER_MM[2], _TEMPLATE_LOWER_MM[2], 30)
        points = [[side * 34.0, float(_spine_center_y(z)) + 50.0, z] for z in zs]
        painter.polyline(
            "muscle",
            points,
            22.0,
            only=["lung", "abdomen", "fat", "mediastinum", "liver", "spleen", "colon", "lung_vessel"],
        )


def _elliptic_cylinder(
    painter: _Painter, label: str, center_y: float, semi_x: float, semi_y: float, z_low: float, z_high: float
) -> None:
    z_low, z_high = min(z_low, z_high), max(z_low, z_high)

    def inside(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        return (x / semi_x) ** 2 + ((y - center_y) / semi_y) ** 2 <= 1.0

    painter.paint(label, inside, [-semi_x, center_y - semi_y, z_low], [semi_x, center_y + semi_y, z_high])


def _paint_ribs_and_sternum(painter: _Painter) -> None:
    thoracic = [v for v in _vertebrae() if v.name.startswith("T")]
    # Ribs run in the chest wall, just outside the cavity, sloping down anteriorly.
    rib_shrink = _FAT_MM + _WALL_MM - 4.0
    for number, vertebra in enumerate(thoracic, start=1):
        z0 = vertebra.z_mm + 3.0
        canal_y = float(_spine_center_y(vertebra.z_mm)) + vertebra.semi_y_mm + 10.0
        if number <= 7:
            end_angle, drop = math.pi - 0.32, 70.0
        elif number <= 10:
            end_angle, drop = math.pi - 0.55 - 0.12 * (number - 8), 80.0
        else:
            end_angle, drop = 0.5 * math.pi + 0.3 * (12 - number), 40.0
        start_angle = 0.38
        for side in (-1.0, 1.0):
            angles = np.linspace(start_angle, end_angle, 24)
            fraction = (angles - start_angle) / (end_angle - start_angle)
            points = [[side * 34.0, canal_y + 6.0, z0]]
            points += [
                _superellipse_point(a, z0 - drop * f**1.3, rib_shrink, side)
                for a, f in zip(angles, fraction, strict=True)
            ]
            painter.polyline("rib", points, 4.5)
            end = points[-1]
            if number <= 10:  # costal cartilage towards the sternum / costal margin
                target_z = max(end[2] - 12.0, _XIPHOID_TOP_Z) if number <= 7 else end[2] - 5.0
                target = [side * (16.0 if number <= 7 else 45.0), _sternum_y(target_z) + 2.0, target_z]
                painter.capsule("cartilage", end, target, 4.0)

    def sternum(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        sternum_y = -(_body_semi_axes(z)[1] - _FAT_MM - _WALL_MM + 2.0)
        return (x / 16.0) ** 2 + ((y - sternum_y) / 7.0) ** 2 <= 1.0

    painter.paint("sternum", sternum, [-17, -110, _XIPHOID_TOP_Z], [17, -60, _TEMPLATE_UPPER_MM[2]])
    xiphoid_end = [0.0, _sternum_y(_XIPHOID_END_Z) + 3.0, _XIPHOID_END_Z]
    painter.capsule("sternum", [0.0, _sternum_y(_XIPHOID_TOP_Z), _XIPHOID_TOP_Z], xiphoid_end, 5.5, 4.5)


def _paint_pelvis(painter: _Painter) -> None:
    # Iliac wings: thick shells of ellipsoids, posterior-lateral, below the crest (~L4).
    for side in (-1.0, 1.0):
        center = np.array([side * 50.0, 30.0, -265.0])
        semi = np.array([85.0, 65.0, 130.0])

        def wing(
            x: NDArray,
            y: NDArray,
            z: NDArray,
            center: NDArray = center,
            semi: NDArray = semi,
            side: float = side,
        ) -> NDArray:
            rho = np.sqrt(
                ((x - center[0]) / semi[0]) ** 2
                + ((y - center[1]) / semi[1]) ** 2
                + ((z - center[2]) / semi[2]) ** 2
            )
            return (np.abs(rho - 1.0) < 0.045) & (side * x > 45.0) & (y > -25.0)

        painter.paint(
            "pelvis",
            wing,
            center - semi - 5,
            center + semi + 5,
            only=["abdomen", "muscle", "colon", "fat", "bowel_gas"],
        )
    # Sacrum below L5.
    l5 = _vertebrae()[-1]
    _elliptic_cylinder(
        painter,
        "bone_cancellous",
        float(_spine_center_y(l5.z_mm)) + 8.0,
        40.0,
        20.0,
        l5.z_mm - l5.height_mm / 2 - 8.0,
        _TEMPLATE_LOWER_MM[2],
    )


# ---------------------------------------------------------------------- deformation modes
@functools.lru_cache(maxsize=1)
def _mode_grid() -> tuple[NDArray[np.float32], NDArray[np.float64], float]:
    """All modes on a coarse template-frame grid: ``(k, 3, z, y, x)`` mm per unit coefficient.

    Each mode starts as Gaussian control values on its own control lattice, upsampled with
    cubic splines (so it is smooth), then the modes are orthogonalised (Gram-Schmidt over the
    field of view) and scaled to an RMS vector magnitude of ``MODE_STD_MM[i]`` there.
    Returns the fields, the grid origin (LPS mm) and spacing (mm).
    """
    spacing = _MODE_GRID_SPACING_MM
    lower = _TEMPLATE_LOWER_MM - 2 * spacing
    upper = _TEMPLATE_UPPER_MM + 2 * spacing
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
    fov_lower = _FOV_CENTER_LPS_MM - _FOV_MM / 2
    fov_upper = _FOV_CENTER_LPS_MM + _FOV_MM / 2
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


def _evaluate_field(field: NDArray, origin: NDArray, spacing: float, points_lps_mm: NDArray) -> NDArray:
    """Trilinear value of a ``(3, z, y, x)`` field at points ``(..., 3)`` (LPS mm) -> ``(..., 3)``."""
    shape = points_lps_mm.shape[:-1]
    index_xyz = (points_lps_mm.reshape(-1, 3) - origin) / spacing
    coords = index_xyz[:, ::-1].T
    values = [ndimage.map_coordinates(component, coords, order=1, mode="nearest") for component in field]
    return np.stack(values, axis=-1).reshape(*shape, 3)


def deformation_modes(
    config: PhantomConfig = PhantomConfig(),
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """The generator's true deformation modes, sampled on the mean phantom's grid.

    A subject with coefficients ``c`` (units of std-dev), unit scale and no pose has
    ``displacement_lps_mm == sum_i c[i] * modes[i]`` (up to linear upsampling, < 0.05 mm):
    the mean-phantom point of voxel ``p`` is ``p + sum_i c[i] * modes[i](p)``.

    Args:
        config: only ``spacing_mm`` (the grid, as :func:`mean_phantom`) and ``n_modes`` are used.

    Returns:
        ``(modes, std_mm)``: ``modes`` of shape ``(n_modes, z, y, x, 3)`` float32, LPS x, y, z
        components in mm per unit coefficient, mutually orthogonal over the field of view;
        ``std_mm`` of shape ``(n_modes,)``, each mode's RMS vector magnitude in mm over the
        field of view (so ``modes[i]`` is the displacement of a +1 std-dev subject).
    """
    fields, origin, spacing = _mode_grid()
    grid = _output_grid(config.spacing_mm)
    points = _grid_points(grid)
    modes = (
        np.stack(
            [
                _evaluate_field(fields[i], origin, spacing, points).astype(np.float32)
                for i in range(config.n_modes)
            ]
        )
        if config.n_modes
        else np.zeros((0, *grid.shape_zyx, 3), np.float32)
    )
    return modes, np.asarray(MODE_STD_MM[: config.n_modes], dtype=np.float64)


# ---------------------------------------------------------------------- subjects
def _output_grid(spacing_mm: float, direction: NDArray | None = None) -> Volume:
    """An empty volume for the scanner field of view at ``spacing_mm``, centred on the FOV."""
    size_xyz = np.maximum(1, np.round(_FOV_MM / spacing_mm)).astype(int)
    direction = np.eye(3) if direction is None else direction
    origin = _FOV_CENTER_LPS_MM - direction @ (spacing_mm * (size_xyz - 1) / 2.0)
    voxels = np.broadcast_to(np.zeros((), np.uint8), (size_xyz[2], size_xyz[1], size_xyz[0]))
    return Volume(voxels, (spacing_mm,) * 3, origin, direction)


def _grid_points(grid: Volume, step: int = 1) -> NDArray[np.float64]:
    """LPS mm of the voxel centres ``(z, y, x, 3)`` (every ``step``-th voxel, last one included)."""
    indices = [_strided_indices(n, step) for n in grid.size_xyz]
    kk, jj, ii = np.meshgrid(indices[2], indices[1], indices[0], indexing="ij")
    return grid.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(np.float64))


def _strided_indices(size: int, step: int) -> NDArray[np.int64]:
    indices = np.arange(0, size, step)
    return indices if indices[-1] == size - 1 else np.append(indices, size - 1)


def _linear_weights(size: int, nodes: NDArray) -> NDArray[np.float64]:
    """``(size, len(nodes))`` matrix interpolating values at integer ``nodes`` linearly onto 0..size-1."""
    position = np.interp(np.arange(size), nodes, np.arange(len(nodes)))
    lower = (
        np.minimum(np.floor(position).astype(int), len(nodes) - 2) if len(nodes) > 1 else np.zeros(size, int)
    )
    fraction = position - lower
    weights = np.zeros((size, len(nodes)))
    weights[np.arange(size), lower] += 1.0 - fraction
    if len(nodes) > 1:
        weights[np.arange(size), lower + 1] += fraction
    return weights


def _upsample(coarse: NDArray, grid: Volume, step: int) -> NDArray[np.float32]:
    """Separable linear upsampling of ``(cz, cy, cx, 3)`` values to the full grid ``(z, y, x, 3)``."""
    nx, ny, nz = grid.size_xyz
    wx = _linear_weights(nx, _strided_indices(nx, step))
    wy = _linear_weights(ny, _strided_indices(ny, step))
    wz = _linear_weights(nz, _strided_indices(nz, step))
    # Matrix products along one axis at a time: BLAS does the work, no full-size index arrays.
    values = np.einsum("xc,zycv->zyxv", wx, coarse, optimize=True)
    values = np.einsum("yc,zcxv->zyxv", wy, values, optimize=True)
    cz = values.shape[0]
    full = (wz @ values.reshape(cz, -1)).reshape(nz, ny, nx, 3)
    return full.astype(np.float32)


def _rotation_matrix(rotation_deg: NDArray) -> NDArray[np.float64]:
    """Rotation ``Rz @ Ry @ Rx`` for angles (degrees) about the LPS x, y, z axes."""
    ax, ay, az = np.radians(rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Mapping:
    """Subject -> mean-phantom mapping ``q = r + u(r)``, ``r = c + R^T (p - c - t) / s``."""

    rotation: NDArray[np.float64]
    translation_mm: NDArray[np.float64]
    scale: float
    field: NDArray[np.float32] | None  # (3, z, y, x) combined mode displacement, or None
    field_origin: NDArray[np.float64]
    field_spacing_mm: float

    def undo_pose(self, points: NDArray) -> NDArray:
        centered = points - _FOV_CENTER_LPS_MM - self.translation_mm
        return _FOV_CENTER_LPS_MM + (centered @ self.rotation) / self.scale  # row-vector form of R^T

    def apply_pose(self, points: NDArray) -> NDArray:
        return (
            _FOV_CENTER_LPS_MM
            + self.translation_mm
            + self.scale * ((points - _FOV_CENTER_LPS_MM) @ self.rotation.T)
        )

    def mode_displacement(self, points: NDArray) -> NDArray:
        if self.field is None:
            return np.zeros_like(points)
        return _evaluate_field(self.field, self.field_origin, self.field_spacing_mm, points)

    def to_mean(self, points: NDArray) -> NDArray:
        undone = self.undo_pose(points)
        return undone + self.mode_displacement(undone)

    def to_subject(self, mean_points: NDArray, iterations: int = 100) -> NDArray:
        """Invert :meth:`to_mean` by fixed-point iteration ``r <- q - u(r)`` (u is a contraction)."""
        undone = mean_points.copy()
        for _ in range(iterations):
            updated = mean_points - self.mode_displacement(undone)
            converged = np.max(np.abs(updated - undone)) < 1e-6
            undone = updated
            if converged:
                break
        return self.apply_pose(undone)


def _random_direction(rng: np.random.Generator) -> NDArray[np.float64]:
    """A rotation by 10..25 degrees about a random axis (Rodrigues)."""
    axis = _unit(rng.standard_normal(3))
    angle = math.radians(rng.uniform(10.0, 25.0))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _smooth_texture(
    rng: np.random.Generator, shape_zyx: tuple[int, ...], spacing_mm: float
) -> NDArray[np.float32]:
    """Unit-std random field with ~30 mm correlation length, made on a coarse grid and upsampled."""
    coarse_step_mm = 12.0
    coarse_shape = tuple(max(2, math.ceil(n * spacing_mm / coarse_step_mm) + 1) for n in shape_zyx)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma=1.0, mode="wrap")
    coarse /= max(float(coarse.std()), 1e-6)
    zoom = [n / c for n, c in zip(shape_zyx, coarse_shape, strict=True)]
    texture = ndimage.zoom(coarse.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    return texture[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]


def _render(
    grid: Volume,
    mapping: _Mapping,
    hu_lookup: NDArray[np.float32],
    texture_rng: np.random.Generator | None,
    texture_hu: float,
    noise_rng: np.random.Generator | None,
    noise_hu: float,
) -> tuple[NDArray[np.int16], NDArray[np.uint8], NDArray[np.float32]]:
    """HU voxels, labels and displacement ``(z, y, x, 3)`` of ``grid`` under ``mapping``."""
    template, template_origin, template_spacing = _template()
    # The mapping is smooth (affine + splines on >= 70 mm lattices): computing it on every
    # 4th voxel and interpolating linearly is exact to a few hundredths of a mm.
    step = 4
    coarse_points = _grid_points(grid, step)
    coarse_displacement = mapping.to_mean(coarse_points) - coarse_points
    displacement = _upsample(coarse_displacement, grid, step)

    mean_points = _grid_points(grid) + displacement  # (z, y, x, 3) LPS mm in the template
    template_index = (mean_points - template_origin) / template_spacing  # x, y, z
    coords = np.moveaxis(template_index[..., ::-1], -1, 0)
    del mean_points, template_index
    # Edge replication: beyond the template the anatomy continues (z) or is air (x, y).
    labels = ndimage.map_coordinates(template, coords, order=0, mode="nearest", output=np.uint8)
    del coords

    hu = hu_lookup[labels]
    if texture_rng is not None and texture_hu > 0:
        hu += np.float32(texture_hu) * _smooth_texture(
            texture_rng, labels.shape, float(grid.spacing_xyz_mm[0])
        )
    # Partial-volume edges: the scanner's point-spread function is about a voxel wide.
    hu = ndimage.gaussian_filter(hu, sigma=0.6, mode="nearest")
    if noise_rng is not None and noise_hu > 0:
        hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    voxels = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return voxels, labels, displacement


def _split_landmarks(
    grid: Volume, landmarks: dict[str, NDArray]
) -> tuple[dict[str, NDArray], dict[str, NDArray]]:
    inside, outside = {}, {}
    for name, point in landmarks.items():
        (inside if bool(grid.contains(point)) else outside)[name] = point
    return inside, outside


def _hu_lookup(jitter: NDArray | None) -> NDArray[np.float32]:
    lookup = np.full(256, HU["air"], dtype=np.float32)
    lookup[: len(_TISSUES)] = [hu for _, hu in _TISSUES]
    if jitter is not None:
        lookup[1 : len(_TISSUES)] += jitter[1:].astype(np.float32)  # air stays -1000
    return lookup


def generate_phantom(seed: int, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """A synthetic CT subject, fully determined by ``seed`` and ``config``.

    Randomness is split into independent streams (shape, pose, intensities, field of view,
    grid direction, noise), so e.g. switching ``partial_fov`` on keeps the same anatomy.

    Args:
        seed: any non-negative integer.
        config: how subjects vary and are sampled (see :class:`PhantomConfig`).

    Returns:
        A :class:`Phantom`; its landmarks are the template's, carried through the exact
        inverse mapping (round trip checked to < 0.1 mm).
    """
    if int(seed) < 0:
        raise ValueError(f"generate_phantom: seed must be >= 0, got {seed}")
    shape_rng, pose_rng, hu_rng, fov_rng, grid_rng, noise_rng, texture_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(7)
    )
    # Draw all modes, then keep n_modes: subjects share coefficients across n_modes settings.
    all_coefficients = np.clip(
        shape_rng.standard_normal(len(MODE_STD_MM)), -_COEFFICIENT_CLIP, _COEFFICIENT_CLIP
    )
    coefficients = all_coefficients[: config.n_modes]
    scale = 1.0 + config.size_std * float(np.clip(pose_rng.standard_normal(), -3.0, 3.0))
    rotation_deg = pose_rng.uniform(-1.0, 1.0, 3) * config.rotation_deg
    translation_mm = pose_rng.uniform(-1.0, 1.0, 3) * config.translation_mm

    fields, field_origin, field_spacing = _mode_grid()
    weights = coefficients * config.mode_scale
    field = (
        np.tensordot(weights, fields[: config.n_modes], axes=1).astype(np.float32)
        if np.any(weights)
        else None
    )
    mapping = _Mapping(
        _rotation_matrix(rotation_deg), translation_mm, scale, field, field_origin, field_spacing
    )

    direction = _random_direction(grid_rng) if config.oblique else None
    grid = _output_grid(config.spacing_mm, direction)
    if config.partial_fov:
        grid = _crop_z(grid, fov_rng)

    jitter = hu_rng.uniform(-1.0, 1.0, len(_TISSUES)) * config.hu_jitter
    voxels, labels, displacement = _render(
        grid, mapping, _hu_lookup(jitter), texture_rng, config.texture_hu, noise_rng, config.noise_hu
    )

    template_landmarks = _template_landmarks()
    mean_points = np.stack(list(template_landmarks.values()))
    subject_points = mapping.to_subject(mean_points)
    round_trip_mm = float(np.max(np.linalg.norm(mapping.to_mean(subject_points) - mean_points, axis=1)))
    if round_trip_mm >= _ROUND_TRIP_TOLERANCE_MM:
        raise RuntimeError(
            f"phantom seed {seed}: landmark inversion did not converge ({round_trip_mm:.3f} mm)"
        )
    inside, outside = _split_landmarks(grid, dict(zip(template_landmarks, subject_points, strict=True)))

    name = f"phantom(seed={int(seed)})"
    return Phantom(
        volume=grid.with_voxels(voxels, name=name),
        labels=grid.with_voxels(labels, name=f"{name} labels"),
        landmarks=inside,
        landmarks_outside=outside,
        displacement_lps_mm=displacement,
        mode_coefficients=coefficients.astype(np.float64),
        scale=float(scale),
        rotation_deg=rotation_deg,
        translation_mm=translation_mm,
        seed=int(seed),
    )


def _crop_z(grid: Volume, rng: np.random.Generator) -> Volume:
    """Keep a random 35-70 % slab of the grid along its third index axis."""
    nx, ny, nz = grid.size_xyz
    keep = max(1, round(nz * rng.uniform(0.35, 0.7)))
    start = int(rng.integers(0, nz - keep + 1))
    origin = grid.index_to_lps([0.0, 0.0, float(start)])
    voxels = np.broadcast_to(np.zeros((), np.uint8), (keep, ny, nx))
    return Volume(voxels, grid.spacing_xyz_mm, origin, grid.direction)


def mean_phantom(config: PhantomConfig = PhantomConfig()) -> Phantom:
    """The template: zero modes, scale 1, no pose, nominal HU, no texture and no noise.

    Sampled on the full, axis-aligned field of view at ``config.spacing_mm`` (the other
    fields of ``config`` are ignored). Its displacement field is zero.
    """
    grid = _output_grid(config.spacing_mm)
    mapping = _Mapping(np.eye(3), np.zeros(3), 1.0, None, np.zeros(3), 1.0)
    voxels, labels, displacement = _render(grid, mapping, _hu_lookup(None), None, 0.0, None, 0.0)
    inside, outside = _split_landmarks(grid, _template_landmarks())
    return Phantom(
        volume=grid.with_voxels(voxels, name="mean phantom"),
        labels=grid.with_voxels(labels, name="mean phantom labels"),
        landmarks=inside,
        landmarks_outside=outside,
        displacement_lps_mm=displacement,
        mode_coefficients=np.zeros(config.n_modes),
        scale=1.0,
        rotation_deg=np.zeros(3),
        translation_mm=np.zeros(3),
        seed=-1,
    )


# ---------------------------------------------------------------------- CLI
class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line on stderr, exit code 2 (ARCHITECTURE.md), instead of argparse's usage block.
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="python -m envs.phantom",
        description="Write synthetic CT torso phantoms (NIfTI), label maps, landmarks (.fcsv), manifest.csv.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, required=True, help="number of phantoms")
    parser.add_argument("--seed", type=int, default=0, help="case i uses phantom seed SEED + i")
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    parser.add_argument(
        "--partial-fov", action="store_true", help="random z crops (landmarks may be outside)"
    )
    parser.add_argument("--oblique", action="store_true", help="random oblique grid directions")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n: expected at least 1 phantom, got {args.n}")
    if args.seed < 0:
        parser.error(f"--seed: expected >= 0, got {args.seed}")
    for name in ("val_fraction", "test_fraction"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:
            parser.error(f"--{name.replace('_', '-')}: expected a fraction in [0, 1), got {value}")
    if args.val_fraction + args.test_fraction >= 1.0:
        parser.error("--val-fraction + --test-fraction: expected a sum below 1 (train needs cases)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder; pass a folder path")
    try:
        args.config = PhantomConfig(
            spacing_mm=args.spacing, partial_fov=args.partial_fov, oblique=args.oblique
        )
    except ValueError as error:
        parser.error(f"--spacing: {error}")
    return args


def _splits(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split names for cases 0..n-1: a seeded shuffle, then test, val, the rest train."""
    n_test = round(n * test_fraction)
    n_val = min(round(n * val_fraction), n - n_test)
    order = np.random.default_rng(seed).permutation(n)
    splits = ["train"] * n
    for rank, case in enumerate(order):
        if rank < n_test:
            splits[case] = "test"
        elif rank < n_test + n_val:
            splits[case] = "val"
    return splits


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    # Same folder, so the rename is atomic: readers never see a half-written file.
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


# Seed offsets keep splits disjoint and stable when the number of cases changes
# (the same offsets as envs.data.Dataset.phantoms).
SPLIT_SEED_OFFSETS = {"train": 0, "val": 100_000, "test": 200_000}


def write_phantom_dataset(
    out: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    *,
    seed: int = 0,
    config: PhantomConfig = PhantomConfig(),
) -> Path:
    """Write phantoms with fixed train/val/test sizes and disjoint seeds; returns the manifest path.

    Case ``phantom_<split>_<i>`` uses phantom seed ``seed + offset(split) + i``, so adding
    training cases never changes the validation or test subjects.
    """
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        if count < 0:
            raise ValueError(f"write_phantom_dataset: n_{split} must be >= 0, got {count}")
    cases = [
        (f"phantom_{split}_{index:03d}", seed + SPLIT_SEED_OFFSETS[split] + index, split)
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test))
        for index in range(count)
    ]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return _write_cases(out, cases, config)


def _write_cases(out: Path, cases: list[tuple[str, int, str]], config: PhantomConfig) -> Path:
    """Write (case_id, seed, split) phantoms as NIfTI + .fcsv, then the manifest (last)."""
    from tqdm import tqdm

    from envs import io

    rows = []
    for case_id, phantom_seed, split in tqdm(cases, desc="phantoms", unit="case"):
        phantom = generate_phantom(phantom_seed, config)
        image, label_map, landmarks = f"{case_id}.nii.gz", f"{case_id}_labels.nii.gz", f"{case_id}.fcsv"
        # envs.io writes each file atomically (temporary file, then rename).
        io.write_volume(phantom.volume, out / image)
        io.write_volume(phantom.labels, out / label_map)
        if phantom.landmarks:
            io.write_landmarks(phantom.landmarks, out / landmarks)
        else:  # a partial field of view can miss every landmark: the manifest leaves it empty
            landmarks = ""
        rows.append(
            {"case_id": case_id, "image": image, "landmarks": landmarks, "split": split, "modality": "ct"}
        )

    def write_manifest(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["case_id", "image", "landmarks", "split", "modality"])
            writer.writeheader()
            writer.writerows(rows)

    manifest = out / "manifest.csv"
    _write_atomically(manifest, write_manifest)  # last: its presence means a complete set
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m envs.phantom --out DIR --n N --seed S [...]``; returns the exit code."""
    args = _parse_args(argv)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"python -m envs.phantom: error: --out {out}: cannot create folder ({error})", file=sys.stderr)
        return 2
    splits = _splits(args.n, args.val_fraction, args.test_fraction, args.seed)
    cases = [(f"phantom_{index:03d}", args.seed + index, splits[index]) for index in range(args.n)]
    _write_cases(out, cases, args.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
