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
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agents.search.policies import AlignmentPolicy
from envs.core import params_from_transform
from envs.tasks import UNIT, AlignmentPair, AlignmentWorld, RigidWorld

__all__ = ["AlignConfig", "Alignment", "align", "refine_alignment"]


@dataclass(frozen=True)
class AlignConfig:
    """Test-time registration settings.

    Attributes:
        oscillation_window: a return to one of this many last transforms ends a level.
        max_steps_per_level: cap per level (a safety net; oscillation normally ends first).
        trust_steps: at a finer level no parameter may move more than this many steps of the
            coarser level away from where that level left it (the range finer levels were
            trained on); moves beyond are masked. 0 disables the limit.
        refine: ``"none"`` or ``"sitk"`` (rigid only): after the agent, a short SimpleITK
            optimisation (versor rigid, Mattes MI) on the finest level's images, started from the
            agent's transform: the agent supplies the capture range, the optimiser the last
            fraction of a millimetre. Evaluations report both.
        refine_levels: 2 (default): the refinement first runs at twice the finest spacing,
            smoothed by 4/3 of it, then at the finest spacing; its basin is wider (held-out real
            CTs, agent+sitk at +-15/30/45/60: 70/80/50/60 % -> 100/90/100/90 % for one agent,
            100/90/60/60 -> 100/100/70/80 % for another); 1: the finest spacing only.
        refine_iterations, refine_samples: the refinement's iterations and metric samples (per level).
        guard: check the final rigid answer (after the refinement) for plausibility
            (:func:`agents.search.guard.guard_alignment`): bounds from the start, and mutual
            information no worse than at the start or SimpleITK's moments initialisation and
            peaked at the answer.
        fallback: what an implausible answer becomes: ``"sitk"`` (SimpleITK's rigid answer from
            the moments initialisation, flagged) or ``"none"`` (refused: no result is written).
        max_translation_mm, max_rotation_deg: the bounds of the answer's change from the start
            per translation and rotation angle; 0 takes 1.5 times the world's misalignment range.
        symmetric: rigid only: also search the inverse registration (moving volume as the fixed
            one, from the inverse start) and answer the average of the two transforms (mean of the
            mapped control points, refitted). A learnt agent's answer on a scan it never saw sits a
            few millimetres off, and the inverse search's error mostly points the other way:
            held-out real CTs, one network alone 10-50 % below 2 mm one way, 75-100 % symmetric
            over three seeds (README). About twice the search time.
        symmetric_tolerance_mm: when the two answers disagree by more than this (mean distance of
            the mapped control points, mm), one of them has left its basin: the one with the
            higher mutual information is kept instead of the average.
        symmetric_min_coverage: the inverse search runs only when the moving volume's body is at
            least this fraction of the fixed volume's (finest level, by volume). A slab or a
            smaller field of view as the fixed volume is unlike anything the agent trained on:
            its inverse searches end 5-110 mm off (partial-overlap pairs, body ratio 0.48-0.57;
            whole moved copies 0.91-0.97).
    """

    oscillation_window: int = 4
    max_steps_per_level: int = 80
    trust_steps: float = 2.0
    refine: str = "none"
    refine_levels: int = 2
    refine_iterations: int = 40
    refine_samples: int = 10_000
    guard: bool = True
    fallback: str = "sitk"
    max_translation_mm: float = 0.0
    max_rotation_deg: float = 0.0
    symmetric: bool = False
    symmetric_tolerance_mm: float = 10.0
    symmetric_min_coverage: float = 0.8

    def __post_init__(self) -> None:
        if self.oscillation_window < 2:
            raise ValueError(f"align.oscillation_window: expected >= 2, got {self.oscillation_window}")
        if self.max_steps_per_level < 1:
            raise ValueError(f"align.max_steps_per_level: expected >= 1, got {self.max_steps_per_level}")
        if self.trust_steps < 0:
            raise ValueError(f"align.trust_steps: expected >= 0 (0: no limit), got {self.trust_steps}")
        if self.refine not in ("none", "sitk"):
            raise ValueError(f"align.refine: expected 'none' or 'sitk', got {self.refine!r}")
        if self.refine_levels not in (1, 2):
            raise ValueError(f"search.refine_levels: expected 1 or 2, got {self.refine_levels!r}")
        if self.refine_iterations < 1 or self.refine_samples < 100:
            raise ValueError("align.refine_iterations and align.refine_samples: expected >= 1 and >= 100")
        if self.fallback not in ("sitk", "none"):
            raise ValueError(
                f"search.fallback: expected 'sitk' (SimpleITK replaces an implausible answer) or 'none' "
                f"(refuse it), got {self.fallback!r}"
            )
        if not 0.0 <= self.symmetric_min_coverage <= 1.0:
            raise ValueError(
                f"search.symmetric_min_coverage: expected 0..1 (moving / fixed body volume), got "
                f"{self.symmetric_min_coverage}"
            )
        if not self.symmetric_tolerance_mm > 0:
            raise ValueError(
                f"search.symmetric_tolerance_mm: expected > 0 (mm), got {self.symmetric_tolerance_mm}"
            )
        if not (self.max_translation_mm >= 0 and self.max_rotation_deg >= 0):
            raise ValueError(
                "search.max_translation_mm / search.max_rotation_deg: expected >= 0 (0: 1.5 times the "
                f"misalignment range), got {self.max_translation_mm} and {self.max_rotation_deg}"
            )


@dataclass(frozen=True)
class Alignment:
    """One registration's answer and path (parameters in mm / degrees / std-devs).

    ``fallback`` is ``""`` for the search's own answer, ``"sitk"`` when the plausibility guard
    replaced it by SimpleITK's, ``"refused"`` when it was implausible and no fallback was
    allowed; ``fallback_reason`` says why.
    """

    case_id: str
    params: NDArray[np.float64]  # (n_params,) final parameters
    error_mm: float  # final mean control-point error (NaN when the truth is unknown)
    initial_error_mm: float
    steps: int
    seconds: float
    trajectory_params: NDArray[np.float64]  # (T, n_params), start included
    trajectory_errors_mm: NDArray[np.float64]  # (T,)
    trajectory_levels: NDArray[np.int64]  # (T,)
    fallback: str = ""
    fallback_reason: str = ""


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
        from agents.search.symmetric import with_inverse_search

        start = result.trajectory_params[0]
        return with_inverse_search(world, pair, policy, start, result, config)
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


def with_final_answer(
    world: AlignmentWorld,
    pair: AlignmentPair,
    result: Alignment,
    params: NDArray[np.float64],
    began: float,
    level: int,
    **fields: str | None,
) -> Alignment:
    """``result`` with ``params`` as its answer, appended to the trajectory at ``level``.

    For answers that come after the agent's search (a refinement, a fallback): the error is the
    world's, ``seconds`` grows by the time since ``began`` (``time.perf_counter()``), and
    ``fields`` (e.g. ``fallback``) are set too.
    """
    params_int = np.rint(np.asarray(params) * UNIT).astype(np.int64)
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
        trajectory_levels=np.append(result.trajectory_levels, level),
        **fields,
    )
