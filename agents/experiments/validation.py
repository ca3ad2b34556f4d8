"""Validation during training, for every task: what is measured, and which result is better.

A validator maps a policy to a dict of metrics (mm); a score maps metrics to a tuple where
lower is better. :class:`agents.experiments.monitor.TrainingMonitor` calls them on its schedule:

- landmarks: :func:`validate` (greedy search on the validation cases) and :func:`landmark_score`;
- registration: :func:`validate_alignment` (greedy search from seeded misalignments) and
  :func:`alignment_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agents.experiments.config import LandmarkExperiment, RigidExperiment, SdmExperiment
from agents.experiments.metrics import summarise_errors
from agents.search import QNetworkPolicy, align, detect_landmarks, scored_detections
from envs.tasks import AlignmentPair, AlignmentWorld, LandmarkWorld, RigidWorld

__all__ = [
    "alignment_score",
    "evaluation_offsets",
    "landmark_score",
    "rigid_scale",
    "validate",
    "validate_alignment",
    "validation_starts",
]


# ---------------------------------------------------------------------- landmarks
def validate(
    policy: Any, world: LandmarkWorld, experiment: LandmarkExperiment, max_cases: int | None = None
) -> dict[str, float]:
    """Median / p95 / max landmark error (mm) and misses of the greedy search on ``world``'s cases.

    A landmark the search does not find counts as an infinite error, so a model that loses
    landmarks can never look better than one that finds them.
    """
    errors = []
    misses = 0
    q_policy = QNetworkPolicy(policy)
    for variant_index in range(min(world.n_variants, max_cases or world.n_variants)):
        variant = world.variant(variant_index)
        detections = detect_landmarks(world, variant, q_policy, config=experiment.search, seed=variant_index)
        for *_, error, found in scored_detections(world.landmark_names, variant.landmarks_lps_mm, detections):
            misses += not found
            errors.append(error if found else np.inf)
    values = np.array(errors) if errors else np.array([np.inf])
    # "higher" picks an observed value: no interpolation with infinite misses.
    return {
        "median_mm": float(np.percentile(values, 50, method="higher")),
        "p95_mm": float(np.percentile(values, 95, method="higher")),
        "max_mm": float(values.max()),
        "misses": float(misses),
    }


def landmark_score(metrics: dict[str, float]) -> tuple[float, ...]:
    """Lower is better: fewer lost landmarks first, then the median, then the tail."""
    return (metrics["misses"], metrics["median_mm"], metrics["p95_mm"])


# ---------------------------------------------------------------------- registration
def evaluation_offsets(world: AlignmentWorld, count: int, scale: Sequence[float], seed: int) -> NDArray:
    """``count`` start offsets from the truth, uniform in +-scale per parameter (deterministic)."""
    rng = np.random.default_rng(seed)
    scale = np.broadcast_to(np.asarray(scale, np.float64), (world.n_params,))
    return rng.uniform(-1.0, 1.0, (count, world.n_params)) * scale


def rigid_scale(mm: float, deg: float) -> NDArray:
    """Per-parameter scale of a rigid misalignment: three translations (mm), three rotations (deg)."""
    return np.array([mm, mm, mm, deg, deg, deg])


def validation_starts(world: AlignmentWorld, pair: AlignmentPair, index: int, per_pair: int) -> list[NDArray]:
    """Start parameters for validating one pair: random misalignments at the training range."""
    if isinstance(world, RigidWorld):
        scale = rigid_scale(*world.misalignment)
        offsets = evaluation_offsets(world, per_pair, scale, seed=1000 + index)
        return [pair.truth + offset for offset in offsets]
    return [np.zeros(world.n_params)]  # the SDM search starts from the mean shape


def validate_alignment(
    policy: Any,
    world: AlignmentWorld,
    experiment: RigidExperiment | SdmExperiment,
    max_cases: int | None = None,
    per_pair: int = 3,
) -> dict[str, float]:
    """Success rate, median / p95 / max TRE (mm) and median seconds of the greedy search on ``world``."""
    q_policy = QNetworkPolicy(policy)
    errors, seconds = [], []
    for index in range(min(world.n_variants, max_cases or world.n_variants)):
        pair = world.pair(index)
        for start in validation_starts(world, pair, index, per_pair):
            result = align(world, pair, q_policy, start, experiment.search)
            errors.append(result.error_mm)
            seconds.append(result.seconds)
    summary = summarise_errors(errors, seconds)
    return {key: summary[key] for key in ("success_rate", "median_mm", "p95_mm", "max_mm", "median_s")}


def alignment_score(metrics: dict[str, float]) -> tuple[float, ...]:
    """Lower is better: more successes first, then the median, then the tail."""
    return (-metrics["success_rate"], metrics["median_mm"], metrics["p95_mm"])
