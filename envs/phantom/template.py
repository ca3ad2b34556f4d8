"""The template (mean phantom): a label map painted once per process from the anatomy's shapes.

Voxels ``(z, y, x)`` on an axis-aligned LPS grid from ``TEMPLATE_LOWER_MM`` to
``TEMPLATE_UPPER_MM``; every subject is this label map seen through a known mapping.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from numpy.typing import NDArray

from envs.phantom.anatomy import (
    FAT_MM,
    HEART_AXIS,
    HEART_CENTER,
    HEART_SEMI_MM,
    TEMPLATE_LOWER_MM,
    TEMPLATE_UPPER_MM,
    WALL_MM,
    XIPHOID_END_Z,
    XIPHOID_TOP_Z,
    airway_tree,
    body_semi_axes,
    diaphragm_z,
    kidney_frame,
    orthonormal_frame,
    spine_center_y,
    spine_vertebrae,
    sternum_front_y,
    superellipse,
    superellipse_point,
    unit_vector,
)
from envs.phantom.painter import Painter

_TEMPLATE_SPACING_MM = 1.5


@functools.lru_cache(maxsize=1)
def painted_template() -> tuple[NDArray[np.uint8], NDArray[np.float64], float]:
    """The mean phantom's label map ``(z, y, x)``, its origin (LPS mm) and spacing (mm).

    Painted once per process (cached); later structures overwrite earlier ones.
    """
    painter = Painter(TEMPLATE_LOWER_MM, TEMPLATE_UPPER_MM, _TEMPLATE_SPACING_MM)
    lower, upper = TEMPLATE_LOWER_MM, TEMPLATE_UPPER_MM
    _paint_body(painter, lower, upper)
    _paint_thorax(painter, lower, upper)
    _paint_abdomen(painter)
    _paint_spine(painter)
    _paint_ribs_and_sternum(painter)
    _paint_pelvis(painter)
    return painter.labels, painter.origin_mm.copy(), painter.spacing_mm


def _paint_body(painter: Painter, lower: NDArray, upper: NDArray) -> None:
    painter.paint("fat", lambda x, y, z: superellipse(x, y, z, 0.0), lower, upper)
    painter.paint("muscle", lambda x, y, z: superellipse(x, y, z, FAT_MM), lower, upper)
    painter.paint("abdomen", lambda x, y, z: superellipse(x, y, z, FAT_MM + WALL_MM), lower, upper)


def _paint_thorax(painter: Painter, lower: NDArray, upper: NDArray) -> None:
    # Lungs fill the cavity above the diaphragm; the mediastinum splits them.
    painter.paint("lung", lambda x, y, z: z > diaphragm_z(x, y), lower, upper, only=["abdomen"])

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
            direction = unit_vector([side * 1.0, rng.normal(0.0, 0.7), rng.normal(0.0, 1.0)])
            _paint_vessel_branch(painter, rng, hilum, direction, 5.0, 32.0, depth=5)

    _paint_heart(painter)

    # Great vessels: ascending aorta, arch, descending aorta beside the spine to the bifurcation.
    def spine_front(z: float, offset: float) -> float:
        return float(spine_center_y(z)) - 18.0 - offset

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
    for start, end, r0, r1 in airway_tree():
        painter.capsule("muscle", start, end, r0 + 1.8, r1 + 1.8, only=["lung", "mediastinum", "lung_vessel"])
    for start, end, r0, r1 in airway_tree():
        painter.capsule("airway", start, end, r0, r1, only=["lung", "mediastinum", "lung_vessel", "muscle"])


def _paint_vessel_branch(
    painter: Painter,
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
        child = unit_vector(direction + rng.normal(0.0, 0.55, size=3))
        _paint_vessel_branch(painter, rng, end, child, radius_mm * 0.72, length_mm * 0.78, depth - 1)


def _paint_heart(painter: Painter) -> None:
    frame = orthonormal_frame(HEART_AXIS, [1.0, 1.0, 0.0])  # rows: across, across, long axis
    painter.ellipsoid("myocardium", HEART_CENTER, HEART_SEMI_MM, frame)
    # Chambers: left ventricle towards the apex, right ventricle anterior-right, atria at the base.
    painter.ellipsoid(
        "blood_pool", HEART_CENTER + 8.0 * frame[2] + 10.0 * frame[0], [20.0, 17.0, 36.0], frame
    )
    painter.ellipsoid(
        "blood_pool", HEART_CENTER + 2.0 * frame[2] - 20.0 * frame[0], [13.0, 20.0, 34.0], frame
    )
    painter.ellipsoid("blood_pool", HEART_CENTER - 38.0 * frame[2], [26.0, 24.0, 16.0], frame)


def _paint_abdomen(painter: Painter) -> None:
    def below_diaphragm(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        return z <= diaphragm_z(x, y)

    cavity = ["abdomen"]
    painter.ellipsoid("liver", [-55.0, -5.0, -15.0], [92.0, 85.0, 65.0], only=cavity, extra=below_diaphragm)
    painter.ellipsoid("liver", [12.0, -45.0, -8.0], [45.0, 30.0, 32.0], only=cavity, extra=below_diaphragm)
    spleen_frame = orthonormal_frame([0.0, 0.3, 1.0], [1.0, -0.6, 0.0])
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
                [x, float(spine_center_y(z)) + 2.0, z],
                [x, float(spine_center_y(z - 6.0)) + 2.0, z - 6.0],
                radius,
                only=["abdomen", "fat", "colon", "liver"],
            )

    # Kidneys in perirenal fat, renal vessels to aorta/IVC, fatty sinus opening medially.
    for side in (1.0, -1.0):
        center, frame, semi = kidney_frame(side)
        painter.ellipsoid("fat", center, semi + 8.0, frame, only=["abdomen", "liver", "spleen", "colon"])
        hilum = center + semi[0] * frame[0]
        aorta_point = [4.0 + 8.0 * side, float(spine_center_y(center[2])) - 30.0, center[2] + 8.0]
        cava_point = [-24.0 + 8.0 * side, float(spine_center_y(center[2])) - 26.0, center[2] + 12.0]
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


def _paint_spine(painter: Painter) -> None:
    vertebrae = spine_vertebrae()
    cortical_mm = 2.5
    for upper_vertebra, lower_vertebra in itertools.pairwise(vertebrae):
        top = lower_vertebra.z_mm + lower_vertebra.height_mm / 2
        bottom = upper_vertebra.z_mm - upper_vertebra.height_mm / 2
        semi_x = (upper_vertebra.semi_x_mm + lower_vertebra.semi_x_mm) / 2
        semi_y = (upper_vertebra.semi_y_mm + lower_vertebra.semi_y_mm) / 2
        center_y = float(spine_center_y((top + bottom) / 2))
        _elliptic_cylinder(painter, "disc", center_y, semi_x - 1.0, semi_y - 1.0, top, bottom)
    for vertebra in vertebrae:
        z, half = vertebra.z_mm, vertebra.height_mm / 2
        center_y = float(spine_center_y(z))
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
    canal = [[0.0, float(spine_center_y(z)) + 15.0 + 10.0, z] for z in zs]
    painter.polyline("spinal_canal", canal, 9.0)
    # Paraspinal (erector spinae) muscles behind the transverse processes.
    for side in (-1.0, 1.0):
        zs = np.linspace(TEMPLATE_UPPER_MM[2], TEMPLATE_LOWER_MM[2], 30)
        points = [[side * 34.0, float(spine_center_y(z)) + 50.0, z] for z in zs]
        painter.polyline(
            "muscle",
            points,
            22.0,
            only=["lung", "abdomen", "fat", "mediastinum", "liver", "spleen", "colon", "lung_vessel"],
        )


def _elliptic_cylinder(
    painter: Painter, label: str, center_y: float, semi_x: float, semi_y: float, z_low: float, z_high: float
) -> None:
    z_low, z_high = min(z_low, z_high), max(z_low, z_high)

    def inside(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        return (x / semi_x) ** 2 + ((y - center_y) / semi_y) ** 2 <= 1.0

    painter.paint(label, inside, [-semi_x, center_y - semi_y, z_low], [semi_x, center_y + semi_y, z_high])


def _paint_ribs_and_sternum(painter: Painter) -> None:
    thoracic = [v for v in spine_vertebrae() if v.name.startswith("T")]
    # Ribs run in the chest wall, just outside the cavity, sloping down anteriorly.
    rib_shrink = FAT_MM + WALL_MM - 4.0
    for number, vertebra in enumerate(thoracic, start=1):
        z0 = vertebra.z_mm + 3.0
        canal_y = float(spine_center_y(vertebra.z_mm)) + vertebra.semi_y_mm + 10.0
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
                superellipse_point(a, z0 - drop * f**1.3, rib_shrink, side)
                for a, f in zip(angles, fraction, strict=True)
            ]
            painter.polyline("rib", points, 4.5)
            end = points[-1]
            if number <= 10:  # costal cartilage towards the sternum / costal margin
                target_z = max(end[2] - 12.0, XIPHOID_TOP_Z) if number <= 7 else end[2] - 5.0
                target = [side * (16.0 if number <= 7 else 45.0), sternum_front_y(target_z) + 2.0, target_z]
                painter.capsule("cartilage", end, target, 4.0)

    def sternum(x: NDArray, y: NDArray, z: NDArray) -> NDArray:
        sternum_y = -(body_semi_axes(z)[1] - FAT_MM - WALL_MM + 2.0)
        return (x / 16.0) ** 2 + ((y - sternum_y) / 7.0) ** 2 <= 1.0

    painter.paint("sternum", sternum, [-17, -110, XIPHOID_TOP_Z], [17, -60, TEMPLATE_UPPER_MM[2]])
    xiphoid_end = [0.0, sternum_front_y(XIPHOID_END_Z) + 3.0, XIPHOID_END_Z]
    painter.capsule("sternum", [0.0, sternum_front_y(XIPHOID_TOP_Z), XIPHOID_TOP_Z], xiphoid_end, 5.5, 4.5)


def _paint_pelvis(painter: Painter) -> None:
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
    l5 = spine_vertebrae()[-1]
    _elliptic_cylinder(
        painter,
        "bone_cancellous",
        float(spine_center_y(l5.z_mm)) + 8.0,
        40.0,
        20.0,
        l5.z_mm - l5.height_mm / 2 - 8.0,
        TEMPLATE_LOWER_MM[2],
    )
