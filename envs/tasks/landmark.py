"""Anatomical landmark detection as a Gymnasium environment (Ghesu et al.; Alansary et al.).

The data side (:class:`LandmarkWorld`: cases, augmented variants, pyramids, patch rendering)
is separate from the episode logic (:class:`LandmarkEnv`), so that a replay buffer that stores
poses and the test-time search can render observations without an env.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core import Pyramid, build_pyramid, crop_patch, stable_hash
from envs.data import AugmentConfig, Dataset, Subject, augmented_pyramid

__all__ = [
    "ACTIONS_ZYX",
    "ACTION_NAMES",
    "LandmarkEnv",
    "LandmarkWorld",
    "Variant",
]

# Canonical levels have identity direction in LPS: +z superior, +y posterior, +x left.
ACTIONS_ZYX: NDArray[np.int64] = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int64
)
ACTION_NAMES: tuple[str, ...] = ("superior", "inferior", "posterior", "anterior", "left", "right")
_ACTION_TUPLES: tuple[tuple[int, int, int], ...] = tuple(tuple(int(v) for v in row) for row in ACTIONS_ZYX)
_PRESET_BY_MODALITY = {"ct": "ct", "mr": "mr"}
# A landmark absent from a case (outside its field of view) has a NaN target.
_ABSENT = np.nan


@dataclass(frozen=True, repr=False)
class Variant:
    """One (case, augmentation) pair ready for episodes: pyramid and targets per level."""

    case_id: str
    pyramid: Pyramid
    landmarks_lps_mm: NDArray[np.float64]  # (n_landmarks, 3), NaN rows for absent landmarks
    targets_zyx: tuple[NDArray[np.float64], ...]  # per level: (n_landmarks, 3) continuous voxel index
    start_candidates: NDArray[np.int64]  # flat indices of body voxels at the coarsest level
    body_centre_zyx: NDArray[np.int64]  # the body voxel nearest the body's centroid, coarsest level

    @property
    def nbytes(self) -> int:
        return self.pyramid.nbytes + self.start_candidates.nbytes

    def present(self) -> NDArray[np.bool_]:
        return ~np.isnan(self.landmarks_lps_mm[:, 0])


class LandmarkWorld:
    """Cases of one split, their augmented variants and patch rendering.

    Args:
        dataset: the dataset; its cache holds the pyramids.
        split: which split's cases to use.
        landmark_names: the landmarks, in the order of the observation's ``landmark`` index.
        levels_mm: isotropic level spacings, coarse to fine.
        patch_size: edge of the cubic patch in voxels (odd, >= 5).
        frames: number of positions in the observation history (most recent first).
        preset: intensity preset, or ``None`` to pick it from each case's modality.
        augment: augmentation ranges; ``None`` or ``variants_per_case=0`` for none.
        seed: base seed of the augmentation variants (fixed per world, so poses stay valid).
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        landmark_names: Sequence[str],
        levels_mm: Sequence[float],
        patch_size: int,
        frames: int,
        preset: str | None,
        augment: AugmentConfig | None,
        seed: int = 0,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
            raise ValueError(f"patch_size: expected an odd integer >= 5, got {patch_size!r}")
        if patch_size < 5 or patch_size % 2 == 0:
            raise ValueError(f"patch_size: expected an odd integer >= 5 (e.g. 25 or 45), got {patch_size}")
        if not 1 <= int(frames) <= 16:
            raise ValueError(f"frames: expected 1..16 positions of history, got {frames}")
        levels = tuple(float(s) for s in levels_mm)
        if not levels or any(s <= 0 for s in levels) or any(b >= a for a, b in pairwise(levels)):
            raise ValueError(
                f"levels_mm: expected positive spacings from coarse to fine, got {list(levels_mm)}"
            )
        if preset is not None and preset not in ("ct", "ct_soft", "mr"):
            raise ValueError(f"preset: expected 'ct', 'ct_soft', 'mr' or None (by modality), got {preset!r}")
        self.dataset = dataset
        self.split = split
        self.cases = dataset.select(split, case_ids)
        self.landmark_names = tuple(landmark_names)
        if not self.landmark_names:
            raise ValueError(f"dataset {dataset.source}: no landmarks to seek; give landmark files or names")
        self.levels_mm = levels
        self.patch_size = int(patch_size)
        self.frames = int(frames)
        self.preset = preset
        self.augment = augment if augment is not None and augment.variants_per_case > 0 else None
        self.seed = int(seed)
        per_case = 1 + (self.augment.variants_per_case if self.augment else 0)
        # What makes two worlds' variants identical; built once, since variant() runs for every
        # pose of every replay sample.
        self._variant_key = (
            "landmark-variant",
            self.levels_mm,
            self.preset,
            self.landmark_names,
            self.augment,
            self.seed,
        )
        self.variant_table: NDArray[np.int64] = np.array(
            [(case_index, aug_id) for case_index in range(len(self.cases)) for aug_id in range(per_case)],
            dtype=np.int64,
        )

    @property
    def n_variants(self) -> int:
        return len(self.variant_table)

    @property
    def n_levels(self) -> int:
        return len(self.levels_mm)

    @property
    def pose_dim(self) -> int:
        return 3 + 3 * self.frames

    def observation_space(self) -> spaces.Dict:
        size = self.patch_size
        return spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (self.frames, size, size, size), np.uint8),
                "landmark": spaces.Discrete(len(self.landmark_names)),
                "level": spaces.Discrete(self.n_levels),
            }
        )

    def variant_index(self, case_id: str, aug_id: int = 0) -> int:
        for index, (case_index, aug) in enumerate(self.variant_table):
            if self.cases[case_index].case_id == case_id and aug == aug_id:
                return index
        raise KeyError(f"split {self.split!r} has no case {case_id!r} (augmentation {aug_id})")

    def variant(self, index: int) -> Variant:
        case_index, aug_id = (int(v) for v in self.variant_table[index])
        case = self.cases[case_index]
        key = (self._variant_key, aug_id)
        return self.dataset.derived(case, key, lambda subject: self._build_variant(subject, aug_id))

    def _build_variant(self, subject: Subject, aug_id: int) -> Variant:
        volume = subject.volume
        finest_data_mm = float(volume.spacing_xyz_mm.min())
        if self.levels_mm[-1] < finest_data_mm * 0.99:
            raise ValueError(
                f"levels_mm: the finest level ({self.levels_mm[-1]:g} mm) is finer than the data of case "
                f"{subject.case.case_id!r} (spacing {volume.spacing_xyz_mm.round(3).tolist()} mm); "
                f"use a finest level >= {finest_data_mm:.3g} mm"
            )
        preset = self.preset or _PRESET_BY_MODALITY[subject.case.modality]
        landmarks = {
            name: subject.landmarks[name] for name in self.landmark_names if name in subject.landmarks
        }
        if aug_id == 0 or self.augment is None:
            pyramid = build_pyramid(volume, self.levels_mm, preset)
        else:
            seed = int(
                np.random.SeedSequence([self.seed, stable_hash(subject.case.case_id), aug_id]).generate_state(
                    1
                )[0]
            )
            pyramid, landmarks = augmented_pyramid(
                volume, landmarks, self.levels_mm, preset, self.augment, seed
            )
        points = np.full((len(self.landmark_names), 3), _ABSENT)
        for row, name in enumerate(self.landmark_names):
            if name in landmarks:
                points[row] = landmarks[name]
        targets = []
        for level in pyramid.levels:
            target = level.lps_to_index(points)[:, ::-1]
            # Landmarks outside the field of view cannot be reached: treat as absent.
            # Strictly inside the grid, so that rounding never yields a voxel outside it.
            inside = np.all((target >= -0.5) & (target < np.array(level.shape_zyx) - 0.5), axis=1)
            target[~inside] = _ABSENT
            targets.append(target)
        # A landmark outside any level's grid is absent everywhere: no NaN rewards at some level.
        absent = np.any([np.isnan(target[:, 0]) for target in targets], axis=0)
        points[absent] = _ABSENT
        for target in targets:
            target[absent] = _ABSENT
        coarse = pyramid.levels[0].voxels
        # Start inside the body: clearly brighter than air and field-of-view padding.
        threshold = max(20.0, 0.25 * float(np.percentile(coarse, 99)))
        candidates = np.flatnonzero(coarse > threshold)
        if candidates.size == 0:
            candidates = np.arange(coarse.size)
        body = np.stack(np.unravel_index(candidates, coarse.shape), axis=1)
        centre = body[np.argmin(np.sum((body - body.mean(axis=0)) ** 2, axis=1))]
        return Variant(
            subject.case.case_id, pyramid, points, tuple(targets), candidates.astype(np.int64), centre
        )

    # ------------------------------------------------------------------ rendering
    def patch(self, variant: Variant, level: int, center_zyx: NDArray) -> NDArray[np.uint8]:
        return crop_patch(variant.pyramid.levels[level].voxels, center_zyx, self.patch_size)

    def observation(
        self, variant: Variant, landmark: int, level: int, history_zyx: NDArray
    ) -> dict[str, Any]:
        """One observation; ``history_zyx`` is ``(frames, 3)``, most recent position first."""
        patches = np.stack([self.patch(variant, level, position) for position in history_zyx])
        return {"patch": patches, "landmark": int(landmark), "level": int(level)}

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        """Batch of observations rebuilt from poses ``(B, pose_dim)`` (see :meth:`LandmarkEnv.pose`)."""
        poses = np.asarray(poses)
        count = len(poses)
        size = self.patch_size
        patch = np.empty((count, self.frames, size, size, size), dtype=np.uint8)
        for row, pose in enumerate(poses):
            variant = self.variant(int(pose[0]))
            level = int(pose[2])
            for frame in range(self.frames):
                patch[row, frame] = self.patch(variant, level, pose[3 + 3 * frame : 6 + 3 * frame])
        return {
            "patch": patch,
            "landmark": poses[:, 1].astype(np.int64),
            "level": poses[:, 2].astype(np.int64),
        }


