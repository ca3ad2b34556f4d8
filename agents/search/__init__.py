"""Test-time search: landmark detection and registration, greedy rollouts coarse to fine.

All agents (landmarks x starting points) of one volume step together: one batched forward
pass per step. A level ends when an agent revisits one of its last positions (oscillation,
the stopping rule that beat fixed step counts in FACTS.md) or after a step cap; the finest
level's end is the answer. An agent that keeps pushing against the volume border is
reported as "not in the field of view".

Registration (:func:`align`, :func:`register`) follows the same rules on a transform's
parameters: the agent steps until it revisits one of its last transforms, then the steps
shrink (next level); the finest level's oscillation ends the search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from envs.tasks import ACTIONS_ZYX, UNIT, AlignmentPair, AlignmentWorld, LandmarkWorld, Variant

__all__ = [
    "AgentState",
    "AlignConfig",
    "Alignment",
    "AlignmentOracle",
    "Detection",
    "OraclePolicy",
    "QNetworkPolicy",
    "SearchConfig",
    "align",
    "detect_landmarks",
    "refine_alignment",
    "register",
    "scored_detections",
    "start_points",
    "write_registration",
]


@dataclass(frozen=True)
class SearchConfig:
    """Test-time search settings.

    Attributes:
        starts: starting points per landmark; the answer is the per-axis median of the
            starts that stayed in the volume (FACTS: 3 starts removed all gross misses).
        oscillation_window: a move back to one of this many last positions ends a level.
        max_steps_per_level: cap per level (a safety net; oscillation normally ends first).
        max_blocked: moves against the border at one level before the agent is reported
            as having left the field of view.
        min_confidence: below this confidence a landmark is reported as not found.
        final_point: where the finest level's oscillation cycle ends: ``"min_q"`` (the cycle
            position with the lowest max Q, where the agent expects no further gain) or
            ``"cycle_mean"`` (the mean of the cycle's positions: sub-voxel).
    """

    starts: int = 1
    oscillation_window: int = 4
    max_steps_per_level: int = 120
    max_blocked: int = 3
    min_confidence: float = 0.0
    final_point: str = "min_q"

    def __post_init__(self) -> None:
        if self.starts < 1:
            raise ValueError(f"search.starts: expected >= 1, got {self.starts}")
        if self.oscillation_window < 2:
            raise ValueError(f"search.oscillation_window: expected >= 2, got {self.oscillation_window}")
        if self.final_point not in ("min_q", "cycle_mean"):
            raise ValueError(
                f"search.final_point: expected 'min_q' or 'cycle_mean', got {self.final_point!r}"
            )
        if self.max_steps_per_level < 1 or self.max_blocked < 1:
            raise ValueError("search.max_steps_per_level and search.max_blocked must be >= 1")


@dataclass
class AgentState:
    """The agents of one search, as arrays over agents (B = landmarks x starts)."""

    landmark: NDArray[np.int64]  # (B,)
    level: NDArray[np.int64]  # (B,)
    position_zyx: NDArray[np.int64]  # (B, 3) at the agent's level
    history_zyx: NDArray[np.int64]  # (B, frames, 3), most recent first
    done: NDArray[np.bool_]  # (B,)
    left_volume: NDArray[np.bool_]  # (B,)
    steps: NDArray[np.int64]  # (B,) total steps
    level_steps: NDArray[np.int64]  # (B,)
    blocked: NDArray[np.int64]  # (B,) blocked moves at the current level
    last_q_max: NDArray[np.float64]  # (B,)
    final_lps: NDArray[np.float64]  # (B, 3) sub-voxel answer (cycle_mean), NaN until set
    recent: list[list[tuple[int, int, int]]] = field(default_factory=list)
    # max Q when acting from each of ``recent``: the lowest marks where the agent expects no gain.
    recent_q: list[list[float]] = field(default_factory=list)
    trajectories_lps: list[list[NDArray]] = field(default_factory=list)


class Policy(Protocol):
    def __call__(
        self, observations: dict[str, NDArray], variant: Variant, state: AgentState, active: NDArray[np.int64]
    ) -> NDArray[np.float64]: ...


@dataclass(frozen=True)
class Detection:
    """One landmark's answer, in LPS mm."""

    name: str
    position_lps_mm: NDArray[np.float64]  # (3,) median over starts; NaN when every start left the volume
    found: bool  # False: not in the field of view, or confidence below the threshold
    confidence: float  # 0..1
    steps: int  # summed over starts
    seconds: float  # wall time of the whole search divided by the number of landmarks
    start_positions_lps_mm: NDArray[np.float64]  # (starts, 3) where each start ended
    trajectories_lps_mm: list[NDArray[np.float64]]  # one (T, 3) path per start


class OraclePolicy:
    """Greedy on the true distance: Q(a) = decrease of the distance (in steps) after move a.

    Needs no training; it tests the search logic (levels, oscillation, borders) on its own,
    and its error is the floor that the finest step sets.
    """

    def __call__(
        self, observations: dict[str, NDArray], variant: Variant, state: AgentState, active: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        q = np.empty((len(active), len(ACTIONS_ZYX)))
        for row, agent in enumerate(active):
            target = variant.targets_zyx[state.level[agent]][state.landmark[agent]]
            if np.isnan(target[0]):
                # An absent landmark: walk out of the volume (inferior, through the bottom).
                q[row] = 0.0
                q[row, 1] = 1.0
                continue
            position = state.position_zyx[agent]
            before = np.linalg.norm(position - target)
            after = np.linalg.norm(position[np.newaxis] + ACTIONS_ZYX - target, axis=1)
            q[row] = before - after
        return q


class QNetworkPolicy:
    """Q-values from a stable-baselines3 DQN policy (one batched forward pass)."""

    def __init__(self, policy: Any) -> None:
        import torch

        self.policy = policy
        self._torch = torch
        policy.set_training_mode(False)

    def __call__(
        self, observations: dict[str, NDArray], variant: Variant, state: AgentState, active: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        with self._torch.no_grad():
            tensor, _ = self.policy.obs_to_tensor(observations)
            return self.policy.q_net(tensor).cpu().numpy().astype(np.float64)


def start_points(world: LandmarkWorld, variant: Variant, count: int, rng: np.random.Generator) -> NDArray:
    """``count`` starting points (LPS mm): the body's centre first, then random body voxels."""
    shape = variant.pyramid.levels[0].shape_zyx
    points = [variant.pyramid.lps_of_index(0, variant.body_centre_zyx)]
    if count > 1:
        n = len(variant.start_candidates)
        picks = variant.start_candidates[rng.choice(n, size=count - 1, replace=n < count - 1)]
        points.extend(variant.pyramid.lps_of_index(0, np.stack(np.unravel_index(picks, shape), axis=1)))
    return np.array(points)


def detect_landmarks(
    world: LandmarkWorld,
    variant: Variant,
    policy: Policy | Callable[..., NDArray],
    landmarks: Sequence[str] | None = None,
    config: SearchConfig = SearchConfig(),
    starts_lps_mm: NDArray | None = None,
    seed: int = 0,
) -> dict[str, Detection]:
    """Search every requested landmark of one variant (usually aug 0 of a test case).

    Args:
        world: renders patches (its levels, patch size and frames must match the policy).
        variant: the volume's pyramid (``world.variant(index)``).
        policy: returns Q-values ``(len(active), 6)`` for a batch of observations.
        landmarks: names to find (default: all of ``world.landmark_names``).
        config: the search settings.
        starts_lps_mm: ``(starts, 3)`` starting points; default :func:`start_points`.
        seed: for random starting points.

    Returns:
        name -> :class:`Detection`, in the order of ``landmarks``.
    """
    names = list(landmarks) if landmarks is not None else list(world.landmark_names)
    unknown = [name for name in names if name not in world.landmark_names]
    if unknown:
        raise ValueError(
            f"search: landmark(s) {unknown} unknown to the model; it knows {world.landmark_names}"
        )
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    starts = (
        np.asarray(starts_lps_mm)
        if starts_lps_mm is not None
        else start_points(world, variant, config.starts, rng)
    )
    n_starts = len(starts)
    landmark_index = np.repeat([world.landmark_names.index(name) for name in names], n_starts)
    start_zyx = variant.pyramid.index_zyx(0, np.tile(starts, (len(names), 1)))
    shape0 = np.array(variant.pyramid.levels[0].shape_zyx)
    start_zyx = np.clip(start_zyx, 0, shape0 - 1)
    count = len(landmark_index)
    state = AgentState(
        landmark=landmark_index.astype(np.int64),
        level=np.zeros(count, np.int64),
        position_zyx=start_zyx.astype(np.int64),
        history_zyx=np.repeat(start_zyx[:, np.newaxis], world.frames, axis=1).astype(np.int64),
        done=np.zeros(count, bool),
        left_volume=np.zeros(count, bool),
        steps=np.zeros(count, np.int64),
        level_steps=np.zeros(count, np.int64),
        blocked=np.zeros(count, np.int64),
        last_q_max=np.zeros(count),
        final_lps=np.full((count, 3), np.nan),
        recent=[[tuple(int(v) for v in p)] for p in start_zyx],
        recent_q=[[np.nan] for _ in start_zyx],
        trajectories_lps=[[variant.pyramid.lps_of_index(0, p)] for p in start_zyx],
    )
    size = world.patch_size
    max_total = config.max_steps_per_level * world.n_levels + 1
    for _ in range(max_total):
        active = np.flatnonzero(~state.done)
        if active.size == 0:
            break
        patches = np.empty((active.size, world.frames, size, size, size), np.uint8)
        for row, agent in enumerate(active):
            for frame in range(world.frames):
                patches[row, frame] = world.patch(
                    variant, int(state.level[agent]), state.history_zyx[agent, frame]
                )
        observations = {"patch": patches, "landmark": state.landmark[active], "level": state.level[active]}
        q_values = np.asarray(policy(observations, variant, state, active), dtype=np.float64)
        actions = np.argmax(q_values, axis=1)
        state.last_q_max[active] = q_values.max(axis=1)
        for agent, action in zip(active, actions, strict=True):
            _advance(world, variant, state, int(agent), int(action), config)
    state.done[:] = True
    elapsed = time.perf_counter() - began
    return _summarise(world, variant, state, names, n_starts, elapsed, config)


def _advance(
    world: LandmarkWorld, variant: Variant, state: AgentState, agent: int, action: int, config: SearchConfig
) -> None:
    level = int(state.level[agent])
    depth, height, width = variant.pyramid.levels[level].shape_zyx
    candidate = state.position_zyx[agent] + ACTIONS_ZYX[action]
    state.steps[agent] += 1
    state.level_steps[agent] += 1
    z, y, x = int(candidate[0]), int(candidate[1]), int(candidate[2])
    # Plain-Python bounds check: numpy's reductions cost more than the test on three integers.
    if not (0 <= z < depth and 0 <= y < height and 0 <= x < width):
        # A greedy agent that insists on leaving (max_blocked times at a level) is taken at its
        # word: the landmark is not in this field of view.
        state.blocked[agent] += 1
        # As in the env: the agent stays, and its history records the wasted step.
        history = state.history_zyx[agent]
        history[1:] = history[:-1].copy()
        if state.blocked[agent] >= config.max_blocked:
            state.left_volume[agent] = True
            state.done[agent] = True
        return
    key = (z, y, x)
    recent, recent_q = state.recent[agent], state.recent_q[agent]
    recent_q[-1] = float(state.last_q_max[agent])
    oscillating = key in recent[-config.oscillation_window :]
    if oscillating:
        # The level ends inside the cycle, at the position where the agent expected the least
        # further gain (lowest max Q): for a 2-cycle around a target, the side nearer to it.
        start = len(recent) - 1 - recent[::-1].index(key)
        cycle = range(start, len(recent))
        best = min(cycle, key=lambda i: recent_q[i])
        if config.final_point == "cycle_mean" and level + 1 == world.n_levels:
            members = np.array([recent[i] for i in cycle], dtype=np.float64)
            state.final_lps[agent] = variant.pyramid.lps_of_index(level, members.mean(axis=0))
        candidate = np.array(recent[best], dtype=np.int64)
    state.position_zyx[agent] = candidate
    history = state.history_zyx[agent]
    history[1:] = history[:-1].copy()
    history[0] = candidate
    recent.append(tuple(int(v) for v in candidate))
    recent_q.append(np.nan)
    state.trajectories_lps[agent].append(variant.pyramid.lps_of_index(level, candidate))
    if oscillating or state.level_steps[agent] >= config.max_steps_per_level:
        if level + 1 < world.n_levels:
            point = variant.pyramid.lps_of_index(level, candidate)
            finer = np.clip(
                variant.pyramid.index_zyx(level + 1, point),
                0,
                np.array(variant.pyramid.levels[level + 1].shape_zyx) - 1,
            )
            state.level[agent] = level + 1
            state.position_zyx[agent] = finer
            state.history_zyx[agent] = finer
            state.recent[agent] = [tuple(int(v) for v in finer)]
            state.recent_q[agent] = [np.nan]
            state.level_steps[agent] = 0
            state.blocked[agent] = 0
        else:
            state.done[agent] = True


def _summarise(
    world: LandmarkWorld,
    variant: Variant,
    state: AgentState,
    names: list[str],
    n_starts: int,
    elapsed: float,
    config: SearchConfig,
) -> dict[str, Detection]:
    detections = {}
    finest = world.levels_mm[-1]
    for row, name in enumerate(names):
        agents = np.arange(row * n_starts, (row + 1) * n_starts)
        ends = np.array(
            [
                state.final_lps[a]
                if not np.isnan(state.final_lps[a, 0])
                else variant.pyramid.lps_of_index(int(state.level[a]), state.position_zyx[a])
                for a in agents
            ]
        )
        stayed = agents[~state.left_volume[agents]]
        kept = ends[~state.left_volume[agents]]
        if stayed.size:
            position = np.median(kept, axis=0)
            # Q-values near 0 at the end mean the network expects no more progress: it is there.
            q_confidence = float(np.mean(1.0 / (1.0 + np.maximum(state.last_q_max[stayed], 0.0))))
            spread = np.linalg.norm(kept - position, axis=1)
            agreement = float(np.mean(spread <= 2 * finest)) if n_starts > 1 else 1.0
            confidence = q_confidence * agreement * stayed.size / n_starts
            found = confidence >= config.min_confidence
        else:
            position, confidence, found = np.full(3, np.nan), 0.0, False
        detections[name] = Detection(
            name=name,
            position_lps_mm=position,
            found=bool(found),
            confidence=float(confidence),
            steps=int(state.steps[agents].sum()),
            seconds=elapsed / max(len(names), 1),
            start_positions_lps_mm=ends,
            trajectories_lps_mm=[np.array(state.trajectories_lps[a]) for a in agents],
        )
    return detections


def scored_detections(
    landmark_names: Sequence[str], truths_lps_mm: NDArray, detections: dict[str, Detection]
) -> list[tuple[str, NDArray, Detection, float, bool]]:
    """``(name, truth, detection, error_mm, found)`` for each annotated landmark (NaN truths skipped).

    ``error_mm`` is NaN when the search located nothing; ``found`` is False then, or when the
    search reported the landmark as not found.
    """
    scored = []
    for row, name in enumerate(landmark_names):
        truth = truths_lps_mm[row]
        if np.isnan(truth[0]):
            continue
        detection = detections[name]
        position = detection.position_lps_mm
        error = float(np.linalg.norm(position - truth)) if not np.isnan(position[0]) else float("nan")
        scored.append((name, truth, detection, error, bool(detection.found and not np.isnan(error))))
    return scored


# ---------------------------------------------------------------------- registration
@dataclass(frozen=True)
class AlignConfig:
    """Test-time registration settings.

    Attributes:
        oscillation_window: a return to one of this many last transforms ends a level.
        max_steps_per_level: cap per level (a safety net; oscillation normally ends first).
        trust_steps: at a finer level no parameter may move more than this many steps of the
            coarser level away from where that level left it (the range finer levels were
            trained on); moves beyond are masked. 0 disables the limit.
        refine: ``"none"`` or ``"sitk"`` (rigid only): after the agent, a short single-level
            SimpleITK optimisation (versor rigid, Mattes MI) on the finest level's images,
            started from the agent's transform: the agent supplies the capture range, the
            optimiser the last fraction of a millimetre. Evaluations report both.
        refine_iterations, refine_samples: the refinement's iterations and metric samples.
    """

    oscillation_window: int = 4
    max_steps_per_level: int = 80
    trust_steps: float = 2.0
    refine: str = "none"
    refine_iterations: int = 40
    refine_samples: int = 10_000

    def __post_init__(self) -> None:
        if self.oscillation_window < 2:
            raise ValueError(f"align.oscillation_window: expected >= 2, got {self.oscillation_window}")
        if self.max_steps_per_level < 1:
            raise ValueError(f"align.max_steps_per_level: expected >= 1, got {self.max_steps_per_level}")
        if self.trust_steps < 0:
            raise ValueError(f"align.trust_steps: expected >= 0 (0: no limit), got {self.trust_steps}")
        if self.refine not in ("none", "sitk"):
            raise ValueError(f"align.refine: expected 'none' or 'sitk', got {self.refine!r}")
        if self.refine_iterations < 1 or self.refine_samples < 100:
            raise ValueError("align.refine_iterations and align.refine_samples: expected >= 1 and >= 100")


@dataclass(frozen=True)
class Alignment:
    """One registration's answer and path (parameters in mm / degrees / std-devs)."""

    case_id: str
    params: NDArray[np.float64]  # (n_params,) final parameters
    error_mm: float  # final mean control-point error (NaN when the truth is unknown)
    initial_error_mm: float
    steps: int
    seconds: float
    trajectory_params: NDArray[np.float64]  # (T, n_params), start included
    trajectory_errors_mm: NDArray[np.float64]  # (T,)
    trajectory_levels: NDArray[np.int64]  # (T,)


class AlignmentOracle:
    """Greedy on the true error: Q(a) = the reward of action a (needs the pair's ground truth)."""

    def __init__(self, world: AlignmentWorld) -> None:
        self.world = world

    def __call__(
        self, observations: dict[str, NDArray], pair: AlignmentPair, params: NDArray, level: int
    ) -> NDArray:
        return self.world.candidate_rewards(pair, level, params)[np.newaxis]


def align(
    world: AlignmentWorld,
    pair: AlignmentPair,
    policy: Callable[..., NDArray],
    start_params: NDArray | None = None,
    config: AlignConfig = AlignConfig(),
) -> Alignment:
    """Greedy registration of one pair, coarse to fine, from ``start_params`` (default: the truth + 0).

    ``policy(observations, pair, params, level)`` returns Q-values ``(1, n_actions)``; a
    :class:`QNetworkPolicy` works as is (it reads only the observations).
    """
    began = time.perf_counter()
    params = (
        np.rint(np.asarray(start_params, np.float64) * UNIT).astype(np.int64)
        if start_params is not None
        else np.rint(pair.truth * UNIT).astype(np.int64)
    )
    if params.shape != (world.n_params,):
        raise ValueError(f"align: start parameters must have {world.n_params} values, got {params.shape}")
    level = 0
    recent: list[tuple[int, ...]] = [tuple(int(v) for v in params)]
    path_params, path_levels = [params.copy()], [0]
    level_steps = 0
    steps = 0
    entry = params.copy()
    while True:
        observation = world.observation(pair, level, params)
        batch = {"patch": observation["patch"][np.newaxis], "level": np.array([level])}
        q_values = np.asarray(policy(batch, pair, params, level), dtype=np.float64)[0]
        if level > 0 and config.trust_steps > 0:
            reach = config.trust_steps * world.steps_int[level - 1]
            for action in range(world.n_actions):
                index, delta = world.action_delta(action, level)
                if abs(params[index] + delta - entry[index]) > reach[index]:
                    q_values[action] = -np.inf
        index, delta = world.action_delta(int(np.argmax(q_values)), level)
        params = params.copy()
        params[index] += delta
        steps += 1
        level_steps += 1
        key = tuple(int(v) for v in params)
        oscillating = key in recent[-config.oscillation_window :]
        recent.append(key)
        path_params.append(params.copy())
        path_levels.append(level)
        if oscillating or level_steps >= config.max_steps_per_level:
            if level + 1 == world.n_levels:
                break
            level += 1
            level_steps = 0
            recent = [key]
            entry = params.copy()
    trajectory = np.array(path_params)
    errors = world.errors_mm(pair, trajectory)
    return Alignment(
        case_id=pair.case_id,
        params=trajectory[-1] / UNIT,
        error_mm=float(errors[-1]),
        initial_error_mm=float(errors[0]),
        steps=steps,
        seconds=time.perf_counter() - began,
        trajectory_params=trajectory / UNIT,
        trajectory_errors_mm=errors,
        trajectory_levels=np.array(path_levels, dtype=np.int64),
    )


def refine_alignment(
    world: AlignmentWorld, pair: AlignmentPair, result: Alignment, config: AlignConfig = AlignConfig()
) -> Alignment:
    """The agent's rigid answer polished by a short SimpleITK optimisation (see ``AlignConfig.refine``).

    The refined parameters are appended to the trajectory at level ``n_levels`` (a level past
    the agent's); ``seconds`` then includes the refinement.
    """
    from agents.baselines import RigidBaselineConfig, rigid_baseline
    from envs.core import params_from_transform
    from envs.tasks import RigidWorld

    if not isinstance(world, RigidWorld):
        raise ValueError("refine: only rigid registrations can be refined (refine: none for the SDM)")
    began = time.perf_counter()
    finest = world.n_levels - 1
    initial = world.transform(pair, np.rint(result.params * UNIT).astype(np.int64))
    settings = RigidBaselineConfig(
        shrink_factors=(1,),
        smoothing_sigmas_mm=(0.0,),
        iterations=config.refine_iterations,
        metric_samples=config.refine_samples,
        initializer="none",
        max_step_mm=1.0,
        intensity_window=None,
    )
    try:
        refined = rigid_baseline(
            pair.fixed.levels[finest], pair.moving.levels[finest], initial=initial, config=settings
        )
        params = params_from_transform(refined.transform, pair.center_lps_mm)
    except ValueError:
        params = result.params  # the optimiser found no overlap: keep the agent's answer
    params_int = np.rint(params * UNIT).astype(np.int64)
    error = float(world.errors_mm(pair, params_int)[0])
    return Alignment(
        case_id=result.case_id,
        params=params_int / UNIT,
        error_mm=error,
        initial_error_mm=result.initial_error_mm,
        steps=result.steps,
        seconds=result.seconds + time.perf_counter() - began,
        trajectory_params=np.vstack([result.trajectory_params, params_int / UNIT]),
        trajectory_errors_mm=np.append(result.trajectory_errors_mm, error),
        trajectory_levels=np.append(result.trajectory_levels, world.n_levels),
    )


def _as_volume(image: Any, role: str) -> Any:
    from envs.core import Volume

    if isinstance(image, Volume):
        return image
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - SimpleITK is a dependency
        sitk = None
    if sitk is not None and isinstance(image, sitk.Image):
        if image.GetDimension() != 3:
            raise ValueError(
                f"register: the {role} image is {image.GetDimension()}-D; expected two 3-D volumes "
                "(fixed and moving of the same dimensionality)"
            )
        return Volume.from_sitk(image, name=role)
    raise ValueError(f"register: the {role} image must be an envs.core.Volume or a 3-D SimpleITK image")


def register(
    fixed: Any,
    moving: Any,
    policy: Callable[..., NDArray],
    world: AlignmentWorld,
    *,
    initial: NDArray | Any | None = None,
    preset: str = "ct",
    moving_preset: str | None = None,
    config: AlignConfig = AlignConfig(),
) -> tuple[Any, Alignment]:
    """Register ``moving`` to ``fixed`` with a trained agent; returns ``(answer, alignment)``.

    For a rigid world the answer is a ``SimpleITK.Euler3DTransform`` mapping fixed points to
    moving points (write it with :func:`envs.io.write_transform`; Slicer and SimpleITK read
    it); for an SDM world it is the displacement field ``(z, y, x, 3)`` on the fixed grid
    (``moving`` must be the world's atlas, or ``None``). ``initial`` is a SimpleITK transform
    or rigid parameters to start from (default: identity).

    Raises:
        ValueError: images of other dimensionality, or a moving volume that does not overlap
            the fixed volume's region of interest under the initial transform.
    """
    from envs.tasks import DeformableWorld

    fixed = _as_volume(fixed, "fixed")
    if isinstance(world, DeformableWorld):
        if moving is not None and _as_volume(moving, "moving") is not world.atlas:
            raise ValueError("register: an SDM agent warps its own atlas; pass moving=None or world.atlas")
        pair = world.pair_from_volumes(fixed, preset=preset)
        start = np.zeros(world.n_params) if initial is None else np.asarray(initial, np.float64)
    else:
        moving = _as_volume(moving, "moving")
        pair = world.pair_from_volumes(fixed, moving, preset=preset, moving_preset=moving_preset)
        if initial is None:
            start = np.zeros(world.n_params)
        elif isinstance(initial, np.ndarray | list | tuple):
            start = np.asarray(initial, np.float64)
        else:
            from envs.core import params_from_transform

            start = params_from_transform(initial, pair.center_lps_mm)
    first = world.render_moving(pair, 0, np.rint(start * UNIT).astype(np.int64))
    if not first.any():
        raise ValueError(
            f"register: the moving volume does not overlap the fixed volume's region of interest under the "
            f"initial transform (start parameters {np.round(start, 2).tolist()}); check both headers "
            "(origin, direction) or pass an initial transform that brings them together"
        )
    result = align(world, pair, policy, start, config)
    if config.refine == "sitk" and not isinstance(world, DeformableWorld):
        result = refine_alignment(world, pair, result, config)
    params_int = np.rint(result.params * UNIT).astype(np.int64)
    if isinstance(world, DeformableWorld):
        return world.sdm.field_on(fixed, result.params), result
    return world.transform(pair, params_int), result  # type: ignore[attr-defined]


def write_registration(
    folder: str | Path,
    fixed: Any,
    moving: Any,
    answer: Any,
    alignment: Alignment,
    *,
    param_names: Sequence[str] = (),
    labels: Any = None,
) -> dict[str, Path]:
    """Write a registration as files SimpleITK and 3D Slicer read; returns the paths by kind.

    Rigid (``answer`` a SimpleITK transform): ``transform.tfm`` (fixed -> moving points, ITK's
    convention: Slicer uses it to resample the moving volume onto the fixed one). SDM
    (``answer`` a displacement field on the fixed grid): ``displacement.nii.gz``, a vector
    volume Slicer loads as a transform. Both: ``warped.nii.gz`` (moving resampled on the fixed
    grid), ``warped_labels.nii.gz`` when ``labels`` (the moving label map) is given, and
    ``trajectory.csv`` (level, parameters and error per step).
    """
    import SimpleITK as sitk

    from envs import io
    from envs.core import Volume
    from envs.io.atomic import atomic_write_text

    out = Path(folder)
    written: dict[str, Path] = {}
    fixed_image = fixed.to_sitk()
    if isinstance(answer, np.ndarray):
        written["displacement"] = io.write_displacement_field(answer, fixed, out / "displacement.nii.gz")
        field = sitk.GetImageFromArray(answer.astype(np.float64), isVector=True)
        field.CopyInformation(fixed_image)
        transform: Any = sitk.DisplacementFieldTransform(field)
    else:
        transform = answer
        written["transform"] = io.write_transform(transform, out / "transform.tfm")
    background = float(np.min(moving.voxels))
    warped = sitk.Resample(
        sitk.Cast(moving.to_sitk(), sitk.sitkFloat32), fixed_image, transform, sitk.sitkLinear, background
    )
    warped_volume = Volume.from_sitk(sitk.Cast(warped, moving.to_sitk().GetPixelID()), name="warped")
    written["warped"] = io.write_volume(warped_volume, out / "warped.nii.gz")
    if labels is not None:
        warped_labels = sitk.Resample(labels.to_sitk(), fixed_image, transform, sitk.sitkNearestNeighbor, 0)
        written["warped_labels"] = io.write_volume(
            Volume.from_sitk(warped_labels, name="warped labels"), out / "warped_labels.nii.gz"
        )
    names = list(param_names) or [f"p{i}" for i in range(alignment.trajectory_params.shape[1])]
    lines = [",".join(["step", "level", *names, "error_mm"])]
    for step, (level, params, error) in enumerate(
        zip(
            alignment.trajectory_levels,
            alignment.trajectory_params,
            alignment.trajectory_errors_mm,
            strict=True,
        )
    ):
        lines.append(",".join([str(step), str(int(level)), *(f"{v:.3f}" for v in params), f"{error:.4f}"]))
    written["trajectory"] = atomic_write_text(out / "trajectory.csv", "\n".join(lines) + "\n")
    return written
