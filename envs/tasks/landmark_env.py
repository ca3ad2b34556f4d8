"""Anatomical landmark detection as a Gymnasium environment (Ghesu et al.; Alansary et al.).

The episode logic on a :class:`~envs.tasks.landmark.LandmarkWorld`: the agent moves one voxel
of the current level per step towards a landmark, coarse to fine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.data import AugmentConfig, Dataset
from envs.phantom import LANDMARK_NAMES, phantom_dataset
from envs.tasks.base import (
    OscillationTracker,
    TaskEnv,
    check_action,
    check_render_mode,
    check_schedule,
    pack_pose,
    reset_level,
    reset_options,
    resolve_dataset,
)
from envs.tasks.landmark import LandmarkWorld, Variant

__all__ = ["ACTIONS_ZYX", "ACTION_NAMES", "LandmarkEnv"]

# Canonical levels have identity direction in LPS: +z superior, +y posterior, +x left.
ACTIONS_ZYX: NDArray[np.int64] = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int64
)
ACTION_NAMES: tuple[str, ...] = ("superior", "inferior", "posterior", "anterior", "left", "right")
# Keyed by action: the lookup is the range check (a miss is a bad action), so a step costs no test.
_ACTION_MOVES: dict[int, tuple[int, int, int]] = {
    i: tuple(int(v) for v in row) for i, row in enumerate(ACTIONS_ZYX)
}
_RESET_OPTIONS = ("case_id", "landmark", "level", "position_lps_mm", "appearance")


class LandmarkEnv(TaskEnv):
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
      With ``augment.appearances > 0`` the episode's appearance (an intensity map and noise)
      is applied; 0 stays 0.
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
    With ``schedule="coarse"`` every episode starts at the coarsest level. With
    ``augment.appearances = N > 0`` an appearance index is drawn uniformly in ``[0, N)`` (0 is
    the identity), after all the draws above. ``reset`` options ``case_id``, ``landmark``,
    ``level``, ``position_lps_mm`` and ``appearance`` fix any of these; any other option is a
    ``ValueError``.

    ## Episode End
    ``schedule="random"`` (training) never terminates: episodes are truncated by the time
    limit (``max_episode_steps`` of the registration, 50 by default), so values bootstrap.
    ``schedule="coarse"`` (the full multi-scale search): when the agent revisits one of its
    last 4 positions (oscillation) it moves to the next finer level; oscillating at the
    finest level terminates the episode.

    ## Info
    ``distance_mm`` (to the landmark), ``position_lps_mm`` (LPS mm), ``level``, ``spacing_mm``,
    ``landmark`` (name), ``case_id``, ``appearance``, ``blocked``, and ``pose``/``previous_pose``
    (int32 vectors ``[variant, landmark, level, z0, y0, x0, z1, ..., appearance]`` of length
    ``4 + 3 * frames``, from which :meth:`LandmarkWorld.observations_from_poses` rebuilds
    observations exactly).

    ## Arguments
    * ``dataset``: a :class:`~envs.data.Dataset`, a manifest path, or ``None`` for
      in-memory synthetic CT phantoms (8 train, 2 val, 2 test).
    * ``split``: ``"train"``, ``"val"`` or ``"test"``.
    * ``landmarks``: names to seek (default: all in the data).
    * ``levels_mm``: level spacings coarse to fine (default ``(8, 4, 2)``). Scans of any spacing
      are resampled to them; one much coarser than the finest level gets a ``UserWarning``.
    * ``patch_size``: odd, >= 5 (25 and 45 tested). ``frames``: history length (1..16).
    * ``preset``: intensity preset (``"ct"``, ``"ct_soft"``, ``"mr"``; default by modality).
    * ``augment``: :class:`~envs.data.AugmentConfig` (training-time variants and per-episode
      appearances) or ``None``.
    * ``schedule``: ``"random"`` or ``"coarse"``. ``start_radius_vox``: see Starting State.
    * ``render_mode``: ``"rgb_array"`` gives three orthogonal slices through the agent with
      its trajectory (yellow) and the landmark (red).
    * ``world_seed``: base seed of the augmentation variants (fixed per world, so poses stay
      valid). ``case_ids``: a subset of the split's cases (default: all).

    ## Version History
    * v0: initial version; the pose gained its trailing appearance index with per-episode
      appearances (observations without them are unchanged).
    """

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
        check_render_mode(render_mode)
        check_schedule(schedule)
        dataset = resolve_dataset(dataset, lambda: phantom_dataset(8, 2, 2, seed=0))
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
        self._appearance = 0
        self._position = np.zeros(3, dtype=np.int64)
        self._position_tuple = (0, 0, 0)
        self._target_tuple = (0.0, 0.0, 0.0)
        self._distance = 0.0
        self._shape: tuple[int, int, int] = (1, 1, 1)
        self._origin_lps = np.zeros(3)
        self._pose = np.zeros(0, np.int32)
        self._history: list[NDArray[np.int64]] = []
        self._frame_patches: list[NDArray[np.uint8]] = []
        self._recent = OscillationTracker()
        self._trajectory_lps: list[NDArray[np.float64]] = []

    # ------------------------------------------------------------------ properties
    @property
    def landmark_names(self) -> tuple[str, ...]:
        return self.world.landmark_names

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = reset_options(options, _RESET_OPTIONS)
        world = self.world
        wanted = None
        if "landmark" in options:
            name = options["landmark"]
            if name not in self.landmark_names:
                raise ValueError(f"reset: unknown landmark {name!r}; expected one of {self.landmark_names}")
            wanted = self.landmark_names.index(name)
        if "case_id" in options:
            self._variant_index = world.variant_index(str(options["case_id"]))
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
        self._level = reset_level(options, world.n_levels, self.schedule, self.np_random)
        self._variant = variant
        if "position_lps_mm" in options:
            point = np.asarray(options["position_lps_mm"], dtype=np.float64)
            position = variant.pyramid.index_zyx(self._level, point)
        else:
            position = self._random_start()
        self._appearance = self._draw_appearance(options)
        self._enter_level(self._level, position)
        self._update_pose()
        self._trajectory_lps = [self._position_lps()] if self.render_mode is not None else []
        return self._observation(), self._info(blocked=False)

    def step(self, action: int):
        if self._variant is None:
            raise RuntimeError("step() called before reset()")
        previous_pose = self._pose
        try:
            dz, dy, dx = _ACTION_MOVES[action]
        except (KeyError, TypeError):
            dz, dy, dx = _ACTION_MOVES[check_action(action, len(_ACTION_MOVES))]
        z, y, x = self._position_tuple
        candidate = (z + dz, y + dy, x + dx)
        depth, height, width = self._shape
        # A plain-Python bounds check: cheaper than numpy on three integers, and this runs every step.
        blocked = not (0 <= candidate[0] < depth and 0 <= candidate[1] < height and 0 <= candidate[2] < width)
        if blocked:
            reward = -1.0
        else:
            distance_before = self._distance
            self._set_position(candidate)
            reward = distance_before - self._distance
        terminated = False
        revisit = self._recent.visit(self._position_tuple)
        oscillating = not blocked and revisit
        patch = self.world.patch(self._variant, self._level, self._position, self._appearance)
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

    def action_rewards(self) -> NDArray[np.float64]:
        """The reward each of the 6 actions would get from the current state, without moving.

        The same numbers :meth:`step` would return (distance decrease in steps of the current
        level; -1 for a move off the grid): the exact targets of a supervised (greedy) learner.
        """
        if self._variant is None:
            raise RuntimeError("action_rewards() called before reset()")
        candidates = self._position[np.newaxis] + ACTIONS_ZYX
        target = np.array(self._target_tuple)
        rewards = self._distance - np.linalg.norm(candidates - target, axis=1)
        inside = np.all((candidates >= 0) & (candidates < np.array(self._shape)), axis=1)
        return np.where(inside, rewards, -1.0)

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
            "appearance": self._appearance,
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
        patch = self.world.patch(self._variant, level, self._position, self._appearance)
        self._frame_patches = [patch] * self.world.frames
        self._recent.start(self._position_tuple)

    def _update_pose(self) -> None:
        header = (self._variant_index, self._landmark, self._level)
        self._pose = pack_pose(header, *self._history, (self._appearance,))

    def _position_lps(self) -> NDArray[np.float64]:
        # Levels are canonical (identity direction, isotropic): lps = origin + spacing * (x, y, z).
        return self._origin_lps + self.world.levels_mm[self._level] * self._position[::-1]

    def _clip(self, position: NDArray) -> NDArray[np.int64]:
        assert self._variant is not None
        upper = np.array(self._variant.pyramid.levels[self._level].shape_zyx) - 1
        return np.clip(np.asarray(position, dtype=np.int64), 0, upper)

    def _draw_appearance(self, options: dict[str, Any]) -> int:
        """The episode's appearance: ``options["appearance"]`` (checked), else drawn when the world
        has a bank (only then: without one, the random stream is the same as without appearances)."""
        count = self.world.n_appearances
        if "appearance" in options:
            appearance = options["appearance"]
            if isinstance(appearance, bool) or not isinstance(appearance, (int, np.integer)):
                raise ValueError(
                    f"reset: appearance must be an integer in 0..{count - 1}, got {appearance!r}"
                )
            if not 0 <= appearance < count:
                raise ValueError(
                    f"reset: appearance must be in 0..{count - 1} (augment.appearances = "
                    f"{count if count > 1 else 0}), got {appearance}"
                )
            return int(appearance)
        return int(self.np_random.integers(count)) if count > 1 else 0

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
        return list(LANDMARK_NAMES)
    return dataset.landmark_names([split])
