"""Statistical deformation models (SDM): PCA of displacement fields, their fits, and overlap scores.

An SDM is a PCA of displacement fields on a common grid:
``u(p) = mean(p) + sum_i c_i * mode_i(p)`` with coefficients ``c`` in units of each mode's
standard deviation. As everywhere in medgym, a displacement ``u`` on the fixed grid maps a
fixed point ``p`` to the moving point ``p + u(p)`` (LPS mm). For the phantoms the moving
volume is the atlas (:func:`envs.phantom.mean_phantom`) and each subject's stored
``displacement_lps_mm`` is exactly such a field, so a model fitted to subjects recovers the
generator's modes (:func:`envs.phantom.deformation_modes`).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from envs.core import Volume, field_at_points, sample_field, voxel_centres_lps
from envs.io import atomic_path
from envs.phantom import LABELS, SPLIT_SEED_OFFSETS, PhantomConfig, generate_phantom

__all__ = [
    "DICE_STRUCTURES",
    "SDM_FORMAT",
    "SDM_VERSION",
    "StatisticalDeformationModel",
    "dice_scores",
    "fit_sdm_from_volumes",
    "phantom_sdm",
    "phantom_structures",
    "shape_only_config",
    "warp_by_field",
]

SDM_FORMAT = "medgym.sdm"
SDM_VERSION = 1
# Structures whose overlap evaluate.py reports for phantoms (label names of envs.phantom.LABELS).
DICE_STRUCTURES: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidneys": ("kidney", "renal_sinus"),
    "heart": ("myocardium", "blood_pool"),
    "lungs": ("lung", "lung_vessel", "airway"),
    "vertebrae": ("bone_cortical", "bone_cancellous", "bone_posterior", "disc"),
}


@dataclass(frozen=True, repr=False, eq=False)
class StatisticalDeformationModel:
    """PCA of displacement fields on an axis-aligned grid (LPS, isotropic ``spacing_mm``).

    Attributes:
        mean: ``(z, y, x, 3)`` mean displacement (mm).
        modes: ``(k, z, y, x, 3)``; ``modes[i]`` is the displacement of a +1 std-dev subject
            along mode ``i`` (unit eigenvector times its standard deviation).
        std_mm: ``(k,)`` RMS vector magnitude of each mode over the grid, in mm.
        explained_variance_ratio: ``(k,)`` share of the training fields' variance per mode.
        origin_lps_mm: LPS position of grid node (0, 0, 0).
        spacing_mm: grid spacing.
        n_fields: number of fields the model was fitted to.
        source: free text (where the fields came from).
    """

    mean: NDArray[np.float32]
    modes: NDArray[np.float32]
    std_mm: NDArray[np.float64]
    explained_variance_ratio: NDArray[np.float64]
    origin_lps_mm: NDArray[np.float64]
    spacing_mm: float
    n_fields: int
    source: str = ""

    @property
    def k(self) -> int:
        return int(self.modes.shape[0])

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.mean.shape[:3])  # type: ignore[return-value]

    def grid(self) -> Volume:
        """An empty volume with the model's grid geometry."""
        voxels = np.broadcast_to(np.zeros((), np.uint8), self.shape_zyx)
        return Volume(voxels, (self.spacing_mm,) * 3, self.origin_lps_mm)

    def __repr__(self) -> str:
        explained = float(np.sum(self.explained_variance_ratio))
        return (
            f"StatisticalDeformationModel(k={self.k}, grid={self.shape_zyx} "
            f"at {self.spacing_mm:g} mm, "
            f"std_mm={np.round(self.std_mm, 2).tolist()}, explained={explained:.1%}, "
            f"n_fields={self.n_fields})"
        )

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        fields: NDArray | Sequence[NDArray],
        grid: Volume,
        k: int,
        *,
        source: str = "",
    ) -> StatisticalDeformationModel:
        """PCA of ``fields`` ``(n, z, y, x, 3)`` sampled on ``grid`` (axis-aligned, isotropic).

        Raises:
            ValueError: if ``k`` exceeds ``n - 1`` (the rank of centred fields), the fields'
                shape does not match the grid, or the grid is oblique or anisotropic.
        """
        stacked = np.stack([np.asarray(f, dtype=np.float64) for f in fields])
        n = len(stacked)
        if stacked.shape[1:] != (*grid.shape_zyx, 3):
            raise ValueError(
                f"SDM fit: fields have shape {stacked.shape[1:]}, expected {(*grid.shape_zyx, 3)} "
                "(the grid's (z, y, x) plus 3 LPS components); resample them onto one grid first"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"SDM fit: k must be a positive integer, got {k!r}")
        if k > n - 1:
            raise ValueError(
                f"SDM fit: k={k} modes is larger than the {n} training fields allow (at most n - 1 = "
                f"{n - 1}); lower k or add fields"
            )
        if not grid.is_axis_aligned or not np.allclose(grid.spacing_xyz_mm, grid.spacing_xyz_mm[0]):
            raise ValueError("SDM fit: the grid must be axis-aligned and isotropic")
        mean = stacked.mean(axis=0)
        centred = (stacked - mean).reshape(n, -1)
        # SVD of the small n x n Gram matrix: n fields, millions of values each.
        gram = centred @ centred.T
        eigenvalues, eigenvectors = np.linalg.eigh(gram)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = np.maximum(eigenvalues[order], 0.0), eigenvectors[:, order]
        total = float(eigenvalues.sum()) or 1.0
        n_nodes = centred.shape[1] // 3
        modes, stds = [], []
        for i in range(k):
            singular = float(np.sqrt(eigenvalues[i]))
            if singular < 1e-9:
                raise ValueError(
                    f"SDM fit: the fields span only {i} independent direction(s); lower k to {i}"
                )
            direction = centred.T @ eigenvectors[:, i] / singular  # unit norm over all values
            std_coefficient = singular / np.sqrt(n - 1)
            mode = direction * std_coefficient
            modes.append(mode.reshape(*grid.shape_zyx, 3))
            # RMS vector magnitude over the grid nodes of a +1 std subject.
            stds.append(float(np.linalg.norm(mode) / np.sqrt(n_nodes)))
        return cls(
            mean=mean.astype(np.float32),
            modes=np.stack(modes).astype(np.float32),
            std_mm=np.array(stds),
            explained_variance_ratio=eigenvalues[:k] / total,
            origin_lps_mm=grid.origin_lps_mm.copy(),
            spacing_mm=float(grid.spacing_xyz_mm[0]),
            n_fields=n,
            source=source,
        )

    # ------------------------------------------------------------------ evaluation
    def _index(self, points_lps_mm: NDArray) -> NDArray[np.float64]:
        """Continuous grid index ``(3, N)`` in (z, y, x) order of points ``(N, 3)``."""
        return ((np.asarray(points_lps_mm, np.float64) - self.origin_lps_mm) / self.spacing_mm)[:, ::-1].T

    def basis_at(self, points_lps_mm: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(mean (N, 3), modes (k, N, 3))`` at points (trilinear; edge values beyond the grid)."""
        points = np.asarray(points_lps_mm, np.float64).reshape(-1, 3)
        index = self._index(points)
        modes = (
            np.stack([sample_field(mode, index) for mode in self.modes])
            if self.k
            else np.zeros((0, len(points), 3))
        )
        return sample_field(self.mean, index), modes

    def displacement(self, coefficients: ArrayLike, points_lps_mm: ArrayLike) -> NDArray[np.float64]:
        """``u(p)`` ``(..., 3)`` at points ``(..., 3)`` for coefficients ``(k,)`` (std-dev units)."""
        coefficients = self._check_coefficients(coefficients)
        points = np.asarray(points_lps_mm, np.float64)
        mean, modes = self.basis_at(points.reshape(-1, 3))
        return (mean + np.tensordot(coefficients, modes, axes=1)).reshape(points.shape)

    def field_on(self, grid: Volume, coefficients: ArrayLike) -> NDArray[np.float32]:
        """``u`` on every voxel centre of ``grid`` ``(z, y, x, 3)``; the grid must overlap the model's."""
        self.check_grid(grid)
        points = voxel_centres_lps(grid)
        return self.displacement(coefficients, points).astype(np.float32)

    def warp(self, moving: Volume, grid: Volume, coefficients: ArrayLike, *, labels: bool = False) -> Volume:
        """``moving(p + u(p))`` on ``grid``: the moving (atlas) volume carried onto the fixed grid.

        ``labels=True`` uses nearest-neighbour interpolation and keeps the dtype.
        """
        return warp_by_field(moving, grid, self.field_on(grid, coefficients), labels=labels)

    def project(self, points_lps_mm: ArrayLike, displacements_mm: ArrayLike) -> NDArray[np.float64]:
        """Least-squares coefficients whose field best matches ``displacements`` at ``points``."""
        mean, modes = self.basis_at(points_lps_mm)
        target = np.asarray(displacements_mm, np.float64).reshape(-1, 3) - mean
        design = modes.reshape(self.k, -1).T
        solution, *_ = np.linalg.lstsq(design, target.reshape(-1), rcond=None)
        return solution

    def check_grid(self, grid: Volume, what: str = "the volume") -> None:
        """Raise unless at least half of ``grid``'s box lies inside the model's grid."""
        corners = grid.corners_lps()
        lower, upper = corners.min(axis=0), corners.max(axis=0)
        model_lower = self.origin_lps_mm - 0.5 * self.spacing_mm
        model_upper = self.origin_lps_mm + (np.array(self.shape_zyx[::-1]) - 0.5) * self.spacing_mm
        overlap = np.clip(np.minimum(upper, model_upper) - np.maximum(lower, model_lower), 0, None)
        fraction = float(np.prod(overlap) / max(np.prod(upper - lower), 1e-9))
        if fraction < 0.5:
            raise ValueError(
                f"SDM grid {self.shape_zyx} at {self.spacing_mm:g} mm "
                f"(LPS box {model_lower.round(1).tolist()} .. "
                f"{model_upper.round(1).tolist()}) covers only {fraction:.0%} of {what} "
                f"({grid.name or 'unnamed'}: box {lower.round(1).tolist()} .. {upper.round(1).tolist()}); "
                "use a model fitted in this volume's space, or align the volume rigidly first"
            )

    def _check_coefficients(self, coefficients: ArrayLike) -> NDArray[np.float64]:
        values = np.asarray(coefficients, np.float64).reshape(-1)
        if values.shape != (self.k,) or not np.all(np.isfinite(values)):
            raise ValueError(
                f"SDM: expected {self.k} finite coefficients, got {np.asarray(coefficients).tolist()}"
            )
        return values

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as ``.npz`` (arrays plus a JSON header), atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"SDM save: expected a .npz path, got {path}")
        header = {
            "format": SDM_FORMAT,
            "version": SDM_VERSION,
            "spacing_mm": self.spacing_mm,
            "n_fields": self.n_fields,
            "source": self.source,
        }
        with atomic_path(path) as temp:
            np.savez_compressed(
                temp,
                header=np.array(json.dumps(header)),
                mean=self.mean,
                modes=self.modes,
                std_mm=self.std_mm,
                explained_variance_ratio=self.explained_variance_ratio,
                origin_lps_mm=self.origin_lps_mm,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StatisticalDeformationModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SDM file {path}: not found; fit one with phantom_sdm() or fit_sdm_from_volumes()"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {
                    key: data[key]
                    for key in ("mean", "modes", "std_mm", "explained_variance_ratio", "origin_lps_mm")
                }
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(
                f"SDM file {path}: not a medgym SDM file or not readable ({reason}); save one with "
                "StatisticalDeformationModel.save"
            ) from None
        known = isinstance(header, dict) and header.get("format") == SDM_FORMAT
        if not known or header.get("version") != SDM_VERSION:
            raise ValueError(
                f"SDM file {path}: expected format {SDM_FORMAT} v{SDM_VERSION}, got {header!r:.200}"
            )
        mean, modes = arrays["mean"], arrays["modes"]
        if mean.ndim != 4 or mean.shape[-1] != 3 or modes.ndim != 5 or modes.shape[1:] != mean.shape:
            raise ValueError(
                f"SDM file {path}: mean {mean.shape} and modes {modes.shape} do not fit together"
            )
        k = modes.shape[0]
        if arrays["std_mm"].shape != (k,) or arrays["origin_lps_mm"].shape != (3,):
            raise ValueError(
                f"SDM file {path}: std_mm {arrays['std_mm'].shape} and origin_lps_mm "
                f"{arrays['origin_lps_mm'].shape} do not fit {k} modes and 3-D points"
            )
        for key, array in arrays.items():
            if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
                raise ValueError(f"SDM file {path}: {key} holds non-finite or non-numeric values")
        try:
            spacing, n_fields = float(header["spacing_mm"]), int(header["n_fields"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"SDM file {path}: header lacks a valid {error}") from None
        if not spacing > 0:
            raise ValueError(f"SDM file {path}: spacing_mm must be > 0, got {spacing}")
        return cls(
            mean=mean.astype(np.float32),
            modes=modes.astype(np.float32),
            std_mm=arrays["std_mm"].astype(np.float64),
            explained_variance_ratio=arrays["explained_variance_ratio"].astype(np.float64),
            origin_lps_mm=arrays["origin_lps_mm"].astype(np.float64),
            spacing_mm=spacing,
            n_fields=n_fields,
            source=str(header.get("source", "")),
        )


# ---------------------------------------------------------------------- building models
def warp_by_field(moving: Volume, grid: Volume, field: NDArray, *, labels: bool = False) -> Volume:
    """``moving(p + field(p))`` on ``grid`` (``field``: ``(z, y, x, 3)`` LPS mm on ``grid``; 0 outside).

    ``labels=True`` uses nearest-neighbour interpolation and keeps the dtype; else trilinear, float32.
    """
    index = moving.lps_to_index(voxel_centres_lps(grid) + field)[..., ::-1]
    values = ndimage.map_coordinates(
        moving.voxels,
        np.moveaxis(index, -1, 0),
        order=0 if labels else 1,
        mode="constant",
        cval=0,
        output=moving.voxels.dtype if labels else np.float32,
    )
    return grid.with_voxels(values, name=f"{moving.name} warped")


def shape_only_config(config: Any = None, spacing_mm: float | None = None) -> Any:
    """A :class:`~envs.phantom.PhantomConfig` without pose or size changes: subjects differ only
    by the deformation modes (what an SDM explains; rigid pose is the rigid env's job)."""
    base = config if config is not None else PhantomConfig()
    changes: dict[str, Any] = {"rotation_deg": 0.0, "translation_mm": 0.0, "size_std": 0.0, "oblique": False}
    changes["partial_fov"] = False
    if spacing_mm is not None:
        changes["spacing_mm"] = float(spacing_mm)
    return replace(base, **changes)


def phantom_sdm(
    n_fields: int = 24, k: int = 6, spacing_mm: float = 8.0, seed: int = 0, config: Any = None
) -> StatisticalDeformationModel:
    """Fit an SDM to ``n_fields`` shape-only phantoms' true displacement fields at ``spacing_mm``.

    The phantoms are drawn from the training seeds (``seed + SPLIT_SEED_OFFSETS['train']``), so
    validation and test subjects are never part of the fit.
    """
    phantom_config = shape_only_config(config, spacing_mm)
    fields, grid = [], None
    for i in range(n_fields):
        phantom = generate_phantom(seed + SPLIT_SEED_OFFSETS["train"] + i, phantom_config)
        fields.append(phantom.displacement_lps_mm)
        grid = phantom.volume
    if grid is None:
        raise ValueError(f"phantom_sdm: n_fields must be >= 2, got {n_fields}")
    return StatisticalDeformationModel.fit(
        fields, grid, k, source=f"phantoms(n={n_fields}, seed={seed}, {spacing_mm:g} mm)"
    )


def fit_sdm_from_volumes(
    reference: Volume,
    volumes: Sequence[Volume],
    k: int,
    register: Callable[[Volume, Volume], NDArray],
    spacing_mm: float = 8.0,
    progress: Callable[[int, int], None] | None = None,
) -> StatisticalDeformationModel:
    """Fit an SDM to a user's training volumes by registering each to ``reference``.

    ``register(fixed, moving)`` must return the displacement ``(z, y, x, 3)`` on the fixed
    grid mapping fixed points to moving points (e.g. :func:`agents.baselines.bspline_baseline`'s
    ``displacement_lps_mm``). Each volume is the fixed image and ``reference`` the moving one,
    so the fields map subject points to reference points, as the phantoms' do. Fields are
    resampled onto an axis-aligned grid at ``spacing_mm`` covering ``reference``'s box; the
    volumes should already be rigidly aligned with it.
    """
    if len(volumes) < 2:
        raise ValueError(f"fit_sdm_from_volumes: need >= 2 training volumes, got {len(volumes)}")
    if k > len(volumes) - 1:
        raise ValueError(
            f"SDM fit: k={k} modes is larger than the {len(volumes)} training fields allow "
            f"(at most {len(volumes) - 1}); lower k or add volumes"
        )
    lower, upper = reference.extent_lps_mm
    size_xyz = np.maximum(2, np.ceil((upper - lower) / spacing_mm).astype(int))
    origin = (lower + upper) / 2 - (size_xyz - 1) * spacing_mm / 2
    grid = Volume(np.broadcast_to(np.zeros((), np.uint8), tuple(size_xyz[::-1])), (spacing_mm,) * 3, origin)
    points = voxel_centres_lps(grid)
    fields = []
    for index, volume in enumerate(volumes):
        displacement = np.asarray(register(volume, reference), dtype=np.float64)
        if displacement.shape != (*volume.shape_zyx, 3):
            raise ValueError(
                f"fit_sdm_from_volumes: register() returned shape {displacement.shape} "
                f"for {volume.name or index}, "
                f"expected {(*volume.shape_zyx, 3)} (the fixed grid plus 3 components)"
            )
        fields.append(field_at_points(displacement, volume, points))
        if progress is not None:
            progress(index + 1, len(volumes))
    return StatisticalDeformationModel.fit(fields, grid, k, source=f"{len(volumes)} registered volumes")


def dice_scores(
    fixed_labels: NDArray, warped_labels: NDArray, structures: dict[str, tuple[int, ...]]
) -> dict[str, float]:
    """Dice overlap per structure (a structure is a set of label values); NaN where both are empty."""
    scores = {}
    for name, values in structures.items():
        a = np.isin(fixed_labels, values)
        b = np.isin(warped_labels, values)
        total = int(a.sum()) + int(b.sum())
        scores[name] = float(2 * np.logical_and(a, b).sum() / total) if total else float("nan")
    return scores


def phantom_structures() -> dict[str, tuple[int, ...]]:
    """:data:`DICE_STRUCTURES` as label values of the phantoms' label maps."""
    return {name: tuple(LABELS[label] for label in labels) for name, labels in DICE_STRUCTURES.items()}
