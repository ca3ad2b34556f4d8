"""Sampling a subject: the scanner grid, the subject -> mean-phantom mapping, and rendering.

A subject point ``p`` (LPS mm) maps to the mean-phantom point ``q`` of
:class:`SubjectMapping`; :func:`render_subject` samples the template's labels at ``q`` for every
voxel of the output grid and turns them into HU (texture, blur, noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from envs.core import Volume, empty_grid, strided_indices, voxel_centres_lps
from envs.phantom.anatomy import FOV_CENTER_LPS_MM, FOV_MM, HU, TISSUES, unit_vector
from envs.phantom.modes import evaluate_field
from envs.phantom.template import painted_template


def output_grid(spacing_mm: float, direction: NDArray | None = None) -> Volume:
    """An empty volume for the scanner field of view at ``spacing_mm``, centred on the FOV."""
    size_xyz = np.maximum(1, np.round(FOV_MM / spacing_mm)).astype(int)
    direction = np.eye(3) if direction is None else direction
    origin = FOV_CENTER_LPS_MM - direction @ (spacing_mm * (size_xyz - 1) / 2.0)
    return empty_grid(size_xyz, (spacing_mm,) * 3, origin, direction)


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
    # Not envs.core.sample_field: map_coordinates rounds differently from these matrix products,
    # and phantoms must stay bit-identical for a given seed.
    nx, ny, nz = grid.size_xyz
    wx = _linear_weights(nx, strided_indices(nx, step))
    wy = _linear_weights(ny, strided_indices(ny, step))
    wz = _linear_weights(nz, strided_indices(nz, step))
    # Matrix products along one axis at a time: BLAS does the work, no full-size index arrays.
    values = np.einsum("xc,zycv->zyxv", wx, coarse, optimize=True)
    values = np.einsum("yc,zcxv->zyxv", wy, values, optimize=True)
    cz = values.shape[0]
    full = (wz @ values.reshape(cz, -1)).reshape(nz, ny, nx, 3)
    return full.astype(np.float32)


def rotation_matrix(rotation_deg: NDArray) -> NDArray[np.float64]:
    """Rotation ``Rz @ Ry @ Rx`` for angles (degrees) about the LPS x, y, z axes."""
    # The matrix of envs.core.euler_matrix, written out: scipy's Rotation differs in the last
    # bit, and phantoms must stay bit-identical for a given seed.
    ax, ay, az = np.radians(rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SubjectMapping:
    """Subject -> mean-phantom mapping ``q = r + u(r)``, ``r = c + R^T (p - c - t) / s``."""

    rotation: NDArray[np.float64]
    translation_mm: NDArray[np.float64]
    scale: float
    field: NDArray[np.float32] | None  # (3, z, y, x) combined mode displacement, or None
    field_origin: NDArray[np.float64]
    field_spacing_mm: float

    def undo_pose(self, points: NDArray) -> NDArray:
        centered = points - FOV_CENTER_LPS_MM - self.translation_mm
        return FOV_CENTER_LPS_MM + (centered @ self.rotation) / self.scale  # row-vector form of R^T

    def apply_pose(self, points: NDArray) -> NDArray:
        return (
            FOV_CENTER_LPS_MM
            + self.translation_mm
            + self.scale * ((points - FOV_CENTER_LPS_MM) @ self.rotation.T)
        )

    def mode_displacement(self, points: NDArray) -> NDArray:
        if self.field is None:
            return np.zeros_like(points)
        return evaluate_field(self.field, self.field_origin, self.field_spacing_mm, points)

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


def random_direction(rng: np.random.Generator) -> NDArray[np.float64]:
    """A rotation by 10..25 degrees about a random axis (Rodrigues)."""
    axis = unit_vector(rng.standard_normal(3))
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


def render_subject(
    grid: Volume,
    mapping: SubjectMapping,
    hu_lookup: NDArray[np.float32],
    texture_rng: np.random.Generator | None,
    texture_hu: float,
    noise_rng: np.random.Generator | None,
    noise_hu: float,
) -> tuple[NDArray[np.int16], NDArray[np.uint8], NDArray[np.float32]]:
    """HU voxels, labels and displacement ``(z, y, x, 3)`` of ``grid`` under ``mapping``."""
    template, template_origin, template_spacing = painted_template()
    # The mapping is smooth (affine + splines on >= 70 mm lattices): computing it on every
    # 4th voxel and interpolating linearly is exact to a few hundredths of a mm.
    step = 4
    coarse_points = voxel_centres_lps(grid, step)
    coarse_displacement = mapping.to_mean(coarse_points) - coarse_points
    displacement = _upsample(coarse_displacement, grid, step)

    mean_points = voxel_centres_lps(grid) + displacement  # (z, y, x, 3) LPS mm in the template
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


def split_landmarks(
    grid: Volume, landmarks: dict[str, NDArray]
) -> tuple[dict[str, NDArray], dict[str, NDArray]]:
    inside, outside = {}, {}
    for name, point in landmarks.items():
        (inside if bool(grid.contains(point)) else outside)[name] = point
    return inside, outside


def tissue_hu_lookup(jitter: NDArray | None) -> NDArray[np.float32]:
    lookup = np.full(256, HU["air"], dtype=np.float32)
    lookup[: len(TISSUES)] = [hu for _, hu in TISSUES]
    if jitter is not None:
        lookup[1 : len(TISSUES)] += jitter[1:].astype(np.float32)  # air stays -1000
    return lookup


def crop_z(grid: Volume, rng: np.random.Generator) -> Volume:
    """Keep a random 35-70 % slab of the grid along its third index axis."""
    nx, ny, nz = grid.size_xyz
    keep = max(1, round(nz * rng.uniform(0.35, 0.7)))
    start = int(rng.integers(0, nz - keep + 1))
    origin = grid.index_to_lps([0.0, 0.0, float(start)])
    return empty_grid((nx, ny, keep), grid.spacing_xyz_mm, origin, grid.direction)
