"""What augmentation buys: landmark agents evaluated on test phantoms whose contrast was changed.

    python bench/bench_augmentation.py RUN [RUN ...] [--cases 8] [--out bench/results/augmentation.json]

Each ``RUN`` is a folder made by ``train.py configs/landmark_phantom.yaml`` (with or without
``--set augment.appearances=64`` etc.). Its best checkpoint searches every landmark of the
held-out test phantoms (no augmentation at test time) under each contrast condition below:
a fixed uint8 -> uint8 map applied to every level of the test scan, as a different scanner,
window or sequence would change it (0, outside the field of view, stays 0). The maps are fixed
here, not drawn from the training bank; ``t1_like`` is the unjittered base of the training
bank's non-monotonic maps (so it is close to what ``contrast`` trains on), ``t2_like`` is a
non-monotonic map of another family that no training map was drawn from.

Writes the per-run, per-condition figures (median / p90 error in mm with lost landmarks
counted as infinite, written as ``null``), success rate < 2 mm, rate within 10 mm, found rate)
and each run's training summary to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import load_policy  # noqa: E402  (the repository root is put on the path first)
from agents.experiments import SUCCESS_MM, evaluation_dataset, json_text, make_world, open_run  # noqa: E402
from agents.networks import set_torch_threads  # noqa: E402
from agents.search import QNetworkPolicy, detect_landmarks, scored_detections  # noqa: E402
from envs.core import Pyramid  # noqa: E402
from envs.data import multimodal_lut  # noqa: E402
from envs.io.atomic import atomic_write_text  # noqa: E402
from envs.tasks import ACTIONS_ZYX, Variant  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _lut(curve: NDArray[np.float64]) -> NDArray[np.uint8]:
    """A uint8 map from float values on 0..255: tissue (1..255) never becomes 0, 0 stays 0."""
    lut = np.clip(np.rint(curve), 1, 255).astype(np.uint8)
    lut[0] = 0
    return lut


def contrast_conditions() -> dict[str, NDArray[np.uint8]]:
    """The test-time contrast changes, by name: each a ``(256,)`` uint8 map of the ``ct`` levels."""
    levels = np.arange(256, dtype=np.float64)
    # T2-like ordering on the ct preset's scale: fluid bright, fat mid-bright, muscle dark, bone dark.
    t2_in = np.array([0, 10, 40, 100, 115, 128, 136, 150, 165, 200, 255], dtype=np.float64)
    t2_out = np.array([0, 6, 12, 150, 165, 235, 80, 200, 45, 25, 10], dtype=np.float64)
    return {
        "original": np.arange(256, dtype=np.uint8),
        "gamma_0.6": _lut(255.0 * (levels / 255.0) ** 0.6),
        "gamma_1.7": _lut(255.0 * (levels / 255.0) ** 1.7),
        "narrow_window": _lut((levels - 128.0) * 2.5 + 128.0),  # a soft-tissue window
        "inverted": _lut(256.0 - levels),
        "t1_like": multimodal_lut(),
        "t2_like": _lut(np.interp(levels, t2_in, t2_out)),
    }


def remapped(variant: Variant, lut: NDArray[np.uint8]) -> Variant:
    """``variant`` with every level's voxels mapped by ``lut`` (same geometry and targets)."""
    levels = tuple(level.with_voxels(lut[level.voxels]) for level in variant.pyramid.levels)
    return Variant(
        variant.case_id,
        Pyramid(levels, variant.pyramid.spacings_mm),
        variant.landmarks_lps_mm,
        variant.targets_zyx,
        variant.start_candidates,
        variant.body_centre_zyx,
    )


def summary(errors: list[float]) -> dict[str, float]:
    """Median / p90 (lost = infinite), success < SUCCESS_MM, within 10 mm, found rate, mean of found."""
    values = np.asarray(errors, dtype=np.float64)
    found = ~np.isnan(values)
    ranked = np.where(found, values, np.inf)
    return {
        "n": int(values.size),
        "median_mm": float(np.median(ranked)),
        "p90_mm": float(np.percentile(ranked, 90, method="higher")),  # no inf - inf interpolation
        "success_rate": float(np.mean(ranked < SUCCESS_MM)),
        "within_10mm": float(np.mean(ranked < 10.0)),
        "found_rate": float(found.mean()),
        "mean_found_mm": float(values[found].mean()) if found.any() else float("nan"),
    }


def evaluate(run_path: Path, cases: int) -> dict[str, object]:
    """The run's agent on the first ``cases`` test phantoms under every contrast condition."""
    run = open_run(run_path)
    experiment = run.experiment
    names = run.landmark_names()
    dataset = evaluation_dataset(experiment, None)
    world = make_world(experiment, dataset, "test", augment=False, landmarks=names)
    action_space = spaces.Discrete(len(ACTIONS_ZYX))
    policy = QNetworkPolicy(load_policy(run.policy_path(), (world.observation_space(), action_space)))
    conditions = contrast_conditions()
    errors: dict[str, list[float]] = {name: [] for name in conditions}
    began = time.perf_counter()
    for index in range(min(cases, world.n_variants)):
        variant = world.variant(index)
        for condition, lut in conditions.items():
            detections = detect_landmarks(
                world, remapped(variant, lut), policy, config=experiment.search, seed=index
            )
            for *_, error, _found in scored_detections(names, variant.landmarks_lps_mm, detections):
                errors[condition].append(error)
    state = run.read_state()
    summary_path = run.path / "summary.json"
    trained = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "run": str(run_path),
        "augment": {key: value for key, value in vars(experiment.augment).items()},
        "training": trained or state,
        "evaluation_s": round(time.perf_counter() - began, 1),
        "conditions": {condition: summary(values) for condition, values in errors.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders made by train.py (landmark task)")
    parser.add_argument("--cases", type=int, default=8, help="test phantoms to evaluate (default 8)")
    parser.add_argument("--out", type=Path, default=RESULTS / "augmentation.json")
    args = parser.parse_args(argv)
    set_torch_threads(1)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": 1},
        "success_mm": SUCCESS_MM,
        "runs": [evaluate(path, args.cases) for path in args.runs],
    }
    for result in results["runs"]:
        print(result["run"])
        for condition, figures in result["conditions"].items():
            print(
                f"  {condition:14s} median {figures['median_mm']:7.2f} mm  p90 {figures['p90_mm']:7.2f} mm  "
                f"< {SUCCESS_MM:g} mm {figures['success_rate']:5.1%}  < 10 mm {figures['within_10mm']:5.1%}  "
                f"found {figures['found_rate']:5.1%}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json_text(results))  # strict JSON: a lost landmark's inf is null
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
