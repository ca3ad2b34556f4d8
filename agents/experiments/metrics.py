"""Error summaries in millimetres: landmark errors, registration TREs, success rates and Dice.

Landmark scoring counts every landmark: present ones by their error (an undetected one is a
miss), absent ones (not in the scan, or outside its field of view) as correctly reported absent
or as false detections; and it scores how well the search's confidence flags its misses
(:func:`auroc`).

Landmark rows and registration outcomes come in; plain dictionaries of floats come out
(written to metrics.json and summarised in tables by :mod:`agents.experiments.reports`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from envs.core import Volume
from envs.tasks import DeformableWorld, dice_scores, phantom_structures

__all__ = [
    "CONFIDENCE_THRESHOLDS",
    "MISS_MM",
    "SUCCESS_MM",
    "WITHIN_MM",
    "PairOutcome",
    "auroc",
    "compute_metrics",
    "metrics_from_outcomes",
    "metrics_from_rows",
    "row_present",
    "sdm_dice",
    "summarise_errors",
    "summarise_runs",
]

WITHIN_MM = (2.0, 4.0, 8.0)
"""landmark task: the shares of errors within these distances (mm) are reported"""
MISS_MM = 10.0
"""landmark task: an error above this (mm) counts as a miss"""
CONFIDENCE_THRESHOLDS = (0.25, 0.5, 0.75)
"""landmark task: the miss rate among answers at or above these confidences is reported"""
SUCCESS_MM = 2.0
"""registration tasks: a registration succeeds when its mean TRE is below this (mm)"""


# ---------------------------------------------------------------------- landmarks
def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` separating ``positive`` from the other items.

    The probability that a random positive scores above a random negative, ties counting one
    half (the Mann-Whitney U statistic from average ranks). 1.0: every positive above every
    negative; 0.5: no separation (or all tied); 0.0: inverted. NaN when only one class is
    present (or nothing is). Scores must be finite.

    Example:
        >>> auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False])
        1.0
        >>> auroc([0.5, 0.5, 0.2], [True, False, False])
        0.75
    """
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(positive, dtype=bool)
    if values.shape != labels.shape or values.ndim != 1:
        raise ValueError(
            f"auroc: expected two equal-length 1-D sequences, got shapes {values.shape} and {labels.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("auroc: expected finite scores, got NaN or infinity; drop those items first")
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)
    # Tied scores share the mean of their ranks.
    _, inverse = np.unique(values, return_inverse=True)
    ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    u_statistic = ranks[labels].sum() - n_positive * (n_positive + 1) / 2
    return float(u_statistic / (n_positive * n_negative))


def compute_metrics(
    errors_mm: list[float],
    found: list[bool],
    seconds: list[float],
    confidence: list[float] | None = None,
    present: list[bool] | None = None,
) -> dict[str, float]:
    """Summary of one method's landmarks.

    Args:
        errors_mm: error per landmark (mm; NaN when there is no answer or no truth).
        found: whether the search reported the landmark as found.
        seconds: search time per landmark.
        confidence: the search's confidence per landmark (0..1), or None.
        present: whether the landmark is in the scan (default: all are).

    Present landmarks: error statistics over those found; one not found counts as a miss
    (``misses``: not found, or error > ``MISS_MM``); ``n`` and the ``within_*`` shares count
    present landmarks only. Absent landmarks: ``absent_correct`` (reported not found) and
    ``false_detections`` (reported found), out of ``n_absent``. Confidence, over the present
    landmarks the search located (finite error, found or not): ``confidence_auroc`` (AUROC of
    the confidence separating hits, error <= ``MISS_MM``, from misses; NaN with one class only),
    and per threshold of ``CONFIDENCE_THRESHOLDS`` the share kept at or above it
    (``kept_at_conf_T``) and the miss rate among them (``miss_rate_at_conf_T``, NaN if none).

    Example:
        >>> m = compute_metrics([1.0, 2.0, 3.0, 30.0], [True] * 4, [0.01] * 4)
        >>> m["median_mm"], m["misses"], m["within_2mm"]
        (2.5, 1, 0.5)
        >>> m = compute_metrics(
        ...     [1.0, 30.0, np.nan],
        ...     [True, True, False],
        ...     [0.01] * 3,
        ...     confidence=[0.9, 0.2, 0.0],
        ...     present=[True, True, False],
        ... )
        >>> m["n"], m["absent_correct"], m["confidence_auroc"], m["miss_rate_at_conf_0.5"]
        (2, 1, 1.0, 0.0)
    """
    errors = np.asarray(errors_mm, dtype=np.float64)
    reported = np.asarray(found, dtype=bool)
    is_present = np.ones(errors.size, bool) if present is None else np.asarray(present, dtype=bool)
    if not errors.size == reported.size == is_present.size:
        raise ValueError(
            f"compute_metrics: expected one error, found flag and presence per landmark, got "
            f"{errors.size}, {reported.size} and {is_present.size}"
        )
    values = errors[is_present & reported]
    total = int(is_present.sum())
    not_found = total - len(values)
    nan = float("nan")
    metrics: dict[str, float] = {
        "n": total,
        "mean_mm": float(values.mean()) if values.size else nan,
        "std_mm": float(values.std()) if values.size else nan,
        "median_mm": float(np.median(values)) if values.size else nan,
        "p95_mm": float(np.percentile(values, 95)) if values.size else nan,
        "max_mm": float(values.max()) if values.size else nan,
        "not_found": not_found,
        "misses": int(np.sum(values > MISS_MM)) + not_found,
        "ms_per_landmark": 1000.0 * float(np.mean(seconds)) if len(seconds) else nan,
        "n_absent": int(np.sum(~is_present)),
        "absent_correct": int(np.sum(~is_present & ~reported)),
        "false_detections": int(np.sum(~is_present & reported)),
    }
    for limit in WITHIN_MM:
        metrics[f"within_{limit:g}mm"] = float(np.sum(values <= limit)) / max(total, 1)
    metrics.update(_confidence_metrics(errors, is_present, confidence))
    return metrics


