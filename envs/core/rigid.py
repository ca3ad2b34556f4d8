"""Rigid geometry in physical LPS millimetres, on scipy's ``Rotation`` and SimpleITK.

One rigid map ``T`` (it maps a point of the FIXED volume to the corresponding point of the
MOVING volume, SimpleITK's convention) is written in two ways here:

- *parameters* ``(tx, ty, tz mm, rx, ry, rz deg)`` of ``T(p) = R (p - c) + c + t`` with
  ``R = Rz @ Ry @ Rx`` about a centre ``c``: SimpleITK's ``Euler3DTransform`` with
  ``ComputeZYX`` on (what the rigid env moves and the agents predict);
- *parts* ``(R, b)``: the matrix and offset of ``T(p) = R @ p + b``, free of any centre (what
  composing, fitting and converting between SimpleITK transform types need).

Example:
    >>> import numpy as np
    >>> center = np.array([10.0, -20.0, 30.0])
    >>> params = np.array([5.0, -3.0, 2.0, 10.0, -20.0, 30.0])
    >>> points = np.array([[0.0, 0.0, 0.0], [40.0, 10.0, -5.0], [-7.0, 60.0, 12.0]])
    >>> fitted, rms = rigid_fit(points, apply_rigid(params, center, points), center)
    >>> bool(np.allclose(fitted, params) and rms < 1e-9)
    True
    >>> rotation, offset = rigid_parts(euler_transform(params, center), center)
    >>> bool(np.allclose(params_from_matrix(rotation, rotation @ center + offset - center), params))
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

__all__ = [
    "apply_rigid",
    "compose_rigid",
    "euler_matrix",
    "euler_transform",
    "matrix_offset",
    "nearest_rotation",
    "params_from_matrix",
    "params_from_transform",
    "rigid_fit",
    "rigid_parts",
    "rigid_transform",
]

# Intrinsic Z, Y', X'' angles compose to Rz @ Ry @ Rx; scipy lists them (rz, ry, rx).
_SEQUENCE = "ZYX"
# Lever (mm) of params_from_transform's finite differences of a transform's action.
_PARAMS_LEVER_MM = 50.0


def _rotation_from_angles(angles_deg: NDArray | Sequence[float]) -> Rotation:
    """The rotation ``Rz @ Ry @ Rx`` of angles ``(rx, ry, rz)`` in degrees."""
    angles = np.asarray(angles_deg, dtype=np.float64)
    return Rotation.from_euler(_SEQUENCE, angles[::-1], degrees=True)


def _angles_deg(rotation: Rotation) -> NDArray[np.float64]:
    """``(rx, ry, rz)`` in degrees of ``Rz @ Ry @ Rx``; at gimbal lock rx is 0 and rz holds the rest."""
    with warnings.catch_warnings():
        # At ry = +-90 deg only rz -+ rx is defined; scipy then sets rx to 0 (our contract).
        warnings.filterwarnings("ignore", message="Gimbal lock detected", category=UserWarning)
        return rotation.as_euler(_SEQUENCE, degrees=True)[::-1].astype(np.float64)


def _align(a: NDArray, b: NDArray) -> Rotation:
    """Kabsch: the rotation ``R`` maximising ``sum a_i . R b_i`` (SVD of ``sum a_i b_i^T``)."""
    with warnings.catch_warnings():
        # Rank-deficient input (points on a line) leaves a rotation about that line free; the
        # SVD still returns one, as documented by the callers.
        warnings.filterwarnings("ignore", message="Optimal rotation is not uniquely", category=UserWarning)
        rotation, _ = Rotation.align_vectors(a, b)
    return rotation


def euler_matrix(angles_deg: NDArray | Sequence[float]) -> NDArray[np.float64]:
    """``Rz @ Ry @ Rx`` (3, 3) for angles ``(rx, ry, rz)`` in degrees about the LPS x, y, z axes.

    The rotation of ``sitk.Euler3DTransform`` with ``ComputeZYX`` on (see :func:`euler_transform`).

    Example:
        >>> euler_matrix([0.0, 0.0, 90.0]).round(12) + 0.0  # +90 deg about z takes x to y
        array([[ 0., -1.,  0.],
               [ 1.,  0.,  0.],
               [ 0.,  0.,  1.]])
    """
    return _rotation_from_angles(angles_deg).as_matrix()


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
    """``(tx, ty, tz, rx, ry, rz)`` of ``T(p) = R (p - c) + c + t`` (angles in degrees, ``R = Rz Ry Rx``).

    Args:
        rotation: ``R``, (3, 3), a proper rotation.
        translation: ``t`` in mm, (3,).

    Angles lie in ``rx, rz in [-180, 180]``, ``ry in [-90, 90]``. At gimbal lock (``ry = +-90``,
    where only one combination of ``rx`` and ``rz`` is defined) ``rx`` is 0.
    """
    angles = _angles_deg(Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)))
    return np.concatenate([np.asarray(translation, np.float64), angles])


def _linear_part(
    transform: sitk.Transform, center: NDArray[np.float64], lever_mm: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(J, T(c))``: ``J`` (3, 3) of finite differences ``(T(c + lever e_i) - T(c)) / lever``."""
    image = np.asarray(transform.TransformPoint([float(v) for v in center]))
    columns = [
        (np.asarray(transform.TransformPoint([float(v) for v in center + np.eye(3)[i] * lever_mm])) - image)
        / lever_mm
        for i in range(3)
    ]
    return np.stack(columns, axis=1), image


