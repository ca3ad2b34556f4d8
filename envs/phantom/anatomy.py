"""The phantom's anatomy in the template (mean-phantom) frame.

Tissues (label values and nominal HU), the scanner field of view and template extent, the
shapes that place the organs (body outline, spine, diaphragm, airways, heart, kidneys,
sternum) and the landmarks those shapes define. All geometry is LPS millimetres
(+x patient left, +y posterior, +z superior); points and vectors are ``(x, y, z)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

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

TISSUES: tuple[tuple[str, float], ...] = (
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
LABELS: dict[str, int] = {name: value for value, (name, _) in enumerate(TISSUES)}
HU: dict[str, float] = dict(TISSUES)

# Scanner field of view (x, y, z) in mm and its centre; the template grid is larger so that
# posed and deformed subjects still sample real anatomy near the borders.
FOV_MM = np.array([320.0, 240.0, 300.0])
FOV_CENTER_LPS_MM = np.array([0.0, 0.0, 10.0])
TEMPLATE_LOWER_MM = np.array([-190.0, -150.0, -260.0])
TEMPLATE_UPPER_MM = np.array([190.0, 150.0, 280.0])


def unit_vector(vector: ArrayLike) -> NDArray[np.float64]:
    """``vector`` scaled to length 1."""
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def orthonormal_frame(long_axis: ArrayLike, toward: ArrayLike) -> NDArray[np.float64]:
    """Orthonormal rows (u, v, w): w along ``long_axis``, u as close to ``toward`` as possible."""
    w = unit_vector(long_axis)
    u = np.asarray(toward, dtype=np.float64)
    u = unit_vector(u - (u @ w) * w)
    return np.stack([u, np.cross(w, u), w])


# Body outline: superellipse cross-section whose semi-axes grow slightly towards the pelvis.
_SUPERELLIPSE_POWER = 2.4
FAT_MM = 12.0
WALL_MM = 10.0


def body_semi_axes(z: NDArray | float) -> tuple[NDArray, NDArray]:
    """Body semi-axes (x, y) in mm at height ``z`` (mm)."""
    z = np.asarray(z, dtype=np.float64)
    return 142.0 + 8.0 * np.tanh(-z / 100.0), 98.0 + 6.0 * np.tanh(-z / 100.0)


def superellipse(x: NDArray, y: NDArray, z: NDArray, shrink_mm: float) -> NDArray:
    semi_x, semi_y = body_semi_axes(z)
    return (np.abs(x) / (semi_x - shrink_mm)) ** _SUPERELLIPSE_POWER + (
        np.abs(y) / (semi_y - shrink_mm)
    ) ** _SUPERELLIPSE_POWER <= 1.0


def superellipse_point(angle_rad: float, z: float, shrink_mm: float, side: float) -> NDArray[np.float64]:
    """Point of the cross-section outline at ``angle`` from posterior (0) to anterior (pi)."""
    semi_x, semi_y = body_semi_axes(z)
    exponent = 2.0 / _SUPERELLIPSE_POWER
    s, c = math.sin(angle_rad), math.cos(angle_rad)
    x = (float(semi_x) - shrink_mm) * abs(s) ** exponent
    y = (float(semi_y) - shrink_mm) * math.copysign(abs(c) ** exponent, c)
    return np.array([side * x, y, z])


def spine_center_y(z: NDArray | float) -> NDArray:
    """y (mm) of the vertebral-body axis: thoracic kyphosis bulges back, lumbar lordosis forward."""
    z = np.asarray(z, dtype=np.float64)
    return 30.0 + 10.0 * np.exp(-(((z - 60.0) / 90.0) ** 2)) - 8.0 * np.exp(-(((z + 120.0) / 50.0) ** 2))


def diaphragm_z(x: NDArray, y: NDArray) -> NDArray:
    """Height (mm) of the diaphragm: two paraboloid domes, the right one higher (liver)."""
    right = _RIGHT_DOME[2] - ((x - _RIGHT_DOME[0]) ** 2 + (y - _RIGHT_DOME[1]) ** 2) / (2 * _DOME_RADIUS_MM)
    left = _LEFT_DOME[2] - ((x - _LEFT_DOME[0]) ** 2 + (y - _LEFT_DOME[1]) ** 2) / (2 * _DOME_RADIUS_MM)
    return np.maximum(right, left)


_RIGHT_DOME = np.array([-60.0, -5.0, 35.0])
_LEFT_DOME = np.array([55.0, 0.0, 22.0])
_DOME_RADIUS_MM = 70.0


@dataclass(frozen=True)
class Vertebra:
    name: str
    z_mm: float  # centre of the body
    height_mm: float
    semi_x_mm: float
    semi_y_mm: float

    @property
    def center(self) -> NDArray[np.float64]:
        return np.array([0.0, float(spine_center_y(self.z_mm)), self.z_mm])


def spine_vertebrae() -> list[Vertebra]:
    """C5 .. L5 from top to bottom, with heights and body sizes growing caudally."""
    names = [f"C{i}" for i in (5, 6, 7)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    vertebrae = []
    z = 264.0  # C5 centre; thoracic pitch 21 mm, lumbar 28 mm, scaled to fit T3..L4 in the FOV
    for index, name in enumerate(names):
        lumbar = name.startswith("L")
        height = 22.0 if lumbar else (14.0 if name.startswith("C") else 16.0)
        grow = index / (len(names) - 1)
        vertebrae.append(Vertebra(name, z, height, 15.0 + 10.0 * grow, 12.0 + 6.0 * grow))
        if index + 1 < len(names):
            next_lumbar = names[index + 1].startswith("L")
            z -= 28.0 if next_lumbar and lumbar else (25.0 if next_lumbar else 21.0)
    return vertebrae


def airway_tree() -> list[tuple[NDArray, NDArray, float, float]]:
    """Segments (start, end, radius_start, radius_end) of the trachea and bronchi (lumen)."""
    carina = CARINA
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


CARINA = np.array([0.0, -6.0, 125.0])

HEART_CENTER = np.array([22.0, -36.0, 62.0])
HEART_AXIS = unit_vector([0.6, -0.45, -0.66])  # base -> apex: left, anterior, inferior
HEART_SEMI_MM = np.array([44.0, 40.0, 62.0])  # (across, across, along the long axis)


def kidney_frame(side: float) -> tuple[NDArray, NDArray, NDArray]:
    """Centre, frame rows (hilum direction, antero-posterior, long axis) and semi-axes (mm)."""
    center = np.array([68.0, 55.0, -70.0]) if side > 0 else np.array([-68.0, 55.0, -82.0])
    # Upper pole medial and posterior; the hilum faces medially and 30 degrees anteriorly.
    long_axis = [-0.25 * side, 0.15, 1.0]
    hilum_direction = [-side * math.cos(math.radians(30)), -math.sin(math.radians(30)), 0.0]
    return center, orthonormal_frame(long_axis, hilum_direction), np.array([25.0, 22.0, 55.0])


def sternum_front_y(z: float) -> float:
    _, semi_y = body_semi_axes(z)
    return -(float(semi_y) - FAT_MM - WALL_MM + 2.0)


XIPHOID_TOP_Z = 25.0
XIPHOID_END_Z = -3.0


def template_landmarks() -> dict[str, NDArray[np.float64]]:
    """Landmarks of the mean phantom (LPS mm), each defined by the geometry that paints it."""
    vertebrae = {v.name: v for v in spine_vertebrae()}
    landmarks = {"carina": CARINA.copy()}
    for name in ("T6", "T9", "T12", "L2"):
        landmarks[f"{name}_body"] = vertebrae[name].center
    for side, name in ((1.0, "left_kidney_hilum"), (-1.0, "right_kidney_hilum")):
        center, frame, semi = kidney_frame(side)
        # On the medial surface, in the opening of the renal sinus.
        landmarks[name] = center + semi[0] * frame[0]
    landmarks["heart_apex"] = HEART_CENTER + (HEART_SEMI_MM[2] - 1.5) * HEART_AXIS
    xiphoid_end = np.array([0.0, sternum_front_y(XIPHOID_END_Z) + 3.0, XIPHOID_END_Z])
    xiphoid_top = np.array([0.0, sternum_front_y(XIPHOID_TOP_Z), XIPHOID_TOP_Z])
    landmarks["xiphoid_tip"] = xiphoid_end + 2.5 * unit_vector(xiphoid_top - xiphoid_end)
    # The top of the right diaphragm dome caps the liver; 1.5 mm below it is liver.
    landmarks["liver_dome"] = _RIGHT_DOME - np.array([0.0, 0.0, 1.5])
    assert tuple(landmarks) == LANDMARK_NAMES, "landmark order drifted from LANDMARK_NAMES"
    return landmarks