def _confidence_metrics(
    errors: NDArray[np.float64], present: NDArray[np.bool_], confidence: list[float] | None
) -> dict[str, float]:
    """``confidence_auroc``, ``kept_at_conf_T`` and ``miss_rate_at_conf_T`` (see compute_metrics)."""
    nan = float("nan")
    located = present & np.isfinite(errors)
    scores = np.asarray(confidence, dtype=np.float64)[located] if confidence is not None else np.zeros(0)
    hits = errors[located] <= MISS_MM
    if confidence is None or not np.all(np.isfinite(scores)):
        scores, hits = np.zeros(0), np.zeros(0, bool)
    metrics = {"confidence_auroc": auroc(scores, hits) if scores.size else nan}
    for threshold in CONFIDENCE_THRESHOLDS:
        kept = scores >= threshold
        metrics[f"kept_at_conf_{threshold:g}"] = float(kept.mean()) if scores.size else nan
        metrics[f"miss_rate_at_conf_{threshold:g}"] = float(np.mean(~hits[kept])) if kept.any() else nan
    return metrics


def row_present(row: dict[str, Any]) -> bool:
    """Whether an errors.csv row's landmark is in the scan: its ``present`` field, else a finite
    true x coordinate (``true_x_lps``), else True."""
    if "present" in row:
        return bool(row["present"])
    truth = row.get("true_x_lps")
    return truth is None or bool(np.isfinite(float(truth)))


def metrics_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``method -> landmark (and "all") -> compute_metrics`` of landmark rows (errors.csv rows:
    ``method``, ``landmark``, ``error_mm``, ``found``, ``seconds``; ``confidence`` and
    ``present`` / ``true_x_lps`` when there, see :func:`row_present`)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["method"], row["landmark"])].append(row)
        grouped[(row["method"], "all")].append(row)
    metrics: dict[str, Any] = defaultdict(dict)
    for (method, landmark), items in grouped.items():
        has_confidence = all("confidence" in r for r in items)
        metrics[method][landmark] = compute_metrics(
            [r["error_mm"] for r in items],
            [r["found"] for r in items],
            [r["seconds"] for r in items],
            confidence=[r["confidence"] for r in items] if has_confidence else None,
            present=[row_present(r) for r in items],
        )
    return dict(metrics)


