"""Scoring landmark runs on a split: agent, oracle and the atlas baseline, case by case, in mm.

Rows (one per method, case and landmark) feed ``errors.csv`` and the metrics; a landmark the
split annotates but a case lacks (outside its field of view) is scored as absent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from agents.experiments.data import evaluation_dataset, make_world
from agents.experiments.ensemble import load_policies
from agents.experiments.metrics import metrics_from_rows
from agents.experiments.reports import plot_trajectories
from agents.experiments.runs import Run
from agents.search import (
    Detection,
    LandmarkShape,
    OraclePolicy,
    QNetworkPolicy,
    detect_with_shape,
    fit_shape,
    scored_detections,
)
from envs.data import Dataset

__all__ = ["evaluate_run", "run_shape", "training_shape"]

ACTIONS = gym.spaces.Discrete(6)  # one step along +-x, +-y, +-z


def _check_landmarks(run: Run, dataset: Dataset, split: str, names: list[str]) -> None:
    available = set(dataset.landmark_names([split]))
    missing = [name for name in names if name not in available]
    if len(missing) == len(names):
        raise ValueError(
            f"run {run.path}: the model was trained on landmarks {names}, but split {split!r} of "
            f"{dataset.source} has {sorted(available)}; evaluate with data annotated for this model"
        )
    if missing:
        print(
            f"evaluate.py: note: {missing} not annotated in {split!r}; they are searched but not scored",
            file=sys.stderr,
        )


def training_shape(dataset: Dataset, names: list[str]) -> LandmarkShape:
    """The landmark configuration of ``dataset``'s training cases (ValueError: under 3 landmarks)."""
    return fit_shape([dataset.load(case).landmarks for case in dataset.split("train")], names)


def run_shape(run: Run) -> LandmarkShape | None:
    """The run's training landmark configuration for ``search.shape_check``: its ``shape.json``
    (train.py writes it), else fitted to the training split of the run's own data (runs made
    before the check); None when neither exists (the check is then skipped, with a note)."""
    path = run.path / "shape.json"
    if path.is_file():
        return LandmarkShape.load(path)
    try:
        return training_shape(evaluation_dataset(run.experiment, None), run.landmark_names())
    except (ValueError, OSError):
        print(
            f"evaluate.py: note: {run.path} has no shape.json and its data no annotated training "
            "cases; search.shape_check is skipped",
            file=sys.stderr,
        )
        return None


def evaluate_run(
    run: Run, dataset: Dataset, split: str, baseline: str | None, out: Path, gif: bool, atlases: int = 3
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Errors of agent, oracle (and the atlas baseline) on every case of ``split``; returns metrics and rows.

    Also draws the agent's first case's search paths to ``out/trajectories.png`` (and ``.gif``).
    """
    experiment = run.experiment
    names = run.landmark_names()
    _check_landmarks(run, dataset, split, names)
    # A landmark annotated in no case of the split is unknown there, not absent: it is not scored.
    annotated = set(dataset.landmark_names([split]))
    world = make_world(experiment, dataset, split, augment=False, landmarks=names)
    policy = QNetworkPolicy(load_policies(run, (world.observation_space(), ACTIONS)))
    methods: dict[str, Any] = {"agent": policy, "oracle": OraclePolicy()}
    shape = run_shape(run) if experiment.search.shape_check else None  # the run's own training data
    rows: list[dict[str, Any]] = []
    first_detections: dict[str, Detection] | None = None
    for index in tqdm(range(world.n_variants), desc=f"evaluate {run.path.name}", unit="case"):
        variant = world.variant(index)
        for method, policy_fn in methods.items():
            checked = shape if method == "agent" else None  # the oracle needs no shape check
            detections = detect_with_shape(world, variant, policy_fn, experiment.search, checked, seed=index)
            if method == "agent" and first_detections is None:
                first_detections = detections
                plot_trajectories(world, variant, detections, out / "trajectories.png", gif)
            rows.extend(_rows(run, variant, names, method, detections, annotated))
        if baseline == "atlas":
            rows.extend(_atlas_rows(run, dataset, variant, names, atlases, annotated))
    return metrics_from_rows(rows), rows


def _rows(
    run: Run,
    variant: Any,
    names: list[str],
    method: str,
    detections: dict[str, Detection],
    annotated: set[str],
) -> list[dict[str, Any]]:
    """errors.csv rows of one method on one case; a landmark of ``annotated`` that this case lacks
    (not annotated here, or outside its field of view) is scored as absent."""
    rows = []
    for name, truth, detection, error, found in scored_detections(
        names, variant.landmarks_lps_mm, detections, include_absent=True
    ):
        if name not in annotated:
            continue
        position = detection.position_lps_mm
        rows.append(
            {
                "run": run.path.name,
                "case": variant.case_id,
                "landmark": name,
                "method": method,
                "error_mm": error,
                "found": found,
                "present": bool(not np.isnan(truth[0])),
                "confidence": detection.confidence,
                "seconds": detection.seconds,
                "x_lps": position[0],
                "y_lps": position[1],
                "z_lps": position[2],
                "true_x_lps": truth[0],
                "true_y_lps": truth[1],
                "true_z_lps": truth[2],
            }
        )
    return rows


def _atlas_rows(
    run: Run, dataset: Dataset, variant: Any, names: list[str], count: int, annotated: set[str]
) -> list[dict[str, Any]]:
    """The atlas baseline's rows: ``count`` training volumes registered to the case, landmarks carried."""
    from agents.baselines import multi_atlas_transfer

    atlases = []
    for case in dataset.split("train")[:count]:
        subject = dataset.load(case)
        atlases.append((subject.volume, {n: p for n, p in subject.landmarks.items() if n in names}))
    target = dataset.load(variant.case_id).volume
    result = multi_atlas_transfer(atlases, target)
    detections = {}
    lower, upper = target.extent_lps_mm
    for name in names:
        point = np.asarray(result.landmarks.get(name, np.full(3, np.nan)), dtype=float)
        # a landmark carried outside the target's scanned box is reported absent
        inside = bool(np.all(point >= lower) and np.all(point <= upper))
        detections[name] = Detection(
            name,
            point,
            inside,
            1.0,
            0,
            result.seconds / max(len(names), 1),
            np.zeros((0, 3)),
            [],
        )
    return _rows(run, variant, names, "atlas", detections, annotated)
