"""Landmark search: all agents of one volume step together, coarse to fine.

An agent per (landmark, start) walks the volume's pyramid in voxel steps; one batched policy
call per step serves every agent still searching. A level ends when an agent moves back to one
of its last ``oscillation_window`` positions (oscillation) or after ``max_steps_per_level``
steps; then the agent continues one level finer from the same point. The finest level's end is
the answer. An agent that keeps pushing against the volume border (``max_blocked`` times at one
level) is reported as "not in the field of view". Answers are LPS millimetres; per-level
positions are voxel indices ``(z, y, x)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agents.search.policies import AgentState, LandmarkPolicy
from envs.tasks import ACTIONS_ZYX, LandmarkWorld, Variant

__all__ = ["Detection", "SearchConfig", "detect_landmarks", "scored_detections", "start_points"]


@dataclass(frozen=True)
class SearchConfig:
    """Test-time search settings.

    Attributes:
        starts: starting points per landmark; the answer is the per-axis median of the
            starts that stayed in the volume (several starts guard against gross misses).
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


@dataclass(frozen=True)
class Detection:
    """One landmark's answer, in LPS mm.

    ``confidence`` is the product of three factors in 0..1: the network's expectation of no
    further gain at the end (``1 / (1 + max(max Q, 0))``, averaged over the starts that stayed
    in the volume), the fraction of those starts within two finest voxel sizes of the median, and the
    fraction of starts that stayed in the volume.
    """

    name: str
    position_lps_mm: NDArray[np.float64]  # (3,) median over starts; NaN when every start left the volume
    found: bool  # False: not in the field of view, or confidence below the threshold
    confidence: float  # 0..1
    steps: int  # summed over starts
    seconds: float  # wall time of the whole search divided by the number of landmarks
    start_positions_lps_mm: NDArray[np.float64]  # (starts, 3) where each start ended
    trajectories_lps_mm: list[NDArray[np.float64]]  # one (T, 3) path per start


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
    policy: LandmarkPolicy,
    landmarks: Sequence[str] | None = None,
    config: SearchConfig = SearchConfig(),
    starts_lps_mm: NDArray | None = None,
    seed: int = 0,
) -> dict[str, Detection]:
    """Search every requested landmark of one variant (usually aug 0 of a test case).

    Args:
        world: renders patches (its levels, patch size and frames must match the policy).
        variant: the volume's pyramid (``world.variant(index)``).
        policy: Q-values ``(len(active), 6)`` for a batch of observations (a
            :class:`~agents.search.policies.LandmarkPolicy`: a ``QNetworkPolicy``, ``OraclePolicy``
            or any function of that signature).
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
        observations: dict[str, NDArray] = {
            "patch": patches,
            "landmark": state.landmark[active],
            "level": state.level[active],
        }
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
    # The oscillation rule: a move back to one of the last ``oscillation_window`` positions ends the level.
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
