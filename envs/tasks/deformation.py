"""Statistical deformation models and the deformable-registration environment (Krebs et al. 2017).

A statistical deformation model (SDM) is a PCA of displacement fields on a common grid:
``u(p) = mean(p) + sum_i c_i * mode_i(p)`` with coefficients ``c`` in units of each mode's
standard deviation. As everywhere in medgym, a displacement ``u`` on the fixed grid maps a
fixed point ``p`` to the moving point ``p + u(p)`` (LPS mm). For the phantoms the moving
volume is the atlas (:func:`envs.phantom.mean_phantom`) and each subject's stored
``displacement_lps_mm`` is exactly such a field, so a model fitted to subjects recovers the
generator's modes (:func:`envs.phantom.deformation_modes`).

:class:`DeformableRegistrationEnv` (``medgym/DeformableRegistration-v0``) warps the atlas onto
a fixed volume by +-steps on the model's coefficients.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from envs.core import Pyramid, Volume, build_pyramid
from envs.data import Dataset, Subject
from envs.tasks.registration import (
    UNIT,
    AlignmentEnv,
    AlignmentPair,
    AlignmentWorld,
    _body_centre,
    _control_points,
    _grid_points,
)

__all__ = [
    "DICE_STRUCTURES",
    "SDM_FORMAT",
    "SDM_VERSION",
    "DeformableRegistrationEnv",
    "DeformableWorld",
    "StatisticalDeformationModel",
    "dice_scores",
    "fit_sdm_from_volumes",
    "phantom_sdm",
    "phantom_structures",
    "shape_only_config",
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

    def covers(self, points_lps_mm: ArrayLike, margin_nodes: float = 0.0) -> NDArray[np.bool_]:
        index = self._index(np.asarray(points_lps_mm, np.float64).reshape(-1, 3))
        upper = np.array(self.shape_zyx, np.float64)[:, np.newaxis] - 1 + margin_nodes
        return np.all((index >= -margin_nodes) & (index <= upper), axis=0)

    def basis_at(self, points_lps_mm: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(mean (N, 3), modes (k, N, 3))`` at points (trilinear; edge values beyond the grid)."""
        points = np.asarray(points_lps_mm, np.float64).reshape(-1, 3)
        index = self._index(points)

        def sample(field: NDArray) -> NDArray:
            return np.stack(
                [ndimage.map_coordinates(field[..., c], index, order=1, mode="nearest") for c in range(3)],
                axis=-1,
            )

        return sample(self.mean), np.stack([sample(mode) for mode in self.modes]) if self.k else np.zeros(
            (0, len(points), 3)
        )

    def displacement(self, coefficients: ArrayLike, points_lps_mm: ArrayLike) -> NDArray[np.float64]:
        """``u(p)`` ``(..., 3)`` at points ``(..., 3)`` for coefficients ``(k,)`` (std-dev units)."""
        coefficients = self._check_coefficients(coefficients)
        points = np.asarray(points_lps_mm, np.float64)
        mean, modes = self.basis_at(points.reshape(-1, 3))
        return (mean + np.tensordot(coefficients, modes, axes=1)).reshape(points.shape)

    def field_on(self, grid: Volume, coefficients: ArrayLike) -> NDArray[np.float32]:
        """``u`` on every voxel centre of ``grid`` ``(z, y, x, 3)``; the grid must overlap the model's."""
        self.check_grid(grid)
        points = _voxel_points(grid)
        return self.displacement(coefficients, points).astype(np.float32)

    def warp(self, moving: Volume, grid: Volume, coefficients: ArrayLike, *, labels: bool = False) -> Volume:
        """``moving(p + u(p))`` on ``grid``: the moving (atlas) volume carried onto the fixed grid.

        ``labels=True`` uses nearest-neighbour interpolation and keeps the dtype.
        """
        field = self.field_on(grid, coefficients)
        points = _voxel_points(grid) + field
        index = moving.lps_to_index(points)[..., ::-1]
        coords = np.moveaxis(index, -1, 0)
        order = 0 if labels else 1
        output = moving.voxels.dtype if labels else np.float32
        values = ndimage.map_coordinates(
            moving.voxels, coords, order=order, mode="constant", cval=0, output=output
        )
        return grid.with_voxels(values, name=f"{moving.name} warped")

    def project(self, points_lps_mm: ArrayLike, displacements_mm: ArrayLike) -> NDArray[np.float64]:
        """Least-squares coefficients whose field best matches ``displacements`` at ``points``."""
        mean, modes = self.basis_at(points_lps_mm)
        target = np.asarray(displacements_mm, np.float64).reshape(-1, 3) - mean
        design = modes.reshape(self.k, -1).T
        solution, *_ = np.linalg.lstsq(design, target.reshape(-1), rcond=None)
        return solution

    def sample(self, rng: np.random.Generator, n: int = 1) -> NDArray[np.float64]:
        """``n`` random coefficient vectors from the model's Gaussian (``(n, k)``)."""
        return rng.standard_normal((n, self.k))

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
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez_compressed(
                    file,
                    header=np.array(json.dumps(header)),
                    mean=self.mean,
                    modes=self.modes,
                    std_mm=self.std_mm,
                    explained_variance_ratio=self.explained_variance_ratio,
                    origin_lps_mm=self.origin_lps_mm,
                )
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
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
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"SDM file {path}: not a medgym SDM file ({error})") from None
        if header.get("format") != SDM_FORMAT or header.get("version") != SDM_VERSION:
            raise ValueError(f"SDM file {path}: expected format {SDM_FORMAT} v{SDM_VERSION}, got {header}")
        mean, modes = arrays["mean"], arrays["modes"]
        if mean.ndim != 4 or mean.shape[-1] != 3 or modes.shape[1:] != mean.shape:
            raise ValueError(
                f"SDM file {path}: mean {mean.shape} and modes {modes.shape} do not fit together"
            )
        return cls(
            mean=mean.astype(np.float32),
            modes=modes.astype(np.float32),
            std_mm=arrays["std_mm"].astype(np.float64),
            explained_variance_ratio=arrays["explained_variance_ratio"].astype(np.float64),
            origin_lps_mm=arrays["origin_lps_mm"].astype(np.float64),
            spacing_mm=float(header["spacing_mm"]),
            n_fields=int(header["n_fields"]),
            source=str(header.get("source", "")),
        )