def params_from_transform(transform: sitk.Transform, center_lps_mm: NDArray) -> NDArray[np.float64]:
    """Rigid parameters about ``center_lps_mm`` of any (near-)rigid SimpleITK transform, from its action.

    The transform is sampled at the centre and 50 mm along each axis; its linear part is
    replaced by the nearest rotation. Use :func:`rigid_parts` to refuse non-rigid transforms.
    """
    center = np.asarray(center_lps_mm, dtype=np.float64)
    matrix, image = _linear_part(transform, center, _PARAMS_LEVER_MM)
    return params_from_matrix(nearest_rotation(matrix), image - center)


def nearest_rotation(matrix: NDArray) -> NDArray[np.float64]:
    """The proper rotation (det +1) nearest to a (3, 3) ``matrix`` in the Frobenius norm.

    The rotation of the polar decomposition, by Kabsch's SVD (``Rotation.align_vectors`` of the
    columns onto the axes); a reflection comes back as the nearest rotation, not a reflection.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    # The columns onto the axes: sum a_i b_i^T = sum matrix[:, i] e_i^T = matrix.
    return _align(matrix.T, np.eye(3)).as_matrix()


def rigid_fit(
    fixed_points: NDArray, moving_points: NDArray, center_lps_mm: NDArray
) -> tuple[NDArray[np.float64], float]:
    """Least-squares rigid ``T`` with ``T(fixed) ~ moving`` (Kabsch): its parameters and RMS residual (mm).

    Args:
        fixed_points: (N, 3) LPS mm.
        moving_points: (N, 3) LPS mm, row ``i`` corresponding to ``fixed_points[i]``.
        center_lps_mm: (3,), the centre ``c`` of the returned parameters.

    Returns:
        ``(params, rms_mm)``: parameters as in :func:`params_from_matrix` and the RMS distance
        of ``T(fixed)`` from ``moving``. One point gives the pure translation; points on one
        line leave the rotation about that line undetermined.
    """
    fixed_points = np.asarray(fixed_points, np.float64)
    moving_points = np.asarray(moving_points, np.float64)
    fixed_mean, moving_mean = fixed_points.mean(axis=0), moving_points.mean(axis=0)
    if len(fixed_points) == 1:
        fit = Rotation.identity()  # scipy would align the single (zero) centred vector
    else:
        fit = _align(moving_points - moving_mean, fixed_points - fixed_mean)
    rotation = fit.as_matrix()
    center = np.asarray(center_lps_mm, np.float64)
    # T(p) = R (p - c) + c + t and T(fixed_mean) = moving_mean.
    translation = moving_mean - rotation @ (fixed_mean - center) - center
    params = np.concatenate([translation, _angles_deg(fit)])
    mapped = (fixed_points - center) @ rotation.T + center + translation
    rms = float(np.sqrt(np.mean(np.sum((mapped - moving_points) ** 2, axis=1))))
    return params, rms


def apply_rigid(params: NDArray, center_lps_mm: NDArray, points_lps_mm: NDArray) -> NDArray[np.float64]:
    """``T(p) = R (p - c) + c + t`` of rigid ``params`` for points (N, 3) in LPS mm."""
    rotation = euler_matrix(params[3:6])
    return (points_lps_mm - center_lps_mm) @ rotation.T + center_lps_mm + params[:3]


# ---------------------------------------------------------------------- (R, b) parts
def matrix_offset(transform: sitk.Transform) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(M, b)`` with ``transform(p) == M @ p + b`` for a centred SimpleITK matrix transform.

    Exact, from the transform's own matrix, centre and translation (``b = c + t - M c``): for
    ``Euler3DTransform``, ``VersorRigid3DTransform``, ``Similarity3DTransform``,
    ``AffineTransform`` and the like. For any other transform use :func:`rigid_parts`.
    """
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    center = np.asarray(transform.GetCenter(), dtype=np.float64)
    return matrix, center + np.asarray(transform.GetTranslation(), dtype=np.float64) - matrix @ center


