"""Landmark search: all agents of one volume step together, coarse to fine.

An agent per (landmark, start) walks the volume's pyramid in voxel steps; one batched policy
call per step serves every agent still searching. A level ends when an agent moves back to one
of its last ``oscillation_window`` positions (oscillation) or after ``max_steps_per_level``
steps; then the agent continues one level finer from the same point. The finest level's end is
the answer, optionally refined below the grid from the Q-values there (``final_point:
"q_subvoxel"``, :func:`subvoxel_offset`). An agent that keeps pushing against the volume border
(``max_blocked`` times at one level) has left the volume; a landmark that at least
``absent_share`` of its starts left is reported as "not in the field of view". The starts of
one landmark agree on a consensus (per-axis median after dropping outlier starts), and their
agreement is the landmark's confidence. Answers are LPS millimetres; per-level positions are
voxel indices ``(z, y, x)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from agents.search.landmark_config import AGREEMENT_VOX, FINAL_POINTS, Detection, SearchConfig
from agents.search.policies import AgentState, LandmarkPolicy
from envs.tasks import ACTIONS_ZYX, LandmarkWorld, Variant

__all__ = [
    "AGREEMENT_VOX",
    "FINAL_POINTS",
    "Detection",
    "SearchConfig",
    "detect_landmarks",
    "scored_detections",
    "start_points",
    "subvoxel_offset",
]


def subvoxel_offset(q_values: NDArray, iterations: int = 30) -> NDArray[np.float64]:
    """The target's offset from the current voxel ``(..., 3)`` (z, y, x voxels, within +-0.5),
    from the Q-values ``(..., 6)`` of the six moves there (:data:`envs.tasks.ACTIONS_ZYX` order).

    For Q-values that are the immediate reward (distance decrease in voxels: the oracle, a
    greedy learner), with ``delta`` the target minus the position and ``e_k`` the unit step,
    ``Q(+e_k) - Q(-e_k) = |delta + e_k| - |delta - e_k| = 4 delta_k / S_k`` where
    ``S_k = |delta + e_k| + |delta - e_k|`` (2 on the axis, up to 2.52 at the voxel's corners,
    so half the difference alone is up to 21 % short). The fixed point
    ``delta_k = (Q(+e_k) - Q(-e_k)) S_k(delta) / 4``, started at half the difference, is solved
    by ``iterations`` rounds, clipped to +-0.5 voxel: a contraction (each round shrinks the
    error by a factor 0.42 or less inside the half-voxel cube), so 30 rounds are exact to 1e-9
    voxel for exact Q-values; for noisy ones the answer never leaves the voxel. A NaN Q-value
    gives 0 on its axis.

    Example:
        >>> from envs.tasks import ACTIONS_ZYX
        >>> delta = np.array([0.3, -0.2, 0.1])
        >>> q = np.linalg.norm(delta) - np.linalg.norm(delta - ACTIONS_ZYX, axis=1)
        >>> np.round(subvoxel_offset(q), 6)
        array([ 0.3, -0.2,  0.1])
    """
    q = np.asarray(q_values, dtype=np.float64)
    if q.shape[-1] != len(ACTIONS_ZYX):
        raise ValueError(f"subvoxel_offset: expected Q-values (..., {len(ACTIONS_ZYX)}), got shape {q.shape}")
    difference = np.nan_to_num(q[..., 0::2] - q[..., 1::2], nan=0.0)  # (+z - -z, +y - -y, +x - -x)
    offset = np.clip(difference / 2.0, -0.5, 0.5)
    for _ in range(iterations):
        off_axis = np.sum(offset**2, axis=-1, keepdims=True) - offset**2
        span = np.sqrt(off_axis + (1.0 + offset) ** 2) + np.sqrt(off_axis + (1.0 - offset) ** 2)
        offset = np.clip(difference * span / 4.0, -0.5, 0.5)
    return offset


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
    config: SearchConfig | None = None,
    starts_lps_mm: NDArray | None = None,
    seed: int = 0,
    first_level: int = 0,
) -> dict[str, Detection]:
    """Search every requested landmark of one variant (usually aug 0 of a test case).

    Args:
        world: renders patches (its levels, patch size and frames must match the policy).
        variant: the volume's pyramid (``world.variant(index)``).
        policy: Q-values ``(len(active), 6)`` for a batch of observations (a
            :class:`~agents.search.policies.LandmarkPolicy`: a ``QNetworkPolicy``, ``OraclePolicy``
            or any function of that signature).
        landmarks: names to find (default: all of ``world.landmark_names``).
        config: the search settings (default :class:`SearchConfig`).
        starts_lps_mm: ``(starts, 3)`` starting points shared by every landmark, or
            ``(landmarks, starts, 3)``, one set per landmark; default :func:`start_points`.
        seed: for random starting points.
        first_level: the pyramid level the agents start at (0, the coarsest, by default; a
            finer level keeps a search near its starts, as the shape check's re-search does).

    Returns:
        name -> :class:`Detection`, in the order of ``landmarks``.
    """
    names = list(landmarks) if landmarks is not None else list(world.landmark_names)
    unknown = [name for name in names if name not in world.landmark_names]
    if unknown:
        raise ValueError(
            f"search: landmark(s) {unknown} unknown to the model; it knows {world.landmark_names}"
        )
    config = config if config is not None else SearchConfig()
    if not 0 <= first_level < world.n_levels:
        raise ValueError(f"search: first_level {first_level} outside the {world.n_levels} levels")
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    starts = (
        np.asarray(starts_lps_mm, dtype=np.float64)
        if starts_lps_mm is not None
        else start_points(world, variant, config.starts, rng)
    )
    if starts.ndim == 3:  # one set of starts per landmark
        if len(starts) != len(names):
            raise ValueError(f"search: {len(starts)} sets of starts for {len(names)} landmarks")
        n_starts, points = starts.shape[1], starts.reshape(-1, 3)
    else:
        n_starts, points = len(starts), np.tile(starts, (len(names), 1))
    landmark_index = np.repeat([world.landmark_names.index(name) for name in names], n_starts)
    start_zyx = variant.pyramid.index_zyx(first_level, points)
    start_zyx = np.clip(start_zyx, 0, np.array(variant.pyramid.levels[first_level].shape_zyx) - 1)
    count = len(landmark_index)
    state = AgentState(
        landmark=landmark_index.astype(np.int64),
        level=np.full(count, first_level, np.int64),
        position_zyx=start_zyx.astype(np.int64),
        history_zyx=np.repeat(start_zyx[:, np.newaxis], world.frames, axis=1).astype(np.int64),
        done=np.zeros(count, bool),
        left_volume=np.zeros(count, bool),
        steps=np.zeros(count, np.int64),
        level_steps=np.zeros(count, np.int64),
        blocked=np.zeros(count, np.int64),
        last_q_max=np.zeros(count),
        last_q=np.full((count, len(ACTIONS_ZYX)), np.nan),
        final_lps=np.full((count, 3), np.nan),
        subvoxel_pending=np.zeros(count, bool),
        recent=[[tuple(int(v) for v in p)] for p in start_zyx],
        recent_q=[[np.nan] for _ in start_zyx],
        recent_q_values=[[None] for _ in start_zyx],
        trajectories=[[(first_level, *(int(v) for v in p))] for p in start_zyx],
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
        state.last_q[active] = q_values
        for agent, action in zip(active, actions, strict=True):
            _advance(world, variant, state, int(agent), int(action), config)
    state.done[:] = True
    _subvoxel_endings(variant, state)
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
    state.recent_q_values[agent][-1] = state.last_q[agent].copy()
    # The oscillation rule: a move back to one of the last ``oscillation_window`` positions ends the level.
    oscillating = key in recent[-config.oscillation_window :]
    if oscillating:
        # The level ends inside the cycle, at the position where the agent expected the least
        # further gain (lowest max Q): for a 2-cycle around a target, the side nearer to it.
        start = len(recent) - 1 - recent[::-1].index(key)
        cycle = range(start, len(recent))
        best = min(cycle, key=lambda i: recent_q[i])
        candidate = np.array(recent[best], dtype=np.int64)
        if level + 1 == world.n_levels:
            # The Q-values where the agent ends: for the confidence, and the sub-voxel offset.
            end_q = state.recent_q_values[agent][best]
            state.last_q[agent] = end_q
            if config.final_point == "cycle_mean":
                members = np.array([recent[i] for i in cycle], dtype=np.float64)
                state.final_lps[agent] = variant.pyramid.lps_of_index(level, members.mean(axis=0))
            elif config.final_point == "q_subvoxel":
                state.subvoxel_pending[agent] = True  # from end_q at candidate: after the search
    state.position_zyx[agent] = candidate
    history = state.history_zyx[agent]
    history[1:] = history[:-1].copy()
    history[0] = candidate
    voxel = tuple(int(v) for v in candidate)
    recent.append(voxel)
    recent_q.append(np.nan)
    state.recent_q_values[agent].append(None)
    state.trajectories[agent].append((level, *voxel))
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
            state.recent_q_values[agent] = [None]
            state.level_steps[agent] = 0
            state.blocked[agent] = 0
        else:
            state.done[agent] = True


def _subvoxel_endings(variant: Variant, state: AgentState) -> None:
    """The ``q_subvoxel`` answers of every agent that ended so, in one batch: each agent's end
    voxel moved by :func:`subvoxel_offset` of its Q-values there (``last_q``)."""
    agents = np.flatnonzero(state.subvoxel_pending)
    if agents.size == 0:
        return
    offsets = subvoxel_offset(state.last_q[agents])
    for agent, offset in zip(agents, offsets, strict=True):
        level, voxel = int(state.level[agent]), state.position_zyx[agent]
        # On the grid's border a move out has no distance to compare: no offset along it.
        offset[(voxel == 0) | (voxel == np.array(variant.pyramid.levels[level].shape_zyx) - 1)] = 0.0
        state.final_lps[agent] = variant.pyramid.lps_of_index(level, voxel + offset)


def _trajectory_lps(variant: Variant, trajectory: list[tuple[int, ...]]) -> NDArray[np.float64]:
    """``(T, 3)`` LPS mm of a trajectory of ``(level, z, y, x)`` voxels."""
    steps = np.array(trajectory, dtype=np.int64)
    points = np.empty((len(steps), 3))
    for level in np.unique(steps[:, 0]):
        at = steps[:, 0] == level
        points[at] = variant.pyramid.lps_of_index(int(level), steps[at, 1:])
    return points


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
    finest_mm = world.levels_mm[-1]
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
        stayed = ~state.left_volume[agents]
        if stayed.any():
            agree = _consensus(ends, stayed, finest_mm, config.consensus_radius_vox)
            # No start near the median (scattered starts): answer their median, with no agreement.
            members = agree if agree.any() else stayed
            position = np.median(ends[members], axis=0)
            # Q-values near 0 at the end mean the network expects no more progress: it is there.
            end_q_max = np.nanmax(state.last_q[agents[members]], axis=1)
            q_confidence = float(np.mean(1.0 / (1.0 + np.maximum(end_q_max, 0.0))))
            distance_vox = np.linalg.norm(ends[stayed] - position, axis=1) / finest_mm
            agreement = float(np.sum(np.exp(-0.5 * (distance_vox / AGREEMENT_VOX) ** 2))) / n_starts
            confidence = q_confidence * agreement
            left_share = 1.0 - float(np.mean(stayed))
            found = confidence >= config.min_confidence and left_share < config.absent_share
        else:
            position, confidence, found = np.full(3, np.nan), 0.0, False
        end_q = state.last_q[agents].copy()
        end_q[~stayed] = np.nan
        detections[name] = Detection(
            name=name,
            position_lps_mm=position,
            found=bool(found),
            confidence=float(confidence),
            steps=int(state.steps[agents].sum()),
            seconds=elapsed / max(len(names), 1),
            start_positions_lps_mm=ends,
            trajectories_lps_mm=[_trajectory_lps(variant, state.trajectories[a]) for a in agents],
            end_q_values=end_q,
        )
    return detections


def _consensus(
    ends_lps_mm: NDArray, stayed: NDArray[np.bool_], finest_mm: float, radius_vox: float
) -> NDArray[np.bool_]:
    """The starts that agree ``(starts,)``: stayed in the volume and ended within ``radius_vox``
    finest voxels of the per-axis median of the starts that stayed (``radius_vox`` 0: every
    start that stayed). May be empty when the starts scatter."""
    if radius_vox == 0:
        return stayed.copy()
    centre = np.median(ends_lps_mm[stayed], axis=0)
    distance_vox = np.linalg.norm(ends_lps_mm - centre, axis=1) / finest_mm
    return stayed & (distance_vox <= radius_vox)


def scored_detections(
    landmark_names: Sequence[str],
    truths_lps_mm: NDArray,
    detections: dict[str, Detection],
    include_absent: bool = False,
) -> list[tuple[str, NDArray, Detection, float, bool]]:
    """``(name, truth, detection, error_mm, found)`` for each landmark of ``landmark_names``.

    Args:
        landmark_names: the rows of ``truths_lps_mm``.
        truths_lps_mm: ``(n, 3)`` true points (LPS mm); a NaN row is a landmark absent from the
            scan (not annotated, or outside its field of view: :class:`envs.tasks.Variant`).
        detections: the search's answers by name.
        include_absent: also score absent landmarks (truth and ``error_mm`` NaN, ``found`` as
            the search reported it: True is a false detection); False skips them.

    For a present landmark, ``error_mm`` is NaN when the search located nothing; ``found`` is
    False then, or when the search reported the landmark as not found.
    """
    scored = []
    for row, name in enumerate(landmark_names):
        truth = truths_lps_mm[row]
        detection = detections[name]
        position = detection.position_lps_mm
        if np.isnan(truth[0]):
            if include_absent:
                found = bool(detection.found and not np.isnan(position[0]))
                scored.append((name, truth, detection, float("nan"), found))
            continue
        error = float(np.linalg.norm(position - truth)) if not np.isnan(position[0]) else float("nan")
        scored.append((name, truth, detection, error, bool(detection.found and not np.isnan(error))))
    return scored
