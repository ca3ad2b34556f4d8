"""Alignment by a parameterised transform: the pair, the world and the episode logic shared by
the rigid (:mod:`envs.tasks.rigid`) and SDM (:mod:`envs.tasks.sdm`) registration envs.

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

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core import Pyramid, crop_patch, cube_grid_lps
from envs.core.pyramid import edge_pyramid
from envs.data import Dataset, Subject
from envs.tasks.base import (
    OscillationTracker,
    TaskEnv,
    TaskWorld,
    check_action,
    check_render_mode,
    check_schedule,
    pack_pose,
    reset_level,
    reset_options,
)

__all__ = ["OBSERVATIONS", "UNIT", "AlignmentEnv", "AlignmentPair", "AlignmentWorld"]

UNIT = 1000  # state parameters are integers in thousandths (of mm, degrees, or std-devs)
_RESET_OPTIONS = ("case_id", "variant", "level", "params", "offset")
#: Observation channels: intensities (fixed, moving), edges (fixed, moving) or all four.
OBSERVATIONS = ("intensity", "gradient", "both")


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
        fixed_edges: per level, the fixed edge channel (:func:`envs.core.pyramid.edge_map`), or
            ``()`` when the observation has no edge channels.
        moving_edges: the moving pyramid's edge maps (resampled like the intensities), or None.
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
    fixed_edges: tuple[NDArray[np.uint8], ...] = ()
    moving_edges: Pyramid | None = None

    @property
    def nbytes(self) -> int:
        edges = self.moving_edges.nbytes if self.moving_edges is not None else 0
        patches = sum(p.nbytes for p in self.fixed_patches) + sum(p.nbytes for p in self.fixed_edges)
        return self.fixed.nbytes + self.moving.nbytes + patches + edges


class AlignmentWorld(TaskWorld):
    """Pairs of one split, observation rendering and errors, for any parameterised alignment.

    Subclasses define the parameters (:attr:`param_names`, :meth:`build_pair`,
    :meth:`render_moving`, :meth:`errors_mm`, :meth:`start_params`, :meth:`reward_scale`);
    this class holds the observation grid, the action steps and the pose encoding
    ``[pair, level, params...]`` (levels and the variant table come from :class:`TaskWorld`).
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
        observation: str = "intensity",
    ) -> None:
        super().__init__(dataset, split, levels_mm, preset, variants_per_case, seed, case_ids)
        if observation not in OBSERVATIONS:
            raise ValueError(
                f"observation: expected one of {', '.join(OBSERVATIONS)}, got {observation!r} "
                "(intensity: fixed and moving intensities; gradient: their edge maps; both: all four)"
            )
        self.observation_kind = observation
        if isinstance(obs_size, bool) or not isinstance(obs_size, (int, np.integer)) or obs_size < 9:
            raise ValueError(f"obs_size: expected an integer >= 9 voxels (e.g. 25 or 32), got {obs_size!r}")
        step_table = np.asarray(steps, dtype=np.float64)
        if step_table.shape != (self.n_levels, len(self.param_names)) or np.any(step_table <= 0):
            raise ValueError(
                f"steps: expected one positive step per level ({self.n_levels}) and parameter "
                f"({len(self.param_names)}: {', '.join(self.param_names)}), got {np.asarray(steps).tolist()}"
            )
        if variants_per_case < 1:
            raise ValueError(f"variants_per_case: expected >= 1, got {variants_per_case}")
        self.obs_size = int(obs_size)
        # Steps in integer thousandths; multiples of 1/UNIT keep states exactly representable.
        self.steps_int = np.maximum(1, np.rint(step_table * UNIT)).astype(np.int64)
        self.variants_per_case = int(variants_per_case)
        self._key: tuple | None = None

    # ------------------------------------------------------------------ sizes and spaces
    @property
    def edge_vox(self) -> int:
        return self.obs_size

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_actions(self) -> int:
        return 2 * self.n_params

    @property
    def pose_dim(self) -> int:
        return 2 + self.n_params

    @property
    def n_channels(self) -> int:
        """Channels of the observed patch: 2 (intensities or edges) or 4 (both)."""
        return 4 if self.observation_kind == "both" else 2

    def observation_space(self) -> spaces.Dict:
        size = self.obs_size
        return spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (self.n_channels, size, size, size), np.uint8),
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
        """The :attr:`variant_table` row of ``case_id``'s ``variant``."""
        return self.find_variant(case_id, variant)

    def _pair_key(self) -> tuple:
        return (self.family, self.levels_mm, self.obs_size, self.preset, self.seed, self.observation_kind)

    def with_edges(self, pair: AlignmentPair, fixed_edges: Pyramid | None = None) -> AlignmentPair:
        """``pair`` with its edge channels when the observation has them (else ``pair`` itself).

        The edge maps are computed once per pyramid level here (``fixed_edges`` passes a cached
        fixed one), so stepping only resamples them like the intensities.
        """
        if self.observation_kind == "intensity":
            return pair
        fixed = fixed_edges if fixed_edges is not None else edge_pyramid(pair.fixed)
        _, patches = self.observation_grids(fixed, pair.center_lps_mm)
        return replace(pair, fixed_edges=patches, moving_edges=edge_pyramid(pair.moving))

    def build_pair(self, subject: Subject, variant: int) -> AlignmentPair:
        raise NotImplementedError

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
        return cube_grid_lps(pair.grid_origins_lps_mm[level], self.obs_size, self.levels_mm[level])

    # ------------------------------------------------------------------ observations and errors
    def render_moving(
        self, pair: AlignmentPair, level: int, params: NDArray[np.int64], edges: bool = False
    ) -> NDArray[np.uint8]:
        """The moving intensities (``edges``: the moving edge map) under ``params`` on the grid."""
        raise NotImplementedError

    def errors_mm(self, pair: AlignmentPair, params: NDArray) -> NDArray[np.float64]:
        """Mean control-point error (mm) of parameter rows ``(B, n_params)`` in integer thousandths."""
        raise NotImplementedError

    def observation_patch(
        self, pair: AlignmentPair, level: int, params: NDArray[np.int64], out: NDArray | None = None
    ) -> NDArray[np.uint8]:
        """The ``(n_channels, S, S, S)`` patch: fixed, moving intensities, then fixed, moving edges."""
        if out is None:
            out = np.empty((self.n_channels, *(self.obs_size,) * 3), np.uint8)
        channel = 0
        if self.observation_kind != "gradient":
            out[0] = pair.fixed_patches[level]
            out[1] = self.render_moving(pair, level, params)
            channel = 2
        if self.observation_kind != "intensity":
            if pair.moving_edges is None:
                raise ValueError(
                    f"observation {self.observation_kind!r}: pair {pair.case_id!r} has no edge maps "
                    "(built without AlignmentWorld.with_edges)"
                )
            out[channel] = pair.fixed_edges[level]
            out[channel + 1] = self.render_moving(pair, level, params, edges=True)
        return out

    def observation(self, pair: AlignmentPair, level: int, params: NDArray[np.int64]) -> dict[str, Any]:
        return {"patch": self.observation_patch(pair, level, params), "level": int(level)}

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        """Batch of observations rebuilt from poses ``(B, 2 + n_params)``: ``[pair, level, params...]``."""
        poses = np.asarray(poses)
        size = self.obs_size
        patch = np.empty((len(poses), self.n_channels, size, size, size), dtype=np.uint8)
        for row, pose in enumerate(poses):
            pair = self.pair(int(pose[0]))
            self.observation_patch(pair, int(pose[1]), pose[2:].astype(np.int64), out=patch[row])
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