class LandmarkEnv(gym.Env):
    """Walk through a 3-D volume to an anatomical landmark, coarse to fine.

    The agent sees a cube of voxels around its position at the current pyramid level and
    moves one voxel of that level per step. One environment serves all landmarks of a
    dataset: which landmark is sought is part of the observation, so one network learns
    them all and test-time search can batch them.

    ## Observation Space
    ``Dict`` with

    * ``"patch"``: ``Box(0, 255, (frames, P, P, P), uint8)``: axes (frame, z, y, x) of the
      canonical level grid (+z superior, +y posterior, +x patient left); frame 0 is the
      current position, then earlier positions. Voxels are one level spacing (``levels_mm``)
      apart, so the patch spans ``P`` times that; outside the scanned field of view they are 0.
    * ``"landmark"``: ``Discrete(n_landmarks)``: index into ``landmark_names``.
    * ``"level"``: ``Discrete(n_levels)``: 0 is the coarsest level.

    ## Action Space
    ``Discrete(6)``: move one voxel of the current level: 0 superior (+z), 1 inferior (-z),
    2 posterior (+y), 3 anterior (-y), 4 left (+x), 5 right (-x) (see ``ACTION_NAMES``).
    A move that would leave the level grid is blocked: the agent stays.

    ## Rewards
    The decrease of the physical distance to the landmark divided by the step length:
    ``(d_before_mm - d_after_mm) / spacing_mm``, in ``[-1, 1]``. A blocked move gets -1.

    ## Starting State
    A training case (and augmentation variant) and a landmark present in it are drawn
    uniformly. With ``schedule="random"`` the level is drawn uniformly; at the coarsest level
    the agent starts at a random voxel inside the body, at a finer level within
    ``start_radius_vox`` voxels (per axis) of the landmark, where the coarser level leaves it.
    With ``schedule="coarse"`` every episode starts at the coarsest level. ``reset`` options
    ``case_id``, ``landmark``, ``level`` and ``position_lps_mm`` fix any of these.

    ## Episode End
    ``schedule="random"`` (training) never terminates: episodes are truncated by the time
    limit (``max_episode_steps`` of the registration, 50 by default), so values bootstrap.
    ``schedule="coarse"`` (the full multi-scale search): when the agent revisits one of its
    last 4 positions (oscillation) it moves to the next finer level; oscillating at the
    finest level terminates the episode.

    ## Info
    ``distance_mm`` (to the landmark), ``position_lps_mm`` (LPS mm), ``level``, ``spacing_mm``,
    ``landmark`` (name), ``case_id``, ``blocked``, and ``pose``/``previous_pose`` (int32
    vectors ``[variant, landmark, level, z0, y0, x0, z1, ...]`` from which
    :meth:`LandmarkWorld.observations_from_poses` rebuilds observations exactly).

    ## Arguments
    * ``dataset``: a :class:`~envs.data.Dataset`, a manifest path, or ``None`` for
      in-memory synthetic CT phantoms (8 train, 2 val, 2 test).
    * ``split``: ``"train"``, ``"val"`` or ``"test"``.
    * ``landmarks``: names to seek (default: all in the data).
    * ``levels_mm``: level spacings coarse to fine (default ``(8, 4, 2)``); the finest must not
      be finer than the data.
    * ``patch_size``: odd, >= 5 (25 and 45 tested). ``frames``: history length.
    * ``preset``: intensity preset (``"ct"``, ``"ct_soft"``, ``"mr"``; default by modality).
    * ``augment``: :class:`~envs.data.AugmentConfig` (training-time variants) or ``None``.
    * ``schedule``: ``"random"`` or ``"coarse"``. ``start_radius_vox``: see Starting State.
    * ``render_mode``: ``"rgb_array"`` gives three orthogonal slices through the agent with
      its trajectory (yellow) and the landmark (red).

    ## Version History
    * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        dataset: Dataset | str | None = None,
        split: str = "train",
        landmarks: Sequence[str] | None = None,
        levels_mm: Sequence[float] = (8.0, 4.0, 2.0),
        patch_size: int = 25,
        frames: int = 1,
        preset: str | None = None,
        augment: AugmentConfig | None = None,
        schedule: str = "random",
        start_radius_vox: int | None = None,
        render_mode: str | None = None,
        world_seed: int = 0,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        if schedule not in ("random", "coarse"):
            raise ValueError(f"schedule: expected 'random' or 'coarse', got {schedule!r}")
        if dataset is None:
            dataset = Dataset.phantoms(8, 2, 2, seed=0)
        elif not isinstance(dataset, Dataset):
            dataset = Dataset.from_manifest(dataset)
        available = _default_landmarks(dataset, split)
        names = list(landmarks) if landmarks is not None else available
        self.world = LandmarkWorld(
            dataset, split, names, levels_mm, patch_size, frames, preset, augment, world_seed, case_ids
        )
        known = set(available)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"landmarks: {unknown} not in the data of split {split!r} ({dataset.source}); "
                f"available: {sorted(known)}"
            )
        self.schedule = schedule
        self.render_mode = render_mode
        self.start_radius_vox = start_radius_vox
        self.observation_space = self.world.observation_space()
        self.action_space = spaces.Discrete(len(ACTIONS_ZYX))
        self._variant: Variant | None = None
        self._variant_index = 0
        self._landmark = 0
        self._level = 0
        self._position = np.zeros(3, dtype=np.int64)
        self._position_tuple = (0, 0, 0)
        self._target_tuple = (0.0, 0.0, 0.0)
        self._distance = 0.0
        self._shape: tuple[int, int, int] = (1, 1, 1)
        self._origin_lps = np.zeros(3)
        self._pose = np.zeros(0, np.int32)
        self._history: list[NDArray[np.int64]] = []
        self._frame_patches: list[NDArray[np.uint8]] = []
        self._recent: deque[tuple[int, int, int]] = deque(maxlen=4)
        self._trajectory_lps: list[NDArray[np.float64]] = []

    # ------------------------------------------------------------------ properties
    @property
    def landmark_names(self) -> tuple[str, ...]:
        return self.world.landmark_names

    @property
    def levels_mm(self) -> tuple[float, ...]:
        return self.world.levels_mm

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        """Observations rebuilt from poses (for a replay buffer that stores poses only)."""
        return self.world.observations_from_poses(poses)

    def pose(self) -> NDArray[np.int32]:
        """``[variant, landmark, level, z0, y0, x0, ...]`` of the current state (int32)."""
        return self._pose.copy()

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        world = self.world
        wanted = None
        if "landmark" in options:
            name = options.pop("landmark")
            if name not in self.landmark_names:
                raise ValueError(f"reset: unknown landmark {name!r}; expected one of {self.landmark_names}")
            wanted = self.landmark_names.index(name)
        if "case_id" in options:
            self._variant_index = world.variant_index(str(options.pop("case_id")))
            variant = world.variant(self._variant_index)
            present = np.flatnonzero(variant.present())
        else:
            for _ in range(100):
                self._variant_index = int(self.np_random.integers(world.n_variants))
                variant = world.variant(self._variant_index)
                present = np.flatnonzero(variant.present())
                if present.size and (wanted is None or wanted in present):
                    break
        if wanted is not None:
            if wanted not in present:
                raise ValueError(
                    f"reset: landmark {self.landmark_names[wanted]!r} is not in the field of view of case "
                    f"{variant.case_id!r}; pick another case_id"
                )
            self._landmark = wanted
        else:
            if present.size == 0:
                raise ValueError(
                    f"case {variant.case_id!r} holds none of the landmarks {self.landmark_names}"
                )
            self._landmark = int(self.np_random.choice(present))
        if "level" in options:
            self._level = int(options.pop("level"))
            if not 0 <= self._level < world.n_levels:
                raise ValueError(f"reset: level must be in 0..{world.n_levels - 1}, got {self._level}")
        else:
            self._level = 0 if self.schedule == "coarse" else int(self.np_random.integers(world.n_levels))
        self._variant = variant
        if "position_lps_mm" in options:
            point = np.asarray(options.pop("position_lps_mm"), dtype=np.float64)
            position = variant.pyramid.index_zyx(self._level, point)
        else:
            position = self._random_start()
        if options:
            raise ValueError(
                f"reset: unknown option(s) {sorted(options)}; "
                "expected case_id, landmark, level, position_lps_mm"
            )
        self._enter_level(self._level, position)
        self._update_pose()
        self._trajectory_lps = [self._position_lps()] if self.render_mode is not None else []
        return self._observation(), self._info(blocked=False)

    def step(self, action: int):
        if self._variant is None:
            raise RuntimeError("step() called before reset()")
        previous_pose = self._pose
        dz, dy, dx = _ACTION_TUPLES[int(action)]
        z, y, x = self._position_tuple
        candidate = (z + dz, y + dy, x + dx)
        depth, height, width = self._shape
        # Plain-Python bounds check: ~4x cheaper than numpy on three integers (bench/).
        blocked = not (0 <= candidate[0] < depth and 0 <= candidate[1] < height and 0 <= candidate[2] < width)
        if blocked:
            reward = -1.0
        else:
            distance_before = self._distance
            self._set_position(candidate)
            reward = distance_before - self._distance
        terminated = False
        oscillating = not blocked and self._position_tuple in self._recent
        self._recent.append(self._position_tuple)
        patch = self.world.patch(self._variant, self._level, self._position)
        self._history = [self._position, *self._history[:-1]]
        self._frame_patches = [patch, *self._frame_patches[:-1]]
        if self.schedule == "coarse" and oscillating:
            if self._level + 1 < self.world.n_levels:
                self._descend()
            else:
                terminated = True
        self._update_pose()
        if self.render_mode is not None:
            self._trajectory_lps.append(self._position_lps())
        info = self._info(blocked=blocked)
        info["previous_pose"] = previous_pose
        return self._observation(), float(reward), terminated, False, info

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode != "rgb_array" or self._variant is None:
            return None
        from envs.render import orthogonal_slices

        level = self._variant.pyramid.levels[self._level]
        target = self._variant.landmarks_lps_mm[self._landmark]
        return orthogonal_slices(level, self._position_lps(), np.array(self._trajectory_lps), target)

    # ------------------------------------------------------------------ internals
    def _observation(self) -> dict[str, Any]:
        patches = self._frame_patches
        # Each patch is a fresh crop, so a view of the single frame is a new array (no copy).
        patch = patches[0][np.newaxis] if len(patches) == 1 else np.stack(patches)
        return {"patch": patch, "landmark": self._landmark, "level": self._level}

    def _info(self, blocked: bool) -> dict[str, Any]:
        spacing = self.world.levels_mm[self._level]
        return {
            "distance_mm": self._distance * spacing,
            "position_lps_mm": self._position_lps(),
            "level": self._level,
            "spacing_mm": spacing,
            "landmark": self.landmark_names[self._landmark],
            "case_id": self._variant.case_id if self._variant else "",
            "blocked": blocked,
            "pose": self._pose,
        }

    def _target(self) -> NDArray[np.float64]:
        assert self._variant is not None
        return self._variant.targets_zyx[self._level][self._landmark]

    def _set_position(self, position: Any) -> None:
        """Move to integer voxel ``position`` (z, y, x) of the current level; update the distance."""
        self._position = np.asarray(position, dtype=np.int64)
        self._position_tuple = (int(self._position[0]), int(self._position[1]), int(self._position[2]))
        tz, ty, tx = self._target_tuple
        z, y, x = self._position_tuple
        self._distance = math.sqrt((z - tz) ** 2 + (y - ty) ** 2 + (x - tx) ** 2)

    def _enter_level(self, level: int, position: Any) -> None:
        """Start ``level`` at ``position``: caches the level's shape and target, resets the history."""
        assert self._variant is not None
        self._level = level
        grid = self._variant.pyramid.levels[level]
        self._shape = grid.shape_zyx
        self._origin_lps = grid.origin_lps_mm
        target = self._target()
        self._target_tuple = (float(target[0]), float(target[1]), float(target[2]))
        self._set_position(self._clip(position))
        self._history = [self._position] * self.world.frames
        patch = self.world.patch(self._variant, level, self._position)
        self._frame_patches = [patch] * self.world.frames
        self._recent = deque([self._position_tuple], maxlen=4)

    def _update_pose(self) -> None:
        header = (self._variant_index, self._landmark, self._level)
        self._pose = np.concatenate([header, *self._history]).astype(np.int32)

    def _position_lps(self) -> NDArray[np.float64]:
        # Levels are canonical (identity direction, isotropic): lps = origin + spacing * (x, y, z).
        return self._origin_lps + self.world.levels_mm[self._level] * self._position[::-1]

    def _clip(self, position: NDArray) -> NDArray[np.int64]:
        assert self._variant is not None
        upper = np.array(self._variant.pyramid.levels[self._level].shape_zyx) - 1
        return np.clip(np.asarray(position, dtype=np.int64), 0, upper)

    def _random_start(self) -> NDArray[np.int64]:
        assert self._variant is not None
        variant = self._variant
        if self._level == 0:
            flat = int(self.np_random.choice(variant.start_candidates))
            return np.array(np.unravel_index(flat, variant.pyramid.levels[0].shape_zyx), dtype=np.int64)
        radius = self.start_radius_vox
        if radius is None:
            # Where the coarser level's search typically leaves the agent: ~2 coarse voxels.
            ratio = self.world.levels_mm[self._level - 1] / self.world.levels_mm[self._level]
            radius = int(np.ceil(2 * ratio)) + 1
        offset = self.np_random.integers(-radius, radius + 1, size=3)
        target = np.nan_to_num(self._target(), nan=0.0)
        return np.floor(target + 0.5).astype(np.int64) + offset

    def _descend(self) -> None:
        assert self._variant is not None
        point = self._position_lps()
        finer = self._variant.pyramid.index_zyx(self._level + 1, point)
        self._enter_level(self._level + 1, finer)


def _default_landmarks(dataset: Dataset, split: str) -> list[str]:
    cases = dataset.split(split)
    if cases and all(case.is_phantom for case in cases):
        from envs.phantom import LANDMARK_NAMES

        return list(LANDMARK_NAMES)
    return dataset.landmark_names([split])