def _voxel_points(grid: Volume) -> NDArray[np.float64]:
    z, y, x = (np.arange(n, dtype=np.float64) for n in grid.shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    return grid.index_to_lps(np.stack([xx, yy, zz], axis=-1))


# ---------------------------------------------------------------------- building models
def shape_only_config(config: Any = None, spacing_mm: float | None = None) -> Any:
    """A :class:`~envs.phantom.PhantomConfig` without pose or size changes: subjects differ only
    by the deformation modes (what an SDM explains; rigid pose is the rigid env's job)."""
    from dataclasses import replace

    from envs.phantom import PhantomConfig

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
    from envs.phantom import SPLIT_SEED_OFFSETS, generate_phantom

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
    points = _voxel_points(grid)
    fields = []
    for index, volume in enumerate(volumes):
        displacement = np.asarray(register(volume, reference), dtype=np.float64)
        if displacement.shape != (*volume.shape_zyx, 3):
            raise ValueError(
                f"fit_sdm_from_volumes: register() returned shape {displacement.shape} "
                f"for {volume.name or index}, "
                f"expected {(*volume.shape_zyx, 3)} (the fixed grid plus 3 components)"
            )
        coords = np.moveaxis(volume.lps_to_index(points)[..., ::-1], -1, 0)
        fields.append(
            np.stack(
                [
                    ndimage.map_coordinates(displacement[..., c], coords, order=1, mode="nearest")
                    for c in range(3)
                ],
                axis=-1,
            )
        )
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
    from envs.phantom import LABELS

    return {name: tuple(LABELS[label] for label in labels) for name, labels in DICE_STRUCTURES.items()}


# ---------------------------------------------------------------------- deformable world
class DeformableWorld(AlignmentWorld):
    """Fixed cases and one atlas (the moving volume), aligned by the SDM's coefficients.

    Args:
        dataset, split, case_ids: the fixed cases.
        sdm: the model (or a ``.npz`` path).
        atlas: the moving volume the model warps (raw intensities) and its label map (or None).
        atlas_landmarks: name -> LPS mm in the atlas (ground truth for cases without fields).
        levels_mm, obs_size: the observation grids, coarse to fine.
        coefficient_steps: per level, the step on every coefficient (std-dev units).
        start_range: training starts at level 0 draw coefficients uniformly in +-this.
        control_spacing_mm: lattice of the control points over the fixed body.
    """

    family = "sdm"

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        sdm: StatisticalDeformationModel | str,
        atlas: Volume,
        atlas_labels: Volume | None = None,
        atlas_landmarks: dict[str, NDArray] | None = None,
        levels_mm: Sequence[float] = (8.0, 4.0),
        obs_size: int = 25,
        coefficient_steps: Sequence[float] = (0.4, 0.1),
        start_range: float = 2.5,
        preset: str | None = None,
        control_spacing_mm: float = 30.0,
        seed: int = 0,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        model = sdm if isinstance(sdm, StatisticalDeformationModel) else StatisticalDeformationModel.load(sdm)
        self.sdm = model
        self.param_names = tuple(f"c{i}" for i in range(model.k))
        if len(coefficient_steps) != len(levels_mm):
            raise ValueError(
                f"coefficient_steps: expected one step per level ({len(levels_mm)}), "
                f"got {list(coefficient_steps)}"
            )
        steps = [[float(s)] * model.k for s in coefficient_steps]
        super().__init__(dataset, split, levels_mm, obs_size, steps, preset, 1, seed, case_ids)
        if not start_range >= 0:
            raise ValueError(f"start_range: expected >= 0 std-devs, got {start_range}")
        self.start_range = float(start_range)
        self.atlas = atlas
        self.atlas_labels = atlas_labels
        self.atlas_landmarks = dict(atlas_landmarks or {})
        self.control_spacing_mm = float(control_spacing_mm)
        self._atlas_pyramid: Pyramid | None = None

    def _pair_key(self) -> tuple:
        return (*super()._pair_key(), id(self.sdm), id(self.atlas), self.control_spacing_mm)

    def atlas_pyramid(self, preset: str) -> Pyramid:
        if self._atlas_pyramid is None:
            self.check_resolution(self.atlas, "the atlas")
            self._atlas_pyramid = build_pyramid(self.atlas, self.levels_mm, preset, progressive=True)
        return self._atlas_pyramid

    def build_pair(self, subject: Subject, variant: int) -> AlignmentPair:
        volume = subject.volume
        case_id = subject.case.case_id
        phantom = subject.extras.get("phantom")
        if phantom is not None:
            return self._make_pair(
                case_id, volume, self.preset_for(subject), truth_field=phantom.displacement_lps_mm
            )
        names = [n for n in subject.landmarks if n in self.atlas_landmarks]
        if len(names) < 3:
            raise ValueError(
                f"case {case_id!r}: deformable ground truth needs a phantom's field or >= 3 "
                f"landmarks shared with the atlas; found {len(names)}"
            )
        points = np.stack([subject.landmarks[n] for n in names])
        atlas_points = np.stack([self.atlas_landmarks[n] for n in names])
        return self._make_pair(case_id, volume, self.preset_for(subject), points, atlas_points)

    def pair_from_volumes(
        self,
        fixed: Volume,
        fixed_points: NDArray | None = None,
        atlas_points: NDArray | None = None,
        preset: str = "ct",
    ) -> AlignmentPair:
        """A pair of a new fixed volume and the atlas (test-time registration); error NaN without points."""
        return self._make_pair(fixed.name or "fixed", fixed, preset, fixed_points, atlas_points)

    def _make_pair(
        self,
        case_id: str,
        volume: Volume,
        preset: str,
        points: NDArray | None = None,
        moving_points: NDArray | None = None,
        truth_field: NDArray | None = None,
    ) -> AlignmentPair:
        self.check_resolution(volume, f"case {case_id!r}")
        self.sdm.check_grid(volume, f"case {case_id!r}")
        fixed = build_pyramid(volume, self.levels_mm, preset, progressive=True)
        moving = self.atlas_pyramid(preset)
        center = _body_centre(fixed.levels[0])
        if truth_field is not None:
            points = _control_points(fixed.levels[0], self.control_spacing_mm)
            index = np.moveaxis(volume.lps_to_index(points)[..., ::-1], -1, 0)
            displacement = np.stack(
                [
                    ndimage.map_coordinates(truth_field[..., c], index, order=1, mode="nearest")
                    for c in range(3)
                ],
                axis=-1,
            )
            moving_points = points + displacement
        elif points is None or moving_points is None:
            points = _control_points(fixed.levels[0], self.control_spacing_mm)
            moving_points = np.full_like(points, np.nan)
        points = np.asarray(points, np.float64).reshape(-1, 3)
        moving_points = np.asarray(moving_points, np.float64).reshape(-1, 3)
        mean, modes = self.sdm.basis_at(points)
        known = ~np.isnan(moving_points[:, 0])
        truth = (
            self.sdm.project(points[known], moving_points[known] - points[known])
            if known.sum() >= 1
            else np.zeros(self.n_params)
        )
        origins, patches = self.observation_grids(fixed, center)
        basis = []
        for level in range(self.n_levels):
            grid_points = _grid_points(origins[level], self.obs_size, self.levels_mm[level]).reshape(-1, 3)
            grid_mean, grid_modes = self.sdm.basis_at(grid_points)
            basis.append(((grid_points + grid_mean).astype(np.float32), grid_modes.astype(np.float32)))
        extras = {"mean_at_control": mean, "modes_at_control": modes, "grid_basis": tuple(basis)}
        return AlignmentPair(
            case_id, fixed, moving, center, origins, patches, points, moving_points, truth, extras
        )

    def render_moving(self, pair: AlignmentPair, level: int, params: NDArray[np.int64]) -> NDArray[np.uint8]:
        """The atlas at ``p + u_c(p)`` on the observation grid (trilinear; 0 outside the atlas)."""
        base, modes = pair.extras["grid_basis"][level]
        coefficients = np.asarray(params, np.float32) / UNIT
        points = base + np.tensordot(coefficients, modes, axes=1)
        atlas_level = pair.moving.levels[level]
        index = ((points - atlas_level.origin_lps_mm) / self.levels_mm[level])[:, ::-1].T
        values = ndimage.map_coordinates(
            atlas_level.voxels, index, order=1, mode="constant", cval=0.0, output=np.float32
        )
        return np.rint(values).astype(np.uint8).reshape((self.obs_size,) * 3)

    def errors_mm(self, pair: AlignmentPair, params: NDArray) -> NDArray[np.float64]:
        rows = np.atleast_2d(np.asarray(params, np.float64)) / UNIT
        mean, modes = pair.extras["mean_at_control"], pair.extras["modes_at_control"]
        displaced = pair.control_fixed_lps_mm + mean  # (n, 3)
        mapped = displaced[np.newaxis] + np.einsum("bk,knc->bnc", rows, modes)
        return np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm[np.newaxis], axis=2), axis=1)

    def reward_scale(self, level: int) -> float:
        return float(self.steps_int[level, 0]) / UNIT * float(self.sdm.std_mm[0])

    def start_params(self, pair: AlignmentPair, level: int, rng: np.random.Generator) -> NDArray[np.int64]:
        if level == 0:
            values = rng.uniform(-self.start_range, self.start_range, self.n_params)
        else:
            reach = 1.5 * self.steps_int[level - 1, 0] / UNIT
            values = pair.truth + rng.uniform(-reach, reach, self.n_params)
        return np.rint(values * UNIT).astype(np.int64)


