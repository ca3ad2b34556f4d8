"""Registration evaluation: every method from the same misaligned start of the same pair.

Rigid: agent (and agent+sitk), the oracle and the SimpleITK / elastix baselines on ``trials``
pairs per condition (mono, multimodal, partial field of view) and misalignment (+-mm and +-deg
per parameter). SDM: agent, oracle, the mean shape and the B-spline baseline from the mean
shape on every case, with Dice of the carried atlas labels. TREs are mean control-point
distances in mm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agents.experiments.config import RigidExperiment, SdmExperiment
from agents.experiments.data import SdmBundle, make_alignment_world
from agents.experiments.metrics import PairOutcome, metrics_from_outcomes, sdm_dice
from agents.experiments.validation import evaluation_offsets, rigid_scale
from agents.search import (
    Alignment,
    AlignmentOracle,
    QNetworkPolicy,
    align,
    guard_alignment,
    refine_alignment,
)
from envs.core import Volume, euler_transform, field_at_points
from envs.data import Dataset
from envs.tasks import UNIT, AlignmentPair, AlignmentWorld, DeformableWorld, RigidWorld

__all__ = [
    "CONDITIONS",
    "RIGID_BASELINES",
    "agent_outcome",
    "evaluate_rigid",
    "evaluate_sdm",
    "guarded_outcome",
    "outcome_of",
    "rigid_baseline_outcome",
    "rigid_pairs",
]

CONDITIONS = ("mono", "multimodal", "partial")
"""rigid conditions: moved copy as is, re-contrasted, or cropped to a slab"""
RIGID_BASELINES = ("sitk", "sitk-presearch", "sitk-moments", "elastix")
"""rigid baselines evaluate.py offers (sitk-moments: SimpleITK from its moments initialisation,
ignoring the start, as a user runs it on two scans)"""


def rigid_pairs(
    world: RigidWorld, trials: int, misalignment: float, seed: int
) -> list[tuple[AlignmentPair, NDArray]]:
    """``trials`` (pair, start parameters) over the world's held-out pairs, cycling through cases.

    Uses the last variant of each case (with the configured contrast, noise and field of view).
    """
    variants = world.variants_per_case
    indices = [i for i in range(world.n_variants) if int(world.variant_table[i][1]) == variants - 1]
    offsets = evaluation_offsets(world, trials, rigid_scale(misalignment, misalignment), seed)
    pairs = []
    for trial, offset in enumerate(offsets):
        pair = world.pair(indices[trial % len(indices)])
        pairs.append((pair, pair.truth + offset))
    return pairs


def rigid_baseline_outcome(
    method: str,
    world: RigidWorld,
    pair: AlignmentPair,
    start: NDArray,
    condition: str,
    misalignment: float,
) -> PairOutcome:
    """SimpleITK (or elastix) on the same pair, from the same start, at the finest level's images.

    ``sitk-moments`` ignores the start: SimpleITK's moments initialisation (centres of mass).
    """
    from agents import baselines

    finest = world.n_levels - 1
    fixed, moving = pair.fixed.levels[finest], pair.moving.levels[finest]
    initial = euler_transform(start, pair.center_lps_mm)
    before = float(world.errors_mm(pair, np.rint(start * UNIT))[0])
    if method == "elastix":
        import itk  # noqa: F401  (its first import takes ~10 s: not part of a registration's time)
    began = time.perf_counter()
    if method == "elastix":
        # Pyramid levels are uint8 already: no HU window (as for the SimpleITK baselines).
        result = baselines.elastix_rigid_baseline(fixed, moving, initial=initial, intensity_window=None)
    elif method == "sitk-moments":
        config = baselines.RigidBaselineConfig(initializer="moments", intensity_window=None)
        result = baselines.rigid_baseline(fixed, moving, config=config)
    else:
        presearch = 0.0 if method == "sitk" else 60.0
        config = baselines.RigidBaselineConfig(
            initializer="none", intensity_window=None, rotation_presearch_deg=presearch
        )
        result = baselines.rigid_baseline(fixed, moving, initial=initial, config=config)
    seconds = time.perf_counter() - began
    mapped = np.array(
        [result.transform.TransformPoint([float(v) for v in p]) for p in pair.control_fixed_lps_mm]
    )
    after = float(np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm, axis=1)))
    return PairOutcome(method, pair.case_id, condition, misalignment, before, after, seconds)


def agent_outcome(
    method: str,
    world: AlignmentWorld,
    pair: AlignmentPair,
    start: NDArray,
    policy: Callable[..., NDArray],
    experiment: RigidExperiment | SdmExperiment,
    condition: str,
    misalignment: float,
) -> tuple[PairOutcome, Alignment]:
    """``policy``'s greedy search from ``start``: its outcome and the search result."""
    result = align(world, pair, policy, start, experiment.search)
    return outcome_of(method, pair, result, condition, misalignment), result


