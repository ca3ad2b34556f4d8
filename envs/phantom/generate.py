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
    >>> from envs.phantom.anatomy import LANDMARK_NAMES
    >>> sorted(phantom.landmarks) == sorted(LANDMARK_NAMES)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from envs.core import Volume, voxel_centres_lps
from envs.phantom.anatomy import TISSUES, template_landmarks
from envs.phantom.modes import MODE_STD_MM, evaluate_field, mode_grid
from envs.phantom.sampling import (
    SubjectMapping,
    crop_z,
    output_grid,
    random_direction,
    render_subject,
    rotation_matrix,
    split_landmarks,
    tissue_hu_lookup,
)

_COEFFICIENT_CLIP = 3.0
_ROUND_TRIP_TOLERANCE_MM = 0.1


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
    fields, origin, spacing = mode_grid()
    grid = output_grid(config.spacing_mm)
    points = voxel_centres_lps(grid)
    modes = (
        np.stack(
            [
                evaluate_field(fields[i], origin, spacing, points).astype(np.float32)
                for i in range(config.n_modes)
            ]
        )
        if config.n_modes
        else np.zeros((0, *grid.shape_zyx, 3), np.float32)
    )
    return modes, np.asarray(MODE_STD_MM[: config.n_modes], dtype=np.float64)


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

    fields, field_origin, field_spacing = mode_grid()
    weights = coefficients * config.mode_scale
    field = (
        np.tensordot(weights, fields[: config.n_modes], axes=1).astype(np.float32)
        if np.any(weights)
        else None
    )
    mapping = SubjectMapping(
        rotation_matrix(rotation_deg), translation_mm, scale, field, field_origin, field_spacing
    )

    direction = random_direction(grid_rng) if config.oblique else None
    grid = output_grid(config.spacing_mm, direction)
    if config.partial_fov:
        grid = crop_z(grid, fov_rng)

    jitter = hu_rng.uniform(-1.0, 1.0, len(TISSUES)) * config.hu_jitter
    voxels, labels, displacement = render_subject(
        grid, mapping, tissue_hu_lookup(jitter), texture_rng, config.texture_hu, noise_rng, config.noise_hu
    )

    landmarks_template = template_landmarks()
    mean_points = np.stack(list(landmarks_template.values()))
    subject_points = mapping.to_subject(mean_points)
    round_trip_mm = float(np.max(np.linalg.norm(mapping.to_mean(subject_points) - mean_points, axis=1)))
    if round_trip_mm >= _ROUND_TRIP_TOLERANCE_MM:
        raise RuntimeError(
            f"phantom seed {seed}: landmark inversion did not converge ({round_trip_mm:.3f} mm)"
        )
    inside, outside = split_landmarks(grid, dict(zip(landmarks_template, subject_points, strict=True)))

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


def mean_phantom(config: PhantomConfig = PhantomConfig()) -> Phantom:
    """The template: zero modes, scale 1, no pose, nominal HU, no texture and no noise.

    Sampled on the full, axis-aligned field of view at ``config.spacing_mm`` (the other
    fields of ``config`` are ignored). Its displacement field is zero.
    """
    grid = output_grid(config.spacing_mm)
    mapping = SubjectMapping(np.eye(3), np.zeros(3), 1.0, None, np.zeros(3), 1.0)
    voxels, labels, displacement = render_subject(grid, mapping, tissue_hu_lookup(None), None, 0.0, None, 0.0)
    inside, outside = split_landmarks(grid, template_landmarks())
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
