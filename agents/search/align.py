"""Alignment search: greedy steps on a transform's parameters, coarse to fine.

Parameters are integers in :data:`envs.tasks.UNIT` per mm, degree or standard deviation; each
action moves one parameter by the current level's step. A level ends when the search returns
to one of its last ``oscillation_window`` transforms (oscillation) or after
``max_steps_per_level`` steps; the next level takes smaller steps from there, and the finest
level's end is the answer. With ``AlignConfig.symmetric`` a rigid search also runs the other
way (the moving volume as the fixed one) and the two answers are averaged
(:mod:`agents.search.symmetric`). :func:`refine_alignment` optionally polishes a rigid answer
with a short SimpleITK optimisation.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from agents.search.align_config import AlignConfig, Alignment, with_final_answer
from agents.search.policies import AlignmentPolicy
from agents.search.symmetric import with_inverse_search
from envs.core import params_from_transform
from envs.tasks import UNIT, AlignmentPair, AlignmentWorld, RigidWorld

__all__ = ["AlignConfig", "Alignment", "align", "refine_alignment", "with_final_answer"]


def align(
    world: AlignmentWorld,
    pair: AlignmentPair,
    policy: AlignmentPolicy,
    start_params: NDArray | None = None,
    config: AlignConfig = AlignConfig(),
) -> Alignment:
    """Greedy registration of one pair, coarse to fine, from ``start_params`` (default: the truth + 0).

    ``policy(observations, pair, params, level)`` returns Q-values ``(1, n_actions)`` (an
    :class:`~agents.search.policies.AlignmentPolicy`: a ``QNetworkPolicy``, an
    ``AlignmentOracle`` or any function of that signature). ``start_params`` are in mm / degrees
    / standard deviations; the answer's parameters are too. With ``config.symmetric`` (rigid
    worlds) the inverse search runs too and the answer is the two's average
    (:func:`agents.search.symmetric.with_inverse_search`).

    Raises:
        ValueError: ``start_params`` without ``world.n_params`` values.
    """
    result = _search(world, pair, policy, start_params, config)
    if config.symmetric and isinstance(world, RigidWorld):
        start = result.trajectory_params[0]
        return with_inverse_search(world, pair, policy, start, result, config, search=_search)
    return result


def _search(
    world: AlignmentWorld,
    pair: AlignmentPair,
    policy: AlignmentPolicy,
    start_params: NDArray | None,
    config: AlignConfig,
) -> Alignment:
    """One greedy search (see :func:`align`)."""
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
        # The oscillation rule: a return to one of the last ``oscillation_window`` transforms ends the level.
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

    if not isinstance(world, RigidWorld):
        raise ValueError("refine: only rigid registrations can be refined (refine: none for the SDM)")
    began = time.perf_counter()
    finest = world.n_levels - 1
    initial = world.transform(pair, np.rint(result.params * UNIT).astype(np.int64))
    spacing = world.levels_mm[finest]
    two = config.refine_levels == 2
    settings = RigidBaselineConfig(
        shrink_factors=(2, 1) if two else (1,),
        smoothing_sigmas_mm=(4.0 * spacing / 3.0, 0.0) if two else (0.0,),
        iterations=config.refine_iterations,
        metric_samples=config.refine_samples,
        initializer="none",
        max_step_mm=2.0 if two else 1.0,
        intensity_window=None,
    )
    try:
        refined = rigid_baseline(
            pair.fixed.levels[finest], pair.moving.levels[finest], initial=initial, config=settings
        )
        params = params_from_transform(refined.transform, pair.center_lps_mm)
    except ValueError:
        params = result.params  # the optimiser found no overlap: keep the agent's answer
    return with_final_answer(world, pair, result, params, began, world.n_levels)