def outcome_of(
    method: str, pair: AlignmentPair, result: Alignment, condition: str, misalignment: float
) -> PairOutcome:
    """The outcome of a finished search (or refinement)."""
    return PairOutcome(
        method,
        pair.case_id,
        condition,
        misalignment,
        result.initial_error_mm,
        result.error_mm,
        result.seconds,
        result.steps,
    )


def guarded_outcome(
    method: str,
    world: RigidWorld,
    pair: AlignmentPair,
    start: NDArray,
    result: Alignment,
    experiment: RigidExperiment,
    condition: str,
    misalignment: float,
) -> tuple[PairOutcome, Alignment]:
    """``result`` through the plausibility guard (bounds widened to ``misalignment``); its outcome.

    A refused answer (``search.fallback: none``) counts as no registration: the error stays
    the start's.
    """
    guarded = guard_alignment(
        world, pair, start, result, experiment.search, misalignment=(misalignment, misalignment)
    )
    outcome = outcome_of(method, pair, guarded, condition, misalignment)
    if guarded.fallback == "refused":
        outcome = PairOutcome(**{**outcome.__dict__, "after_mm": outcome.before_mm})
    return outcome, guarded


def _with_fallback_rates(
    metrics: dict[str, Any], outcomes: Sequence[PairOutcome], fallbacks: Sequence[str]
) -> dict[str, Any]:
    """``fallback_rate`` (and ``refused_rate``) added to every guarded method's summaries."""
    groups: dict[tuple[str, str, float], list[str]] = {}
    for outcome, fallback in zip(outcomes, fallbacks, strict=True):
        if outcome.method.endswith("+guard"):
            groups.setdefault((outcome.method, outcome.condition, outcome.misalignment), []).append(fallback)
    for (method, condition, misalignment), flags in groups.items():
        entry = metrics[method][condition][f"{misalignment:g}"]
        entry["fallback_rate"] = float(np.mean([f == "sitk" for f in flags]))
        entry["refused_rate"] = float(np.mean([f == "refused" for f in flags]))
    return metrics


def _condition_world(experiment: RigidExperiment, dataset: Dataset, split: str, condition: str) -> RigidWorld:
    contrast = "multimodal" if condition == "multimodal" else "same"
    partial = 1.0 if condition == "partial" else 0.0
    world = make_alignment_world(
        experiment,
        dataset,
        split,
        training=False,
        contrast=contrast,
        partial_fov=partial,
        variants_per_case=2,
    )
    assert isinstance(world, RigidWorld)
    return world


