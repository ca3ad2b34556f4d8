"""Image registration as a Gymnasium environment: act on a transform until two volumes align.

Two families share one episode logic (:class:`AlignmentEnv`):

* rigid (Liao et al., AAAI 2017): 12 actions of +-translation (mm) and +-rotation (degrees)
  about each LPS axis, here (:class:`RigidRegistrationEnv`);
* statistical deformation model (Krebs et al., MICCAI 2017): +-steps on the coefficients of
  PCA modes of displacement fields, in :mod:`envs.tasks.deformation`.

Conventions. A registration transform ``T`` maps a point ``p`` of the FIXED volume (LPS mm) to
the corresponding point ``T(p)`` of the MOVING volume, as SimpleITK's registration results
do; the moving image "under the current transform" is ``moving(T(p))`` sampled on a fixed
grid (SimpleITK's ``Resample(moving, fixed_grid, T)``). The error is the target registration
error (TRE): the mean distance in mm between ``T(c_fixed)`` and the true ``c_moving`` over
control points (the landmarks when a pair is defined by landmarks, else points spread over
the anatomy).

The state is a parameter vector held as integers in thousandths (of mm, degrees or
standard deviations), so a replay buffer can store it exactly in an int32 pose.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import SimpleITK as sitk
from gymnasium import spaces
from numpy.typing import NDArray
from scipy import ndimage

from envs.core import (
    Pyramid,
    Volume,
    apply_rigid,
    build_pyramid,
    crop_patch,
    euler_matrix,
    euler_transform,
    rigid_fit,
    stable_hash,
)
from envs.data import Dataset, Subject

__all__ = [
    "CONTRASTS",
    "RIGID_ACTION_NAMES",
    "RIGID_PARAM_NAMES",
    "UNIT",
    "AlignmentEnv",
    "AlignmentPair",
    "AlignmentWorld",
    "RigidRegistrationEnv",
    "RigidWorld",
    "multimodal_lut",
]

UNIT = 1000  # state parameters are integers in thousandths (of mm, degrees, or std-devs)
CONTRASTS = ("same", "multimodal", "mixed")
RIGID_PARAM_NAMES = ("tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg")
RIGID_ACTION_NAMES: tuple[str, ...] = tuple(
    f"{sign}{name}" for name in ("tx", "ty", "tz", "rx", "ry", "rz") for sign in ("+", "-")
)
_PRESET_BY_MODALITY = {"ct": "ct", "mr": "mr"}


# ---------------------------------------------------------------------- contrast
def multimodal_lut(rng: np.random.Generator | None = None, jitter: float = 0.0) -> NDArray[np.uint8]:
    """A non-monotonic uint8 -> uint8 intensity map that makes CT levels look like another modality.

    On the ``ct`` preset's scale (-1000..1000 HU -> 0..255): air and lung stay dark, fat
    becomes the brightest tissue, water-like soft tissue mid-grey, contrast-filled blood
    bright and bone dark (a T1-weighted-MR-like ordering). ``jitter`` (0..1) moves each
    control value by up to that fraction of 255 at random, so no two variants share a map.
    Level 0 stays 0: "outside the field of view" never becomes tissue.
    """
    # (input level, output level): -1000 HU 0, lung -850 19, fat -100 115, water 0 128,
    # soft tissue 40-60 133-135, blood 170 150, cancellous bone 250 160, cortical 700 217.
    xs = np.array([0, 10, 40, 100, 115, 122, 128, 136, 150, 165, 200, 255], dtype=np.float64)
    ys = np.array([0, 8, 25, 200, 235, 170, 110, 125, 190, 70, 30, 15], dtype=np.float64)
    if rng is not None and jitter > 0:
        ys[1:] = np.clip(ys[1:] + rng.uniform(-1, 1, len(ys) - 1) * 255 * jitter, 1, 255)
    lut = np.rint(np.interp(np.arange(256), xs, ys)).astype(np.uint8)
    lut[0] = 0
    return lut


# ---------------------------------------------------------------------- shared data side
@dataclass(frozen=True, repr=False)
class AlignmentPair:
    """One fixed/moving pair ready for episodes.

    Attributes:
        case_id: the fixed case (``"fixed->moving"`` for two-volume pairs).
        fixed: the fixed pyramid (uint8 levels).
        moving: the moving pyramid (uint8 levels), or the atlas for deformable registration.
        center_lps_mm: centre of the observation grid and of rotations.
        grid_origins_lps_mm: per level, the LPS point of observation-grid voxel (0, 0, 0).
        fixed_patches: per level, the fixed channel of the observation (fixed for an episode).
        control_fixed_lps_mm: ``(n, 3)`` control points in the fixed volume.
        control_moving_lps_mm: ``(n, 3)`` where they truly are in the moving volume.
        truth: the best parameters (float, in parameter units) the model can reach.
        extras: family-specific data (e.g. SDM modes at the control points).
    """

    case_id: str
    fixed: Pyramid
    moving: Pyramid
    center_lps_mm: NDArray[np.float64]
    grid_origins_lps_mm: tuple[NDArray[np.float64], ...]
    fixed_patches: tuple[NDArray[np.uint8], ...]
    control_fixed_lps_mm: NDArray[np.float64]
    control_moving_lps_mm: NDArray[np.float64]
    truth: NDArray[np.float64]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.fixed.nbytes + self.moving.nbytes + sum(p.nbytes for p in self.fixed_patches)


class AlignmentWorld:
    """Pairs of one split, observation rendering and errors, for any parameterised alignment.

    Subclasses define the parameters (:attr:`param_names`, :meth:`build_pair`,
    :meth:`render_moving`, :meth:`errors_mm`); this class holds levels, the observation grid,
    the variant table and the pose encoding.
    """

    param_names: tuple[str, ...] = ()
    family = "alignment"

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        levels_mm: Sequence[float],
        obs_size: int,
        steps: Sequence[Sequence[float]],
        preset: str | None,
        variants_per_case: int,
        seed: int,
        case_ids: Sequence[str] | None,
    ) -> None:
        levels = tuple(float(s) for s in levels_mm)
        if not levels or any(s <= 0 for s in levels) or any(b >= a for a, b in pairwise(levels)):
            raise ValueError(
                f"levels_mm: expected positive spacings from coarse to fine, got {list(levels_mm)}"
            )
        if isinstance(obs_size, bool) or not isinstance(obs_size, (int, np.integer)) or obs_size < 9:
            raise ValueError(f"obs_size: expected an integer >= 9 voxels (e.g. 25 or 32), got {obs_size!r}")
        step_table = np.asarray(steps, dtype=np.float64)
        if step_table.shape != (len(levels), len(self.param_names)) or np.any(step_table <= 0):
            raise ValueError(
                f"steps: expected one positive step per level ({len(levels)}) and parameter "
                f"({len(self.param_names)}: {', '.join(self.param_names)}), got {np.asarray(steps).tolist()}"
            )
        if preset is not None and preset not in ("ct", "ct_soft", "mr"):
            raise ValueError(f"preset: expected 'ct', 'ct_soft', 'mr' or None (by modality), got {preset!r}")
        if variants_per_case < 1:
            raise ValueError(f"variants_per_case: expected >= 1, got {variants_per_case}")
        self.dataset = dataset
        self.split = split
        self.cases = dataset.select(split, case_ids)
        self.levels_mm = levels
        self.obs_size = int(obs_size)
        self.preset = preset
        self.seed = int(seed)
        # Steps in integer thousandths; multiples of 1/UNIT keep states exactly representable.
        self.steps_int = np.maximum(1, np.rint(step_table * UNIT)).astype(np.int64)
        self.variants_per_case = int(variants_per_case)
        self._key: tuple | None = None
        self.variant_table = np.array(
            [(c, v) for c in range(len(self.cases)) for v in range(self.variants_per_case)], dtype=np.int64
        )

    # ------------------------------------------------------------------ sizes and spaces
    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_actions(self) -> int:
        return 2 * self.n_params

    @property
    def n_levels(self) -> int:
        return len(self.levels_mm)

    @property
    def n_variants(self) -> int:
        return len(self.variant_table)

    @property
    def pose_dim(self) -> int:
        return 2 + self.n_params

    def observation_space(self) -> spaces.Dict:
        size = self.obs_size
        return spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (2, size, size, size), np.uint8),
                "level": spaces.Discrete(self.n_levels),
            }
        )

    def action_delta(self, action: int, level: int) -> tuple[int, int]:
        """``(parameter index, signed integer step)`` of ``action`` at ``level``."""
        index, negative = divmod(int(action), 2)
        step = int(self.steps_int[level, index])
        return index, -step if negative else step

    # ------------------------------------------------------------------ pairs
    def pair(self, index: int) -> AlignmentPair:
        case_index, variant = (int(v) for v in self.variant_table[index])
        case = self.cases[case_index]
        if self._key is None:  # subclasses finish their settings after this base __init__
            self._key = self._pair_key()
        key = (self._key, variant)
        return self.dataset.derived(case, key, lambda subject: self.build_pair(subject, variant))

    def pair_index(self, case_id: str, variant: int = 0) -> int:
        for index, (case_index, v) in enumerate(self.variant_table):
            if self.cases[case_index].case_id == case_id and v == variant:
                return index
        raise KeyError(f"split {self.split!r} has no case {case_id!r} (variant {variant})")

    def _pair_key(self) -> tuple:
        return (self.family, self.levels_mm, self.obs_size, self.preset, self.seed)

    def build_pair(self, subject: Subject, variant: int) -> AlignmentPair:
        raise NotImplementedError

    def preset_for(self, subject: Subject) -> str:
        return self.preset or _PRESET_BY_MODALITY[subject.case.modality]

    def check_resolution(self, volume: Volume, what: str) -> None:
        finest = float(volume.spacing_xyz_mm.min())
        if self.levels_mm[-1] < finest * 0.99:
            raise ValueError(
                f"levels_mm: the finest level ({self.levels_mm[-1]:g} mm) is finer than {what} "
                f"(spacing {volume.spacing_xyz_mm.round(3).tolist()} mm); "
                f"use a finest level >= {finest:.3g} mm"
            )

    def observation_grids(
        self, fixed: Pyramid, center_lps_mm: NDArray
    ) -> tuple[tuple[NDArray[np.float64], ...], tuple[NDArray[np.uint8], ...]]:
        """Per level: the LPS origin of the observation grid and the fixed channel on it."""
        origins, patches = [], []
        half = self.obs_size // 2
        for level_index in range(self.n_levels):
            centre_zyx = fixed.index_zyx(level_index, center_lps_mm)
            patches.append(crop_patch(fixed.levels[level_index].voxels, centre_zyx, self.obs_size))
            origins.append(fixed.lps_of_index(level_index, centre_zyx - half))
        return tuple(origins), tuple(patches)

    def grid_points(self, pair: AlignmentPair, level: int) -> NDArray[np.float64]:
        """LPS mm ``(S, S, S, 3)`` of the observation grid's voxel centres at ``level``."""
        return _grid_points(pair.grid_origins_lps_mm[level], self.obs_size, self.levels_mm[level])

    # ------------------------------------------------------------------ observations and errors
    def render_moving(self, pair: AlignmentPair, level: int, params: NDArray[np.int64]) -> NDArray[np.uint8]:
        raise NotImplementedError

    def errors_mm(self, pair: AlignmentPair, params: NDArray) -> NDArray[np.float64]:
        """Mean control-point error (mm) of parameter rows ``(B, n_params)`` in integer thousandths."""
        raise NotImplementedError

    def observation(self, pair: AlignmentPair, level: int, params: NDArray[np.int64]) -> dict[str, Any]:
        patch = np.stack([pair.fixed_patches[level], self.render_moving(pair, level, params)])
        return {"patch": patch, "level": int(level)}

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        """Batch of observations rebuilt from poses ``(B, 2 + n_params)``: ``[pair, level, params...]``."""
        poses = np.asarray(poses)
        size = self.obs_size
        patch = np.empty((len(poses), 2, size, size, size), dtype=np.uint8)
        for row, pose in enumerate(poses):
            pair = self.pair(int(pose[0]))
            level = int(pose[1])
            patch[row, 0] = pair.fixed_patches[level]
            patch[row, 1] = self.render_moving(pair, level, pose[2:].astype(np.int64))
        return {"patch": patch, "level": poses[:, 1].astype(np.int64)}

    def start_params(self, pair: AlignmentPair, level: int, rng: np.random.Generator) -> NDArray[np.int64]:
        raise NotImplementedError

    def reward_scale(self, level: int) -> float:
        """Error change (mm) that one step makes at most, roughly: rewards are about [-1, 1]."""
        raise NotImplementedError

    def candidate_rewards(self, pair: AlignmentPair, level: int, params: NDArray[np.int64]) -> NDArray:
        """The reward of every action from ``params`` at ``level`` (``(n_actions,)``), from the truth."""
        candidates = np.repeat(np.asarray(params, np.int64)[np.newaxis], self.n_actions, axis=0)
        for action in range(self.n_actions):
            index, delta = self.action_delta(action, level)
            candidates[action, index] += delta
        before = self.errors_mm(pair, params)[0]
        return (before - self.errors_mm(pair, candidates)) / self.reward_scale(level)

    def describe(self, params: NDArray[np.int64]) -> dict[str, float]:
        return {name: float(v) / UNIT for name, v in zip(self.param_names, params, strict=True)}