class AlignmentEnv(TaskEnv):
    """Episode logic shared by the rigid and SDM registration envs (see their docstrings)."""

    def __init__(
        self,
        world: AlignmentWorld,
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        check_render_mode(render_mode)
        check_schedule(schedule)
        if not tre_threshold_mm > 0:
            raise ValueError(f"tre_threshold_mm: expected > 0, got {tre_threshold_mm}")
        self.world = world
        self.schedule = schedule
        self.tre_threshold_mm = float(tre_threshold_mm)
        self.render_mode = render_mode
        self.observation_space = world.observation_space()
        self.action_space = spaces.Discrete(world.n_actions)
        self._n_actions = world.n_actions
        self._pair: AlignmentPair | None = None
        self._pair_index = 0
        self._level = 0
        self._params = np.zeros(world.n_params, np.int64)
        self._error = 0.0
        self._pose = np.zeros(world.pose_dim, np.int32)
        self._recent = OscillationTracker()
        self._trajectory: list[float] = []

    @classmethod
    def from_world(
        cls,
        world: AlignmentWorld,
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
    ) -> AlignmentEnv:
        """An env of this class on an existing world (shares its pairs: one cache for many envs).

        Runs the class's own constructor: subclasses take a world in place of ``dataset``.
        """
        return cls(world, schedule=schedule, tre_threshold_mm=tre_threshold_mm, render_mode=render_mode)

    # ------------------------------------------------------------------ helpers for users
    @property
    def params(self) -> NDArray[np.float64]:
        """Current parameters in their units (mm, degrees or std-devs)."""
        return self._params / UNIT

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = reset_options(options, _RESET_OPTIONS)
        world = self.world
        if "variant" in options and "case_id" not in options:
            raise ValueError("reset: option 'variant' needs 'case_id' (the case whose variant to use)")
        if "case_id" in options:
            self._pair_index = world.pair_index(str(options["case_id"]), int(options.get("variant", 0)))
        else:
            self._pair_index = int(self.np_random.integers(world.n_variants))
        pair = world.pair(self._pair_index)
        level = reset_level(options, world.n_levels, self.schedule, self.np_random)
        if "params" in options:
            values = np.asarray(options["params"], dtype=np.float64).reshape(-1)
            if values.shape != (world.n_params,) or not np.all(np.isfinite(values)):
                raise ValueError(
                    f"reset: params must be {world.n_params} finite values ({', '.join(world.param_names)}), "
                    f"got {values.tolist()}"
                )
            params = np.rint(values * UNIT).astype(np.int64)
        elif "offset" in options:
            offset = np.asarray(options["offset"], dtype=np.float64).reshape(-1)
            if offset.shape != (world.n_params,):
                raise ValueError(f"reset: offset must have {world.n_params} values, got {offset.tolist()}")
            params = np.rint((pair.truth + offset) * UNIT).astype(np.int64)
        else:
            params = world.start_params(pair, level, self.np_random)
        self._pair = pair
        self._level = level
        self._set_params(params)
        self._recent.start(tuple(int(v) for v in params))
        self._trajectory = [self._error]
        self._update_pose()
        return self._observation(), self._info()

    def step(self, action: int):
        if self._pair is None:
            raise RuntimeError("step() called before reset()")
        previous_pose = self._pose
        if not (type(action) is int and 0 <= action < self._n_actions):
            action = check_action(action, self._n_actions)
        index, delta = self.world.action_delta(action, self._level)
        params = self._params.copy()
        params[index] += delta
        before = self._error
        self._set_params(params)
        reward = (before - self._error) / self.world.reward_scale(self._level)
        key = tuple(int(v) for v in params)
        oscillating = self._recent.visit(key)
        terminated = False
        finest = self._level + 1 == self.world.n_levels
        if self.schedule == "random":
            terminated = finest and self._error < self.tre_threshold_mm
        elif oscillating:
            if finest:
                terminated = True
            else:
                self._level += 1
                self._recent.start(key)
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
        self._pose = pack_pose((self._pair_index, self._level), self._params)

    def _info(self) -> dict[str, Any]:
        assert self._pair is not None
        return {
            "error_mm": self._error,
            "level": self._level,
            "params": self._params / UNIT,
            "case_id": self._pair.case_id,
            "pose": self._pose,
        }