def evaluate_rigid(
    experiment: RigidExperiment,
    policy: Any,
    dataset: Dataset,
    split: str,
    *,
    misalignments: Sequence[float] = (15.0, 30.0, 45.0, 60.0),
    trials: int = 20,
    conditions: Sequence[str] = CONDITIONS,
    baselines: Sequence[str] = (),
    oracle: bool = True,
    progress: bool = True,
    on_result: Callable[[str, AlignmentWorld, AlignmentPair, Alignment], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Agent (and oracle, baselines) on ``trials`` pairs per condition and misalignment (mm = deg).

    Every method starts from the same misaligned transform of the same pair. Conditions:
    ``mono`` (a moved, re-noised copy), ``multimodal`` (moved copy re-contrasted by a
    non-monotonic map), ``partial`` (moved copy cropped to a 40-70 % slab). With
    ``search.guard`` the final answer (the agent's, or agent+sitk's with ``search.refine:
    sitk``) is also reported through the plausibility guard as method ``<final>+guard``; rows
    carry ``fallback`` (``sitk``, ``refused`` or empty) and ``fallback_reason``, and those
    methods' summaries ``fallback_rate`` and ``refused_rate``.
    """
    from tqdm import tqdm

    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"conditions: unknown {unknown}; expected some of {list(CONDITIONS)}")
    unknown = [b for b in baselines if b not in RIGID_BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; expected some of {list(RIGID_BASELINES)}")
    q_policy = QNetworkPolicy(policy)
    outcomes: list[PairOutcome] = []
    reasons: dict[int, tuple[str, str]] = {}  # outcome index -> (fallback, reason)
    jobs = [(c, float(m)) for c in conditions for m in misalignments]
    bar = tqdm(total=len(jobs) * trials, desc="registrations", unit="pair", disable=not progress)
    for condition, misalignment in jobs:
        world = _condition_world(experiment, dataset, split, condition)
        seed = 7919 * int(misalignment) + CONDITIONS.index(condition)
        for pair, start in rigid_pairs(world, trials, misalignment, seed):
            outcome, result = agent_outcome(
                "agent", world, pair, start, q_policy, experiment, condition, misalignment
            )
            outcomes.append(outcome)
            if experiment.search.refine == "sitk":
                refined = refine_alignment(world, pair, result, experiment.search)
                outcomes.append(outcome_of("agent+sitk", pair, refined, condition, misalignment))
                result = refined
            if experiment.search.guard:
                final = "agent+sitk" if experiment.search.refine == "sitk" else "agent"
                guarded, checked = guarded_outcome(
                    f"{final}+guard", world, pair, start, result, experiment, condition, misalignment
                )
                reasons[len(outcomes)] = (checked.fallback, checked.fallback_reason)
                outcomes.append(guarded)
            if on_result is not None:
                on_result(condition, world, pair, result)
            if oracle:
                outcomes.append(
                    agent_outcome(
                        "oracle",
                        world,
                        pair,
                        start,
                        AlignmentOracle(world),
                        experiment,
                        condition,
                        misalignment,
                    )[0]
                )
            for method in baselines:
                outcomes.append(rigid_baseline_outcome(method, world, pair, start, condition, misalignment))
            bar.update(1)
    bar.close()
    flags = [reasons.get(index, ("", "")) for index in range(len(outcomes))]
    rows = [
        {**outcome.row(), "fallback": fallback, "fallback_reason": reason}
        for outcome, (fallback, reason) in zip(outcomes, flags, strict=True)
    ]
    metrics = _with_fallback_rates(metrics_from_outcomes(outcomes), outcomes, [f for f, _ in flags])
    return metrics, rows


def evaluate_sdm(
    experiment: SdmExperiment,
    policy: Any,
    dataset: Dataset,
    split: str,
    bundle: SdmBundle,
    *,
    baselines: Sequence[str] = (),
    oracle: bool = True,
    progress: bool = True,
    on_result: Callable[[str, AlignmentWorld, AlignmentPair, Alignment], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Agent (oracle, B-spline baseline) from the mean shape on every case: error, Dice, time."""
    from tqdm import tqdm

    unknown = [b for b in baselines if b != "sitk"]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown} for the sdm task; expected 'sitk' (B-spline)")
    world = make_alignment_world(experiment, dataset, split, training=False, bundle=bundle)
    assert isinstance(world, DeformableWorld)
    q_policy = QNetworkPolicy(policy)
    outcomes: list[PairOutcome] = []
    zeros = np.zeros(world.n_params)
    structures = bundle.structures
    for index in tqdm(range(world.n_variants), desc="registrations", unit="case", disable=not progress):
        pair = world.pair(index)
        case = world.cases[int(world.variant_table[index][0])]
        subject = dataset.load(case)
        labels = subject.labels
        methods: list[tuple[str, Callable[..., NDArray]]] = [("agent", q_policy)]
        if oracle and np.isfinite(pair.control_moving_lps_mm).all():  # label-only cases have no truth
            methods.append(("oracle", AlignmentOracle(world)))
        for method, fn in methods:
            outcome, result = agent_outcome(method, world, pair, zeros, fn, experiment, "sdm", 0.0)
            if labels is not None:
                outcome = PairOutcome(
                    **{
                        **outcome.__dict__,
                        "dice": sdm_dice(world, labels, result.params, structures=structures),
                    }
                )
            outcomes.append(outcome)
            if method == "agent":
                if labels is not None:
                    outcomes.append(
                        PairOutcome(
                            "mean shape",
                            pair.case_id,
                            "sdm",
                            0.0,
                            result.initial_error_mm,
                            result.initial_error_mm,
                            0.0,
                            0,
                            sdm_dice(world, labels, zeros, structures=structures),
                        )
                    )
                if on_result is not None:
                    on_result("sdm", world, pair, result)
        if "sitk" in baselines:
            outcomes.append(_bspline_outcome(world, pair, subject.volume, labels, structures))
    rows = [outcome.row() for outcome in outcomes]
    return metrics_from_outcomes(outcomes), rows


def _bspline_outcome(
    world: DeformableWorld,
    pair: AlignmentPair,
    fixed: Volume,
    labels: Volume | None,
    structures: dict[str, tuple[int, ...]] | None,
) -> PairOutcome:
    from agents.baselines import bspline_baseline

    began = time.perf_counter()
    result = bspline_baseline(fixed, world.atlas)
    seconds = time.perf_counter() - began
    field = result.displacement_lps_mm
    assert field is not None
    mapped = pair.control_fixed_lps_mm + field_at_points(field, fixed, pair.control_fixed_lps_mm)
    after = float(np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm, axis=1)))
    before = float(world.errors_mm(pair, np.zeros(world.n_params, np.int64))[0])
    dice = sdm_dice(world, labels, None, field, structures) if labels is not None else None
    return PairOutcome("sitk-bspline", pair.case_id, "sdm", 0.0, before, after, seconds, 0, dice)
