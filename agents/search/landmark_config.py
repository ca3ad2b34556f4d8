"""The landmark search's settings and answers: :class:`SearchConfig` and :class:`Detection`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["AGREEMENT_VOX", "FINAL_POINTS", "Detection", "SearchConfig"]

FINAL_POINTS = ("min_q", "cycle_mean", "q_subvoxel")
"""the choices of :attr:`SearchConfig.final_point`"""
AGREEMENT_VOX = 2.0
"""width (finest voxels) of the Gaussian weight of a start's distance from the answer in the confidence"""


@dataclass(frozen=True)
class SearchConfig:
    """Test-time search settings.

    Attributes:
        starts: starting points per landmark; the answer is the per-axis median of the
            starts that stayed in the volume and agree (several starts guard against gross
            misses).
        oscillation_window: a move back to one of this many last positions ends a level.
        max_steps_per_level: cap per level (a safety net; oscillation normally ends first).
        max_blocked: moves against the border at one level before the agent is reported
            as having left the field of view.
        absent_share: a landmark is reported not in the field of view when at least this share
            of its starts left the volume (0.5: half or more; 1.0: only when every start left).
        min_confidence: below this confidence a landmark is reported as not found.
        final_point: where the finest level's oscillation cycle ends: ``"min_q"`` (the cycle
            position with the lowest max Q, where the agent expects no further gain),
            ``"cycle_mean"`` (the mean of the cycle's positions: sub-voxel) or
            ``"q_subvoxel"`` (the ``"min_q"`` voxel moved by the offset that the Q-values of
            opposite moves there imply, :func:`subvoxel_offset`: at most half a voxel per axis,
            none along an axis where the voxel is on the grid's border; meant for Q-values that
            are immediate rewards: the oracle, ``agent.algorithm: greedy``). With the oracle at
            2 mm finest steps (80 landmarks of 8 phantom variants, 3 starts), ``"min_q"`` has
            the grid's floor (median 1.00 mm, p95 1.33 mm), ``"cycle_mean"`` 0.67 / 1.02 mm,
            ``"q_subvoxel"`` is exact (below 1e-4 mm); with a fixed Gaussian error of 0.1 / 0.3
            voxel on every Q-value, ``"q_subvoxel"`` 0.22 / 0.63 mm median against ``"min_q"``
            1.07 / 1.15 mm (40 landmarks of 4 phantoms).
        consensus_radius_vox: starts that end farther than this many finest voxels from the
            per-axis median of the starts are outliers, dropped from the answer (the median of
            the rest); ``0`` keeps every start.
        shape_check: check the answers against the training scans' landmark configuration
            (:func:`agents.search.shape.detect_with_shape`, when the run has a shape): an answer
            farther than its tolerance from where a robust similarity fit of the others puts it
            is searched again from there, or reported absent when that point is outside the scan.
        shape_tolerance_mm: the least tolerance (mm); a landmark's own is at least 2x its spread
            over the training scans.
        shape_fallback: when neither the first nor the re-search's answer is within the tolerance of
            the fitted point, and they are not within half of it of each other, answer the fitted
            point itself (confidence 0).
        shape_restart_level: the pyramid level a suspect's re-search starts at (0 = coarsest,
            -1 = finest, as a Python index). The finest: a coarser start walked back to the wrong
            vertebra on phantoms, where the finest level found the right one.
    """

    starts: int = 1
    oscillation_window: int = 4
    max_steps_per_level: int = 120
    max_blocked: int = 3
    absent_share: float = 0.5
    min_confidence: float = 0.0
    final_point: str = "min_q"
    consensus_radius_vox: float = 2.0
    shape_check: bool = False
    shape_tolerance_mm: float = 10.0
    shape_fallback: bool = True
    shape_restart_level: int = -1

    def __post_init__(self) -> None:
        if self.starts < 1:
            raise ValueError(f"search.starts: expected >= 1, got {self.starts}")
        if self.oscillation_window < 2:
            raise ValueError(f"search.oscillation_window: expected >= 2, got {self.oscillation_window}")
        if self.final_point not in FINAL_POINTS:
            raise ValueError(
                f"search.final_point: expected one of {', '.join(map(repr, FINAL_POINTS))}, "
                f"got {self.final_point!r}"
            )
        if not self.consensus_radius_vox >= 0:
            raise ValueError(
                f"search.consensus_radius_vox: expected >= 0 finest voxels (0 keeps every start), "
                f"got {self.consensus_radius_vox}"
            )
        if not 0 < self.absent_share <= 1:
            raise ValueError(f"search.absent_share: expected a share in (0, 1], got {self.absent_share}")
        if not self.shape_tolerance_mm > 0:
            raise ValueError(f"search.shape_tolerance_mm: expected > 0 mm, got {self.shape_tolerance_mm}")
        if self.max_steps_per_level < 1 or self.max_blocked < 1:
            raise ValueError("search.max_steps_per_level and search.max_blocked must be >= 1")


@dataclass(frozen=True)
class Detection:
    """One landmark's answer, in LPS mm.

    ``confidence`` (0..1) is the product of two factors: the agreement of the starts, the mean
    over all starts of ``exp(-d^2 / 2 w^2)`` with ``d`` the distance of a start's end from the
    answer and ``w`` = :data:`AGREEMENT_VOX` finest voxels (a start that left the volume counts
    0), and the network's expectation of no further gain at the end, ``1 / (1 + max(max Q, 0))``
    averaged over the starts that agree. On searches by an imperfect policy (the oracle plus a
    fixed Gaussian error of 0.8 voxel on every Q-value: 33-48 % misses over 10 mm; 40 landmarks
    of 4 phantoms, 3 error draws, 3 or 5 starts) its AUROC separating hits from misses was
    0.94-0.99, against 0.89-0.96 for the share of starts within ``w`` times the Q factor (the
    confidence before); no answer at confidence >= 0.5 (15-25 % of them) was a miss. With one
    start the Q factor is the only signal. With ``shape_check`` the confidence is also multiplied
    by the answer's agreement with the shape fit (:mod:`agents.search.shape`).
    """

    name: str
    position_lps_mm: NDArray[np.float64]  # (3,) median over starts; NaN when every start left the volume
    found: bool  # False: not in the field of view, or confidence below the threshold
    confidence: float  # 0..1
    steps: int  # summed over starts
    seconds: float  # wall time of the whole search divided by the number of landmarks
    start_positions_lps_mm: NDArray[np.float64]  # (starts, 3) where each start ended
    trajectories_lps_mm: list[NDArray[np.float64]]  # one (T, 3) path per start
    # (starts, 6) the Q-values at each start's end (NaN rows: none); None when not searched
    end_q_values: NDArray[np.float64] | None = None
