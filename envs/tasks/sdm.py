"""Deformable registration by a statistical deformation model (Krebs et al., MICCAI 2017).

:class:`DeformableRegistrationEnv` (``medgym/DeformableRegistration-v0``) warps the atlas onto
a fixed volume by +-steps on the coefficients of a
:class:`~envs.tasks.sdm_model.StatisticalDeformationModel`; conventions (transform direction,
error, integer parameters) are those of :mod:`envs.tasks.alignment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from envs.core import (
    Pyramid,
    Volume,
    body_centre_lps,
    build_pyramid,
    control_points,
    cube_grid_lps,
    field_at_points,
)
from envs.data import Dataset, Subject
from envs.phantom import PhantomConfig, mean_phantom, phantom_dataset
from envs.tasks.alignment import UNIT, AlignmentEnv, AlignmentPair, AlignmentWorld
from envs.tasks.base import resolve_dataset
from envs.tasks.sdm_model import StatisticalDeformationModel, phantom_sdm, shape_only_config

__all__ = ["DeformableRegistrationEnv", "DeformableWorld"]


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
        require_truth: refuse cases without a field or landmarks; ``False`` (evaluation) takes
            a case with only a label map (its error is NaN; Dice scores it).
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
        require_truth: bool = True,
    ) -> None:
        self.require_truth = bool(require_truth)
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
        field = phantom.displacement_lps_mm if phantom is not None else subject.extras.get("truth_field")
        if field is not None:  # a phantom's or a model sample's exact field (envs.tasks.sdm_samples)
            return self._make_pair(case_id, volume, self.preset_for(subject), truth_field=field)
        names = [n for n in subject.landmarks if n in self.atlas_landmarks]
        if len(names) < 3 and not self.require_truth and subject.labels is not None:
            return self._make_pair(case_id, volume, self.preset_for(subject))  # scored by Dice only
        if len(names) < 3:
            raise ValueError(
                f"case {case_id!r}: deformable ground truth needs a phantom's field or >= 3 "
                f"landmarks shared with the atlas; found {len(names)} (a label map alone does "
                "for evaluation, not for training or validation: use sdm.samples)"
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
        center = body_centre_lps(fixed.levels[0])
        if truth_field is not None:
            points = control_points(fixed.levels[0], self.control_spacing_mm)
            moving_points = points + field_at_points(truth_field, volume, points)
        elif points is None or moving_points is None:
            points = control_points(fixed.levels[0], self.control_spacing_mm)
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
            grid_points = cube_grid_lps(origins[level], self.obs_size, self.levels_mm[level]).reshape(-1, 3)
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
    As :class:`~envs.tasks.rigid.RigidRegistrationEnv`: terminated below
    ``tre_threshold_mm`` at the finest level in training; oscillation moves a level down at test.

    ## Arguments
    ``dataset`` (default: shape-only phantoms 8/2/2 at 2 mm; or an existing
    :class:`DeformableWorld` to share, then without model, atlas and world arguments: see
    :meth:`from_world`), ``split``, ``sdm`` (model or
    ``.npz`` path; default: :func:`phantom_sdm` with k=6), ``atlas``/``atlas_labels``/
    ``atlas_landmarks`` (default: the mean phantom), ``schedule``, ``tre_threshold_mm``,
    ``render_mode`` and the :class:`DeformableWorld` arguments.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        dataset: Dataset | str | DeformableWorld | None = None,
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
        if isinstance(dataset, DeformableWorld):
            given = [name for name, value in (("sdm", sdm), ("atlas", atlas)) if value is not None]
            if given or world_kwargs or atlas_labels is not None or atlas_landmarks is not None:
                raise ValueError(
                    "DeformableRegistrationEnv: given a world, whose model, atlas and arguments are "
                    f"fixed; got {sorted([*given, *world_kwargs])}"
                )
            world = dataset
        else:
            dataset = resolve_dataset(
                dataset, lambda: phantom_dataset(8, 2, 2, seed=0, config=shape_only_config(PhantomConfig()))
            )
            if atlas is None:
                template = mean_phantom(PhantomConfig(spacing_mm=2.0))
                atlas, atlas_labels, atlas_landmarks = template.volume, template.labels, template.landmarks
            if sdm is None:
                sdm = _default_phantom_sdm()
            world = DeformableWorld(dataset, split, sdm, atlas, atlas_labels, atlas_landmarks, **world_kwargs)
        super().__init__(world, schedule, tre_threshold_mm, render_mode)


_DEFAULT_SDM: StatisticalDeformationModel | None = None


def _default_phantom_sdm() -> StatisticalDeformationModel:
    global _DEFAULT_SDM
    if _DEFAULT_SDM is None:
        _DEFAULT_SDM = phantom_sdm()
    return _DEFAULT_SDM