# ---------------------------------------------------------------------- rigid world
class RigidWorld(AlignmentWorld):
    """Rigid pairs: a volume and a rigidly moved, optionally re-contrasted copy, or two volumes.

    Args:
        dataset, split, case_ids: the cases.
        levels_mm: observation spacings, coarse to fine.
        obs_size: edge of the cubic observation grid (voxels).
        translation_steps_mm, rotation_steps_deg: action sizes per level.
        misalignment_mm, misalignment_deg: range (uniform, per parameter) of the initial
            misalignment drawn at the coarsest level.
        preset: intensity preset, ``None`` to pick it from each case's modality.
        contrast: ``"same"``, ``"multimodal"`` (moving re-contrasted by :func:`multimodal_lut`)
            or ``"mixed"`` (each variant one or the other).
        partial_fov: probability that a variant's moving volume keeps only a 40-70 % slab.
        pairing: ``"self"`` (each case with a moved copy of itself; ground truth exact) or
            ``"landmarks"`` (each case with the next case of its split; ground truth from their
            shared landmarks, >= 3 needed).
        variants_per_case: moved copies per case (variant 0 is unmoved; the rest carry a
            random rigid ground truth within ``variant_motion``, new noise and contrast).
        variant_motion: ``(mm, deg)`` range of the variants' ground-truth motion.
        control_spacing_mm: lattice of the control points over the body (self pairs).
        seed: base seed of the variants.
    """

    param_names = RIGID_PARAM_NAMES
    family = "rigid"

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        levels_mm: Sequence[float] = (8.0, 4.0, 2.0),
        obs_size: int = 25,
        translation_steps_mm: Sequence[float] = (6.0, 2.0, 0.5),
        rotation_steps_deg: Sequence[float] = (6.0, 2.0, 0.5),
        misalignment_mm: float = 30.0,
        misalignment_deg: float = 30.0,
        preset: str | None = None,
        contrast: str = "same",
        partial_fov: float = 0.0,
        pairing: str = "self",
        variants_per_case: int = 1,
        variant_motion: tuple[float, float] = (20.0, 15.0),
        control_spacing_mm: float = 40.0,
        seed: int = 0,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast: expected one of {CONTRASTS}, got {contrast!r}")
        if pairing not in ("self", "landmarks"):
            raise ValueError(f"pairing: expected 'self' or 'landmarks', got {pairing!r}")
        if not 0.0 <= partial_fov <= 1.0:
            raise ValueError(f"partial_fov: expected a probability in [0, 1], got {partial_fov}")
        if not (misalignment_mm >= 0 and misalignment_deg >= 0):
            raise ValueError(
                f"misalignment: expected ranges >= 0, got {misalignment_mm} mm, {misalignment_deg} deg"
            )
        if not control_spacing_mm > 0:
            raise ValueError(f"control_spacing_mm: expected > 0, got {control_spacing_mm}")
        translation = [float(v) for v in translation_steps_mm]
        rotation = [float(v) for v in rotation_steps_deg]
        if len(translation) != len(levels_mm) or len(rotation) != len(levels_mm):
            raise ValueError(
                f"translation_steps_mm / rotation_steps_deg: expected one step per level ({len(levels_mm)}), "
                f"got {len(translation)} and {len(rotation)}"
            )
        steps = [[t, t, t, r, r, r] for t, r in zip(translation, rotation, strict=True)]
        super().__init__(
            dataset, split, levels_mm, obs_size, steps, preset, variants_per_case, seed, case_ids
        )
        self.misalignment = (float(misalignment_mm), float(misalignment_deg))
        self.contrast = contrast
        self.partial_fov = float(partial_fov)
        self.pairing = pairing
        self.variant_motion = (float(variant_motion[0]), float(variant_motion[1]))
        self.control_spacing_mm = float(control_spacing_mm)
        if pairing == "landmarks" and len(self.cases) < 2:
            raise ValueError(
                f"pairing='landmarks': split {split!r} needs >= 2 cases with shared landmarks, "
                f"has {len(self.cases)}"
            )

    def _pair_key(self) -> tuple:
        return (
            *super()._pair_key(),
            self.contrast,
            self.partial_fov,
            self.pairing,
            self.variant_motion,
            self.control_spacing_mm,
        )

    # ------------------------------------------------------------------ building pairs
    def build_pair(self, subject: Subject, variant: int) -> AlignmentPair:
        volume = subject.volume
        self.check_resolution(volume, f"case {subject.case.case_id!r}")
        preset = self.preset_for(subject)
        fixed = self.dataset.derived(
            subject.case,
            ("rigid-fixed", self.levels_mm, preset),
            lambda s: build_pyramid(s.volume, self.levels_mm, preset, progressive=True),
        )
        center = _body_centre(fixed.levels[0])
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, stable_hash(subject.case.case_id), variant])
        )
        if self.pairing == "landmarks":
            moving_subject = self._partner(subject)
            self.check_resolution(moving_subject.volume, f"case {moving_subject.case.case_id!r}")
            names = [n for n in subject.landmarks if n in moving_subject.landmarks]
            if len(names) < 3:
                raise ValueError(
                    f"pairing='landmarks': cases {subject.case.case_id!r} and "
                    f"{moving_subject.case.case_id!r} "
                    f"share {len(names)} landmark(s); at least 3 are needed to define the ground truth"
                )
            fixed_points = np.stack([subject.landmarks[n] for n in names])
            moving_points = np.stack([moving_subject.landmarks[n] for n in names])
            moving = build_pyramid(
                moving_subject.volume, self.levels_mm, self.preset_for(moving_subject), progressive=True
            )
            case_id = f"{subject.case.case_id}->{moving_subject.case.case_id}"
        else:
            truth = np.zeros(6)
            if variant > 0:
                mm, deg = self.variant_motion
                truth = np.concatenate([rng.uniform(-mm, mm, 3), rng.uniform(-deg, deg, 3)])
            truth_transform = euler_transform(truth, center)
            # moving(T(p)) == fixed(p): the moving volume samples the fixed one through T^-1.
            moving = build_pyramid(
                volume, self.levels_mm, preset, transform=truth_transform.GetInverse(), progressive=True
            )
            fixed_points = _control_points(fixed.levels[0], self.control_spacing_mm)
            moving_points = apply_rigid(truth, center, fixed_points)
            case_id = subject.case.case_id
        moving = self._vary(moving, variant, rng)
        truth, _ = rigid_fit(fixed_points, moving_points, center)
        origins, patches = self.observation_grids(fixed, center)
        return AlignmentPair(
            case_id, fixed, moving, center, origins, patches, fixed_points, moving_points, truth
        )

    def _partner(self, subject: Subject) -> Subject:
        ids = [case.case_id for case in self.cases]
        position = ids.index(subject.case.case_id)
        return self.dataset.load(self.cases[(position + 1) % len(self.cases)])

    def _vary(self, moving: Pyramid, variant: int, rng: np.random.Generator) -> Pyramid:
        """Contrast, noise and field of view of the moving volume (deterministic per variant)."""
        multimodal = self.contrast == "multimodal" or (self.contrast == "mixed" and variant % 2 == 1)
        lut = multimodal_lut(rng, jitter=0.08 if variant > 0 else 0.0) if multimodal else None
        crop = variant > 0 and rng.random() < self.partial_fov
        keep = rng.uniform(0.4, 0.7)
        start = rng.uniform(0.0, 1.0 - keep)
        noise_seed = int(rng.integers(2**31))
        if lut is None and not crop and variant == 0:
            return moving
        levels = []
        for index, level in enumerate(moving.levels):
            voxels = level.voxels if lut is None else lut[level.voxels]
            if variant > 0:
                noise = np.random.default_rng(noise_seed + index).normal(0.0, 4.0, voxels.shape)
                voxels = np.where(level.voxels > 0, np.clip(voxels + noise, 1, 255), 0)
            voxels = np.asarray(voxels, dtype=np.uint8)
            if crop:
                depth = voxels.shape[0]
                z0, z1 = int(start * depth), int((start + keep) * depth)
                voxels = voxels.copy()
                voxels[:z0] = 0
                voxels[z1:] = 0
            levels.append(level.with_voxels(voxels))
        return Pyramid(tuple(levels), moving.spacings_mm)

    # ------------------------------------------------------------------ rendering and errors
    def render_moving(self, pair: AlignmentPair, level: int, params: NDArray[np.int64]) -> NDArray[np.uint8]:
        """``moving(T(p))`` on the observation grid (trilinear; 0 outside the moving volume)."""
        values = np.asarray(params, dtype=np.float64) / UNIT
        spacing = self.levels_mm[level]
        moving_level = pair.moving.levels[level]
        rotation = euler_matrix(values[3:6])
        center = pair.center_lps_mm
        # Moving index (x, y, z) = (R (o + s i - c) + c + t - o_m) / s_m, affine in grid index i.
        matrix_xyz = rotation * (spacing / self.levels_mm[level])
        offset_xyz = (
            rotation @ (pair.grid_origins_lps_mm[level] - center)
            + center
            + values[:3]
            - moving_level.origin_lps_mm
        ) / spacing
        out = ndimage.affine_transform(
            moving_level.voxels,
            matrix_xyz[::-1, ::-1],
            offset=offset_xyz[::-1],
            output_shape=(self.obs_size,) * 3,
            output=np.float32,
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
        )
        return np.rint(out).astype(np.uint8)

    def errors_mm(self, pair: AlignmentPair, params: NDArray) -> NDArray[np.float64]:
        rows = np.atleast_2d(np.asarray(params, dtype=np.float64)) / UNIT
        errors = np.empty(len(rows))
        for i, values in enumerate(rows):
            mapped = apply_rigid(values, pair.center_lps_mm, pair.control_fixed_lps_mm)
            errors[i] = float(np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm, axis=1)))
        return errors

    def start_params(self, pair: AlignmentPair, level: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """The truth plus a random misalignment: the full range at level 0, else ~2 coarser steps."""
        if level == 0:
            mm, deg = self.misalignment
        else:
            mm = 1.5 * self.steps_int[level - 1, 0] / UNIT
            deg = 1.5 * self.steps_int[level - 1, 3] / UNIT
        offset = np.concatenate([rng.uniform(-mm, mm, 3), rng.uniform(-deg, deg, 3)])
        return np.rint((pair.truth + offset) * UNIT).astype(np.int64)

    def reward_scale(self, level: int) -> float:
        return float(self.steps_int[level, 0]) / UNIT

    def pair_from_volumes(
        self,
        fixed: Volume,
        moving: Volume,
        fixed_points: NDArray | None = None,
        moving_points: NDArray | None = None,
        preset: str = "ct",
        moving_preset: str | None = None,
    ) -> AlignmentPair:
        """A pair of two volumes outside any dataset (test-time registration).

        Control points with known correspondences give the error; without them the error is NaN
        and the truth is unknown (the identity parameters stand in for it).
        """
        self.check_resolution(fixed, "the fixed volume")
        self.check_resolution(moving, "the moving volume")
        fixed_pyramid = build_pyramid(fixed, self.levels_mm, preset, progressive=True)
        moving_pyramid = build_pyramid(moving, self.levels_mm, moving_preset or preset, progressive=True)
        center = _body_centre(fixed_pyramid.levels[0])
        if fixed_points is None or moving_points is None:
            fixed_points = _control_points(fixed_pyramid.levels[0], self.control_spacing_mm)
            moving_points = np.full_like(fixed_points, np.nan)
            truth = np.zeros(6)
        else:
            fixed_points = np.asarray(fixed_points, np.float64).reshape(-1, 3)
            moving_points = np.asarray(moving_points, np.float64).reshape(-1, 3)
            if len(fixed_points) != len(moving_points) or len(fixed_points) < 3:
                raise ValueError(
                    f"control points: expected >= 3 matching fixed/moving points, got "
                    f"{len(fixed_points)} and {len(moving_points)}"
                )
            truth, _ = rigid_fit(fixed_points, moving_points, center)
        origins, patches = self.observation_grids(fixed_pyramid, center)
        return AlignmentPair(
            fixed.name or "fixed",
            fixed_pyramid,
            moving_pyramid,
            center,
            origins,
            patches,
            fixed_points,
            moving_points,
            truth,
        )

    def transform(self, pair: AlignmentPair, params: NDArray[np.int64]) -> sitk.Euler3DTransform:
        """The SimpleITK transform (fixed -> moving points) of integer parameters."""
        return euler_transform(np.asarray(params, dtype=np.float64) / UNIT, pair.center_lps_mm)


def _body_mask(level: Volume) -> NDArray[np.bool_]:
    voxels = level.voxels
    threshold = max(20.0, 0.25 * float(np.percentile(voxels, 99)))
    mask = voxels > threshold
    return mask if mask.any() else np.ones_like(mask)


def _body_centre(level: Volume) -> NDArray[np.float64]:
    """LPS mm of the centroid of the body (voxels clearly brighter than air) of a level."""
    index_zyx = np.argwhere(_body_mask(level)).mean(axis=0)
    return level.index_to_lps(index_zyx[::-1])


def _control_points(level: Volume, spacing_mm: float) -> NDArray[np.float64]:
    """Body voxels on a lattice of ``spacing_mm`` (at least 8 points): spread over the anatomy."""
    mask = _body_mask(level)
    stride = max(1, round(spacing_mm / float(level.spacing_xyz_mm[0])))
    while True:
        sub = np.argwhere(mask[::stride, ::stride, ::stride]) * stride
        if len(sub) >= 8 or stride == 1:
            break
        stride = max(1, stride // 2)
    return level.index_to_lps(sub[:, ::-1].astype(np.float64))


def _grid_points(origin_lps_mm: NDArray, size: int, spacing_mm: float) -> NDArray[np.float64]:
    """LPS mm ``(S, S, S, 3)`` of an axis-aligned cubic grid's voxel centres (axes z, y, x)."""
    axis = np.arange(size, dtype=np.float64) * spacing_mm
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    return origin_lps_mm + np.stack([xx, yy, zz], axis=-1)


# ---------------------------------------------------------------------- episodes
class AlignmentEnv(gym.Env):
    """Episode logic shared by the rigid and SDM registration envs (see their docstrings)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        world: AlignmentWorld,
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        if schedule not in ("random", "coarse"):
            raise ValueError(f"schedule: expected 'random' or 'coarse', got {schedule!r}")
        if not tre_threshold_mm > 0:
            raise ValueError(f"tre_threshold_mm: expected > 0, got {tre_threshold_mm}")
        self.world = world
        self.schedule = schedule
        self.tre_threshold_mm = float(tre_threshold_mm)
        self.render_mode = render_mode
        self.observation_space = world.observation_space()
        self.action_space = spaces.Discrete(world.n_actions)
        self._pair: AlignmentPair | None = None
        self._pair_index = 0
        self._level = 0
        self._params = np.zeros(world.n_params, np.int64)
        self._error = 0.0
        self._pose = np.zeros(world.pose_dim, np.int32)
        self._recent: deque[tuple[int, ...]] = deque(maxlen=4)
        self._trajectory: list[float] = []

    @classmethod
    def from_world(
        cls,
        world: AlignmentWorld,
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
    ) -> AlignmentEnv:
        """An env of this class on an existing world (shares its pairs: one cache for many envs)."""
        env = cls.__new__(cls)
        AlignmentEnv.__init__(env, world, schedule, tre_threshold_mm, render_mode)
        return env

    # ------------------------------------------------------------------ helpers for users
    @property
    def levels_mm(self) -> tuple[float, ...]:
        return self.world.levels_mm

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        return self.world.observations_from_poses(poses)

    def pose(self) -> NDArray[np.int32]:
        return self._pose.copy()

    @property
    def params(self) -> NDArray[np.float64]:
        """Current parameters in their units (mm, degrees or std-devs)."""
        return self._params / UNIT

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        world = self.world
        if "case_id" in options:
            self._pair_index = world.pair_index(str(options.pop("case_id")), int(options.pop("variant", 0)))
        else:
            self._pair_index = int(self.np_random.integers(world.n_variants))
        pair = world.pair(self._pair_index)
        if "level" in options:
            level = int(options.pop("level"))
            if not 0 <= level < world.n_levels:
                raise ValueError(f"reset: level must be in 0..{world.n_levels - 1}, got {level}")
        else:
            level = 0 if self.schedule == "coarse" else int(self.np_random.integers(world.n_levels))
        if "params" in options:
            values = np.asarray(options.pop("params"), dtype=np.float64).reshape(-1)
            if values.shape != (world.n_params,) or not np.all(np.isfinite(values)):
                raise ValueError(
                    f"reset: params must be {world.n_params} finite values ({', '.join(world.param_names)}), "
                    f"got {values.tolist()}"
                )
            params = np.rint(values * UNIT).astype(np.int64)
        elif "offset" in options:
            offset = np.asarray(options.pop("offset"), dtype=np.float64).reshape(-1)
            if offset.shape != (world.n_params,):
                raise ValueError(f"reset: offset must have {world.n_params} values, got {offset.tolist()}")
            params = np.rint((pair.truth + offset) * UNIT).astype(np.int64)
        else:
            params = world.start_params(pair, level, self.np_random)
        if options:
            raise ValueError(
                f"reset: unknown option(s) {sorted(options)}; "
                "expected case_id, variant, level, params, offset"
            )
        self._pair = pair
        self._level = level
        self._set_params(params)
        self._recent = deque([tuple(int(v) for v in params)], maxlen=4)
        self._trajectory = [self._error]
        self._update_pose()
        return self._observation(), self._info()

    def step(self, action: int):
        if self._pair is None:
            raise RuntimeError("step() called before reset()")
        previous_pose = self._pose
        index, delta = self.world.action_delta(int(action), self._level)
        params = self._params.copy()
        params[index] += delta
        before = self._error
        self._set_params(params)
        reward = (before - self._error) / self.world.reward_scale(self._level)
        key = tuple(int(v) for v in params)
        oscillating = key in self._recent
        self._recent.append(key)
        terminated = False
        finest = self._level + 1 == self.world.n_levels
        if self.schedule == "random":
            terminated = finest and self._error < self.tre_threshold_mm
        elif oscillating:
            if finest:
                terminated = True
            else:
                self._level += 1
                self._recent = deque([key], maxlen=4)
        self._trajectory.append(self._error)
        self._update_pose()
        info = self._info()
        info["previous_pose"] = previous_pose
        return self._observation(), float(reward), bool(terminated), False, info

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode != "rgb_array" or self._pair is None:
            return None
        from envs.render import overlay_slices

        observation = self._observation()["patch"]
        return overlay_slices(observation[0], observation[1])

    # ------------------------------------------------------------------ internals
    def _set_params(self, params: NDArray[np.int64]) -> None:
        assert self._pair is not None
        self._params = np.asarray(params, dtype=np.int64)
        self._error = float(self.world.errors_mm(self._pair, self._params)[0])

    def _observation(self) -> dict[str, Any]:
        assert self._pair is not None
        return self.world.observation(self._pair, self._level, self._params)

    def _update_pose(self) -> None:
        self._pose = np.concatenate([[self._pair_index, self._level], self._params]).astype(np.int32)

    def _info(self) -> dict[str, Any]:
        assert self._pair is not None
        return {
            "error_mm": self._error,
            "level": self._level,
            "params": self._params / UNIT,
            "case_id": self._pair.case_id,
            "pose": self._pose,
        }


class RigidRegistrationEnv(AlignmentEnv):
    """Rigidly align a moving volume to a fixed one with 12 discrete actions (Liao et al. 2017).

    ## Observation Space
    ``Dict`` with ``"patch"``: ``Box(0, 255, (2, S, S, S), uint8)``: channel 0 the fixed volume,
    channel 1 the moving volume under the current transform, both on an ``S^3`` grid (axes
    z, y, x; +z superior, +y posterior, +x patient left) centred on the body at the current
    level's spacing (``levels_mm``); 0 outside a field of view. ``"level"``: ``Discrete``.

    ## Action Space
    ``Discrete(12)``: ``2i`` adds and ``2i + 1`` subtracts the level's step on parameter ``i``
    of ``(tx, ty, tz, rx, ry, rz)``: translations in mm along LPS x, y, z and rotations in
    degrees about axes through the body centre (see ``RIGID_ACTION_NAMES``). Steps shrink
    level by level (``translation_steps_mm``, ``rotation_steps_deg``).

    ## Rewards
    The decrease of the target registration error (mean control-point distance, mm) divided
    by the level's translation step: about ``[-1, 1]``.

    ## Starting State
    A pair is drawn; with ``schedule="random"`` so is the level: at the coarsest level the
    transform is the truth plus a uniform misalignment of up to ``misalignment_mm`` /
    ``misalignment_deg`` per parameter, at finer levels within 1.5 steps of the coarser
    level. ``reset`` options ``case_id``, ``variant``, ``level`` and ``params`` (absolute) or
    ``offset`` (from the truth) fix any of these.

    ## Episode End
    ``schedule="random"`` (training): terminated when the error at the finest level is below
    ``tre_threshold_mm``, else truncated by the time limit (``max_episode_steps``).
    ``schedule="coarse"`` (test): revisiting one of the last 4 transforms (oscillation) moves
    to the next finer level; oscillating at the finest level terminates.

    ## Info
    ``error_mm`` (TRE), ``level``, ``params`` (mm and degrees), ``case_id``, ``pose`` and
    ``previous_pose`` (int32 ``[pair, level, params in thousandths]``, from which
    :meth:`observations_from_poses` rebuilds observations exactly).

    ## Arguments
    ``dataset`` (a :class:`~envs.data.Dataset`, a manifest path, or ``None`` for in-memory
    phantoms: 8 train, 2 val, 2 test at 2 mm), ``split``, ``schedule``, ``tre_threshold_mm``,
    ``render_mode`` (``"rgb_array"``: fixed/moving overlay), and every :class:`RigidWorld`
    argument (``levels_mm``, ``obs_size``, steps, misalignment, ``contrast``, ``partial_fov``,
    ``pairing``, ``variants_per_case``, ...).

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        dataset: Dataset | str | None = None,
        split: str = "train",
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
        **world_kwargs: Any,
    ) -> None:
        if dataset is None:
            dataset = Dataset.phantoms(8, 2, 2, seed=0)
        elif not isinstance(dataset, Dataset):
            dataset = Dataset.from_manifest(dataset)
        super().__init__(RigidWorld(dataset, split, **world_kwargs), schedule, tre_threshold_mm, render_mode)

    def transform(self) -> sitk.Euler3DTransform:
        """The current transform (fixed -> moving points) as a SimpleITK transform."""
        assert self._pair is not None
        return self.world.transform(self._pair, self._params)  # type: ignore[attr-defined]