def summarise_runs(per_run: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std over runs (training seeds) of the overall figures, per method."""
    summary: dict[str, Any] = {}
    methods = {m for metrics in per_run.values() for m in metrics}
    for method in sorted(methods):
        figures = defaultdict(list)
        for metrics in per_run.values():
            if method in metrics:
                for key, value in metrics[method]["all"].items():
                    figures[key].append(value)
        summary[method] = {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": len(v)}
            for key, v in figures.items()
        }
    return summary


# ---------------------------------------------------------------------- registration
def summarise_errors(errors: Sequence[float], seconds: Sequence[float] = ()) -> dict[str, float]:
    """Mean / median / p95 / max of errors (mm), success rate (< SUCCESS_MM) and median seconds.

    Example:
        >>> summary = summarise_errors([0.5, 1.0, 3.0, 40.0], [0.1, 0.2, 0.1, 0.3])
        >>> summary["success_rate"], summary["median_mm"], summary["median_s"]
        (0.5, 2.0, 0.15000000000000002)
    """
    values = np.asarray(errors, dtype=np.float64)
    values = values[~np.isnan(values)]  # cases without a truth (scored by Dice only) have none
    nan = float("nan")
    return {
        "n": len(values),
        "mean_mm": float(values.mean()) if values.size else nan,
        "median_mm": float(np.median(values)) if values.size else nan,
        "p95_mm": float(np.percentile(values, 95)) if values.size else nan,
        "max_mm": float(values.max()) if values.size else nan,
        "success_rate": float(np.mean(values < SUCCESS_MM)) if values.size else nan,
        "median_s": float(np.median(seconds)) if len(seconds) else nan,
    }


@dataclass(frozen=True)
class PairOutcome:
    """One registration of one method: mean TRE before and after (mm), time, steps, Dice."""

    method: str
    case_id: str
    condition: str
    misalignment: float
    before_mm: float
    after_mm: float
    seconds: float
    steps: int = 0
    dice: dict[str, float] | None = None

    def row(self) -> dict[str, Any]:
        """The registrations.csv row."""
        row: dict[str, Any] = {
            "method": self.method,
            "case_id": self.case_id,
            "condition": self.condition,
            "misalignment": self.misalignment,
            "before_mm": round(self.before_mm, 4),
            "after_mm": round(self.after_mm, 4),
            "seconds": round(self.seconds, 4),
            "steps": self.steps,
        }
        for name, value in (self.dice or {}).items():
            row[f"dice_{name}"] = round(value, 4)
        return row


def metrics_from_outcomes(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """``method -> condition -> misalignment -> summary`` (before / after TRE, success, time, Dice)."""
    groups: dict[tuple[str, str, float], list[PairOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.method, outcome.condition, outcome.misalignment), []).append(outcome)
    metrics: dict[str, Any] = {}
    for (method, condition, misalignment), group in groups.items():
        after = summarise_errors([o.after_mm for o in group], [o.seconds for o in group])
        before = summarise_errors([o.before_mm for o in group])
        entry: dict[str, Any] = {
            **after,
            "before_mean_mm": before["mean_mm"],
            "before_median_mm": before["median_mm"],
            "before_p95_mm": before["p95_mm"],
            "mean_steps": float(np.mean([o.steps for o in group])),
        }
        dice = [o.dice for o in group if o.dice]
        if dice:
            for name in dice[0]:
                entry[f"dice_{name}"] = float(np.nanmean([d[name] for d in dice]))
            entry["dice_mean"] = float(np.nanmean([np.nanmean(list(d.values())) for d in dice]))
        metrics.setdefault(method, {}).setdefault(condition, {})[f"{misalignment:g}"] = entry
    return metrics


def sdm_dice(
    world: DeformableWorld,
    fixed_labels: Volume,
    coefficients: NDArray | None,
    field: NDArray | None = None,
    structures: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, float]:
    """Dice per structure of the atlas labels carried onto the fixed grid (every 2nd voxel per axis).

    The atlas labels are warped by the SDM's displacement for ``coefficients``, or by ``field``
    (an LPS displacement in mm on the fixed grid, e.g. a B-spline baseline's) when given.
    ``structures``: name -> label values (default: the phantom's organs).
    """
    if world.atlas_labels is None:
        return {}
    stride = 2
    sub = fixed_labels.voxels[::stride, ::stride, ::stride]
    z, y, x = (np.arange(0, n, stride, dtype=np.float64) for n in fixed_labels.shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    points = fixed_labels.index_to_lps(np.stack([xx, yy, zz], axis=-1))
    if field is not None:
        displacement = field[::stride, ::stride, ::stride].astype(np.float64)
    else:
        displacement = world.sdm.displacement(np.asarray(coefficients), points)
    from scipy import ndimage

    index = world.atlas_labels.lps_to_index(points + displacement)[..., ::-1]
    warped = ndimage.map_coordinates(
        world.atlas_labels.voxels, np.moveaxis(index, -1, 0), order=0, mode="constant", cval=0
    )
    return dice_scores(sub, warped, structures if structures is not None else phantom_structures())
