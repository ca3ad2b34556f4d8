"""Settings and answers of the alignment search (rigid and SDM): :class:`AlignConfig`,
:class:`Alignment` and :func:`with_final_answer` (an answer that comes after the search).

Kept apart from :mod:`agents.search.align` so that the guard and the symmetric search, which
the search calls, can use them without importing the search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from envs.tasks import UNIT, AlignmentPair, AlignmentWorld

__all__ = ["AlignConfig", "Alignment", "with_final_answer"]


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