class DeformableRegistrationEnv(AlignmentEnv):
    """Warp an atlas onto a fixed volume by stepping the coefficients of an SDM (Krebs et al. 2017).

    ## Observation Space
    ``Dict``: ``"patch"`` ``Box(0, 255, (2, S, S, S), uint8)``: the fixed volume and the atlas
    warped by the current coefficients, on an ``S^3`` grid centred on the body at the current
    level's spacing; ``"level"`` ``Discrete(n_levels)``.

    ## Action Space
    ``Discrete(2k)``: ``2i`` adds and ``2i + 1`` subtracts the level's step (std-dev units,
    ``coefficient_steps``) on coefficient ``i``.

    ## Rewards
    The decrease of the mean displacement error over control points spread over the anatomy
    (mm; for the phantoms against their true fields, else at landmarks shared with the atlas),
    divided by the level's step times the first mode's std-dev.

    ## Starting State
    Training (``schedule="random"``): a case and a level; at level 0 coefficients uniform in
    ``+-start_range``, at finer levels within 1.5 coarser steps of the best reachable
    coefficients (the projection of the truth onto the model). Test (``schedule="coarse"``):
    pass ``options={"params": zeros}`` to start from the mean shape. Options as the rigid env.

    ## Episode End
    As :class:`~envs.tasks.registration.RigidRegistrationEnv`: terminated below
    ``tre_threshold_mm`` at the finest level in training; oscillation moves a level down at test.

    ## Arguments
    ``dataset`` (default: shape-only phantoms 8/2/2 at 2 mm), ``split``, ``sdm`` (model or
    ``.npz`` path; default: :func:`phantom_sdm` with k=6), ``atlas``/``atlas_labels``/
    ``atlas_landmarks`` (default: the mean phantom), ``schedule``, ``tre_threshold_mm``,
    ``render_mode`` and the :class:`DeformableWorld` arguments.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        dataset: Dataset | str | None = None,
        split: str = "train",
        sdm: StatisticalDeformationModel | str | None = None,
        atlas: Volume | None = None,
        atlas_labels: Volume | None = None,
        atlas_landmarks: dict[str, NDArray] | None = None,
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
        **world_kwargs: Any,
    ) -> None:
        if dataset is None or atlas is None or sdm is None:
            from envs.phantom import PhantomConfig, mean_phantom

            if dataset is None:
                dataset = Dataset.phantoms(8, 2, 2, seed=0, config=shape_only_config(PhantomConfig()))
            if atlas is None:
                template = mean_phantom(PhantomConfig(spacing_mm=2.0))
                atlas, atlas_labels, atlas_landmarks = template.volume, template.labels, template.landmarks
            if sdm is None:
                sdm = _default_phantom_sdm()
        elif not isinstance(dataset, Dataset):
            dataset = Dataset.from_manifest(dataset)
        if not isinstance(dataset, Dataset):
            dataset = Dataset.from_manifest(dataset)
        world = DeformableWorld(dataset, split, sdm, atlas, atlas_labels, atlas_landmarks, **world_kwargs)
        super().__init__(world, schedule, tre_threshold_mm, render_mode)


_DEFAULT_SDM: StatisticalDeformationModel | None = None


def _default_phantom_sdm() -> StatisticalDeformationModel:
    global _DEFAULT_SDM
    if _DEFAULT_SDM is None:
        _DEFAULT_SDM = phantom_sdm()
    return _DEFAULT_SDM
