"""Rigid geometry in physical LPS millimetres.

Rigid parameters are ``(tx, ty, tz mm, rx, ry, rz deg)`` of ``T(p) = R (p - c) + c + t`` with
``R = Rz @ Ry @ Rx`` about a centre ``c``: SimpleITK's ``Euler3DTransform`` with ``ComputeZYX``
on. ``T`` maps a point of the FIXED volume to the corresponding point of the MOVING volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

__all__ = [
    "apply_rigid",
    "euler_matrix",
    "euler_transform",
    "params_from_matrix",
    "params_from_transform",
    "rigid_fit",
]


def euler_matrix(angles_deg: NDArray | Sequence[float]) -> NDArray[np.float64]:
    """``Rz @ Ry @ Rx`` for angles (degrees) about the LPS x, y, z axes.

    The rotation of ``sitk.Euler3DTransform`` with ``ComputeZYX`` on (see :func:`euler_transform`).
    """
    ax, ay, az = np.radians(np.asarray(angles_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


def euler_transform(params: NDArray | Sequence[float], center_lps_mm: NDArray) -> sitk.Euler3DTransform:
    """The SimpleITK transform of rigid parameters ``(tx, ty, tz mm, rx, ry, rz deg)`` about a centre.

    ``T(p) = R (p - c) + c + t`` with ``R = Rz Ry Rx``; it maps fixed points to moving points.
    """
    params = np.asarray(params, dtype=np.float64)
    transform = sitk.Euler3DTransform()
    transform.SetComputeZYX(True)
    transform.SetCenter([float(v) for v in center_lps_mm])
    transform.SetRotation(*[math.radians(float(v)) for v in params[3:6]])
    transform.SetTranslation([float(v) for v in params[:3]])
    return transform


def params_from_matrix(rotation: NDArray, translation: NDArray) -> NDArray[np.float64]:
    """``(tx, ty, tz, rx, ry, rz)`` of ``T(p) = R (p - c) + c + t`` (angles in degrees, ``R = Rz Ry Rx``)."""
    ry = math.asin(float(np.clip(-rotation[2, 0], -1.0, 1.0)))
    if abs(math.cos(ry)) > 1e-9:
        rx = math.atan2(rotation[2, 1], rotation[2, 2])
        rz = math.atan2(rotation[1, 0], rotation[0, 0])
    else:  # gimbal lock: rx and rz share one axis; put it all in rz
        rx = 0.0
        rz = math.atan2(-rotation[0, 1], rotation[1, 1])
    return np.concatenate([np.asarray(translation, np.float64), np.degrees([rx, ry, rz])])


def params_from_transform(transform: sitk.Transform, center_lps_mm: NDArray) -> NDArray[np.float64]:
    """Rigid parameters about ``center_lps_mm`` of any (near-)rigid SimpleITK transform, from its action."""
    center = np.asarray(center_lps_mm, dtype=np.float64)
    image = np.asarray(transform.TransformPoint([float(v) for v in center]))
    columns = [
        np.asarray(transform.TransformPoint([float(v) for v in center + np.eye(3)[i] * 50.0])) - image
        for i in range(3)
    ]
    rotation, _ = _orthonormalise(np.stack(columns, axis=1) / 50.0)
    return params_from_matrix(rotation, image - center)


def _orthonormalise(matrix: NDArray) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    u, s, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt, s


def rigid_fit(
    fixed_points: NDArray, moving_points: NDArray, center_lps_mm: NDArray
) -> tuple[NDArray[np.float64], float]:
    """Least-squares rigid ``T`` with ``T(fixed) ~ moving`` (Kabsch): its parameters and RMS residual (mm)."""
    fixed_points = np.asarray(fixed_points, np.float64)
    moving_points = np.asarray(moving_points, np.float64)
    fixed_mean, moving_mean = fixed_points.mean(axis=0), moving_points.mean(axis=0)
    covariance = (moving_points - moving_mean).T @ (fixed_points - fixed_mean)
    rotation, _ = _orthonormalise(covariance)
    center = np.asarray(center_lps_mm, np.float64)
    # T(p) = R (p - c) + c + t and T(fixed_mean) = moving_mean.
    translation = moving_mean - rotation @ (fixed_mean - center) - center
    params = params_from_matrix(rotation, translation)
    mapped = (fixed_points - center) @ rotation.T + center + translation
    rms = float(np.sqrt(np.mean(np.sum((mapped - moving_points) ** 2, axis=1))))
    return params, rms


def apply_rigid(params: NDArray, center_lps_mm: NDArray, points_lps_mm: NDArray) -> NDArray[np.float64]:
    """``T(p) = R (p - c) + c + t`` of rigid ``params`` for points (N, 3) in LPS mm."""
    rotation = euler_matrix(params[3:6])
    return (points_lps_mm - center_lps_mm) @ rotation.T + center_lps_mm + params[:3]