def rigid_parts(
    transform: sitk.Transform,
    center_lps_mm: NDArray | Sequence[float],
    *,
    lever_mm: float = 100.0,
    tolerance_mm: float = 1e-3,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(R, b)`` with ``transform(p) == R @ p + b`` for any SimpleITK transform that is rigid in effect.

    Measured from the transform's action around ``center_lps_mm`` (at the centre, ``lever_mm``
    along each axis and at 8 fixed pseudo-random points within ``lever_mm``), so an Euler,
    versor, rotation-only affine, identity or a composite of those all qualify.

    Args:
        transform: a 3-D SimpleITK transform.
        center_lps_mm: (3,), where to measure it (e.g. the fixed volume's centre).
        lever_mm: how far from the centre it is measured.
        tolerance_mm: largest deviation from a rotation + translation accepted over the lever.

    Raises:
        ValueError: the transform is not rigid to ``tolerance_mm`` (a scaling, shear,
            reflection or deformation); the message says by how much.
        RuntimeError: SimpleITK cannot map one of the points.
    """
    center = np.asarray(center_lps_mm, dtype=np.float64)
    matrix, mapped_center = _linear_part(transform, center, lever_mm)
    offset = mapped_center - matrix @ center
    probes = center + np.random.default_rng(0).uniform(-lever_mm, lever_mm, (8, 3))
    residual = max(
        float(np.linalg.norm(np.asarray(transform.TransformPoint(p.tolist())) - (matrix @ p + offset)))
        for p in probes
    )
    rotation = nearest_rotation(matrix)
    orthogonality = float(np.abs(matrix - rotation).max()) * lever_mm
    if residual > tolerance_mm or orthogonality > tolerance_mm:
        raise ValueError(
            f"the transform deviates from a rotation + translation by "
            f"{max(residual, orthogonality):.3g} mm over {lever_mm:g} mm"
        )
    return rotation, offset


def compose_rigid(
    outer: tuple[NDArray, NDArray], inner: tuple[NDArray, NDArray]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The parts of ``outer(inner(p))``: ``(R_o R_i, R_o b_i + b_o)`` for ``(R_o, b_o)``, ``(R_i, b_i)``."""
    (outer_rotation, outer_offset), (inner_rotation, inner_offset) = outer, inner
    return outer_rotation @ inner_rotation, outer_rotation @ inner_offset + outer_offset


def rigid_transform(
    rotation: NDArray,
    offset_mm: NDArray,
    center_lps_mm: NDArray | Sequence[float],
    kind: Literal["versor", "euler"] = "versor",
) -> sitk.VersorRigid3DTransform | sitk.Euler3DTransform:
    """The SimpleITK rigid transform ``p -> rotation @ p + offset_mm`` that rotates about a centre.

    Args:
        rotation: (3, 3) proper rotation.
        offset_mm: (3,) ``b`` of ``T(p) = R p + b``.
        center_lps_mm: (3,) the transform's centre (it sets the optimiser's parametrisation,
            not the mapping).
        kind: ``"versor"`` for a ``VersorRigid3DTransform``, ``"euler"`` for an
            ``Euler3DTransform`` (ZXY angles, SimpleITK's default).
    """
    if kind not in ("versor", "euler"):
        raise ValueError(f"rigid_transform: kind must be 'versor' or 'euler', got {kind!r}")
    c = np.asarray(center_lps_mm, dtype=np.float64)
    rotation = np.asarray(rotation, dtype=np.float64)
    transform = sitk.VersorRigid3DTransform() if kind == "versor" else sitk.Euler3DTransform()
    transform.SetCenter(c.tolist())
    transform.SetMatrix(rotation.reshape(-1).tolist())
    transform.SetTranslation((rotation @ c + np.asarray(offset_mm, dtype=np.float64) - c).tolist())
    return transform
