"""Error summaries in millimetres: landmark errors, registration TREs, success rates and Dice.

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
    "MISS_MM",
    "SUCCESS_MM",
    "WITHIN_MM",
    "PairOutcome",
    "compute_metrics",
    "metrics_from_outcomes",
    "metrics_from_rows",
    "sdm_dice",
    "summarise_errors",
    "summarise_runs",
]

WITHIN_MM = (2.0, 4.0, 8.0)
"""landmark task: the shares of errors within these distances (mm) are reported"""
MISS_MM = 10.0
"""landmark task: an error above this (mm) counts as a miss"""
SUCCESS_MM = 2.0
"""registration tasks: a registration succeeds when its mean TRE is below this (mm)"""


# ---------------------------------------------------------------------- landmarks
def compute_metrics(errors_mm: list[float], found: list[bool], seconds: list[float]) -> dict[str, float]:
    """Summary of one method's errors: an undetected landmark counts as a miss, not as an error.

    Example:
        >>> m = compute_metrics([1.0, 2.0, 3.0, 30.0], [True] * 4, [0.01] * 4)
        >>> m["median_mm"], m["misses"], m["within_2mm"]
        (2.5, 1, 0.5)
    """
    values = np.array([e for e, f in zip(errors_mm, found, strict=True) if f], dtype=np.float64)
    total = len(errors_mm)
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
        "ms_per_landmark": 1000.0 * float(np.mean(seconds)) if seconds else nan,
    }
    for limit in WITHIN_MM:
        metrics[f"within_{limit:g}mm"] = float(np.sum(values <= limit)) / max(total, 1)
    return metrics


def metrics_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``method -> landmark (and "all") -> compute_metrics`` of landmark rows (errors.csv rows)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["method"], row["landmark"])].append(row)
        grouped[(row["method"], "all")].append(row)
    metrics: dict[str, Any] = defaultdict(dict)
    for (method, landmark), items in grouped.items():
        metrics[method][landmark] = compute_metrics(
            [r["error_mm"] for r in items], [r["found"] for r in items], [r["seconds"] for r in items]
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
    world: DeformableWorld, fixed_labels: Volume, coefficients: NDArray | None, field: NDArray | None = None
) -> dict[str, float]:
    """Dice per structure of the atlas labels carried onto the fixed grid (every 2nd voxel per axis).

    The atlas labels are warped by the SDM's displacement for ``coefficients``, or by ``field``
    (an LPS displacement in mm on the fixed grid, e.g. a B-spline baseline's) when given.
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
    return dice_scores(sub, warped, phantom_structures())
