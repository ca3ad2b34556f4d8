"""Samples to accuracy of the landmark learners at equal wall time: greedy (supervised) vs (Double) DQN.

    python bench/bench_landmark_learners.py [--minutes 6] [--learners greedy double] [--parallel]
        [--config configs/landmark_phantom.yaml] [--set KEY=VALUE ...] [--patience N]
        [--root runs/bench-learners-DATE] [--out bench/results/landmark_learners.json]

Each learner trains the same config (same phantoms, network, validation) for ``--minutes`` of
wall time (``train.max_minutes``; ``train.total_timesteps`` is raised so that the clock, not
the step count, ends the run, and early stopping is relaxed to ``--patience`` validations so
that both runs use the whole time), each as its own ``train.py`` process, one after the
other or, with ``--parallel``, all at once (on a shared machine they then see the same load);
then ``evaluate.py RUN`` scores it on the test phantoms. A learner is
``agent.algorithm``: ``greedy`` (Liao et al.'s regression on all 6 action rewards; steps are
rendered samples), ``double`` or ``dqn`` (SB3; steps are env steps). The dueling head and
every other setting come from the config.

Prints, per learner: steps, minutes, steps/s, the validation curve (median / p95 mm per
validation), the steps at which validation first reached a median of 3 mm and 2 mm, and the
test figures (agent median / p95 / max, misses > 10 mm, oracle median / p95). Saves them
as JSON. On a shared machine the steps/s vary with the load: compare them within one
invocation, and read the curves as samples to accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.io.atomic import atomic_write_text  # noqa: E402  (the repository root is put on the path first)

LEARNERS = ("greedy", "double", "dqn")
THRESHOLDS_MM = (3.0, 2.0)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def start_process(script: str, argv: list[str], log: Path) -> subprocess.Popen:
    """Start ``python SCRIPT ARGV...`` as its own process, output to ``log``."""
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, str(ROOT / script), *argv],
            cwd=ROOT,
            env=ENV,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def finish(process: subprocess.Popen, what: str, log: Path) -> None:
    """Wait for ``process``; a failure ends the bench with the log to read."""
    code = process.wait()
    if code != 0:
        raise SystemExit(f"bench: {what} failed (exit {code}); see {log}")


def validation_curve(run: Path) -> list[dict[str, float]]:
    """validation.csv as numbers: step, minutes, median_mm, p95_mm, max_mm, misses, steps_per_s."""
    path = run / "validation.csv"
    if not path.is_file():
        return []
    keys = ("step", "minutes", "median_mm", "p95_mm", "max_mm", "misses", "steps_per_s")
    return [
        {key: float(row[key]) for key in keys if row.get(key) not in (None, "")}
        for row in csv.DictReader(path.open(encoding="utf-8"))
    ]


def steps_to(curve: list[dict[str, float]], threshold_mm: float) -> float | None:
    """The first validation step whose median is at most ``threshold_mm`` (None: never)."""
    for row in curve:
        if row.get("median_mm", float("inf")) <= threshold_mm:
            return row["step"]
    return None


def train_argv(
    learner: str, config: str, overrides: list[str], minutes: float, patience: int, run: Path
) -> list[str]:
    """train.py's arguments for one learner: the clock ends the run, early stopping is relaxed."""
    sets = [
        *overrides,
        f"agent.algorithm={learner}",
        f"train.max_minutes={minutes}",
        "train.total_timesteps=100000000",
        f"train.patience={patience}",
        "train.progress_bar=false",
    ]
    return [config, *(item for value in sets for item in ("--set", value)), "--run-dir", str(run)]


def train_all(learners: list[str], argvs: dict[str, list[str]], root: Path, parallel: bool) -> None:
    """Run the learners' train.py: one after the other, or all at once (they then share the load)."""
    running = []
    for learner in learners:
        log = root / f"{learner}-train.log"
        process = start_process("train.py", argvs[learner], log)
        if parallel:
            running.append((process, learner, log))
        else:
            finish(process, f"train.py for {learner}", log)
    for process, learner, log in running:
        finish(process, f"train.py for {learner}", log)


def scores(learner: str, run: Path, root: Path) -> dict[str, Any]:
    """evaluate.py RUN on the test phantoms, and the run's figures."""
    summary = json.loads((run / "summary.json").read_text())
    log = root / f"{learner}-evaluate.log"
    began = time.perf_counter()
    finish(start_process("evaluate.py", [str(run)], log), f"evaluate.py for {learner}", log)
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    curve = validation_curve(run)
    agent, oracle = metrics["agent"]["all"], metrics["oracle"]["all"]
    return {
        "learner": learner,
        "run": str(run),
        "steps": summary["num_timesteps"],
        "learning_minutes": summary["minutes"],
        "steps_per_s": summary["steps_per_s"],
        "best_val_median_mm": summary["best_val_median_mm"],
        "validation": curve,
        **{f"steps_to_val_median_{t:g}mm": steps_to(curve, t) for t in THRESHOLDS_MM},
        "test_agent": {key: agent.get(key) for key in ("n", "median_mm", "p95_mm", "max_mm", "misses")},
        "test_oracle": {key: oracle.get(key) for key in ("median_mm", "p95_mm")},
        "evaluate_seconds": time.perf_counter() - began,
    }


def _mm(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        "| learner | steps | min | steps/s | steps to val median <= 3 / 2 mm | best val median | "
        "test agent median / p95 / max (mm) | misses > 10 mm | oracle median / p95 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        agent, oracle = r["test_agent"], r["test_oracle"]
        to3, to2 = (r[f"steps_to_val_median_{t:g}mm"] for t in THRESHOLDS_MM)
        print(
            f"| {r['learner']} | {r['steps']:,} | {r['learning_minutes']:.1f} | {r['steps_per_s']:.0f} | "
            f"{'-' if to3 is None else f'{to3:,.0f}'} / {'-' if to2 is None else f'{to2:,.0f}'} | "
            f"{_mm(r['best_val_median_mm'])} | {_mm(agent['median_mm'])} / {_mm(agent['p95_mm'])} / "
            f"{_mm(agent['max_mm'])} | {agent['misses']} of {agent['n']} | "
            f"{_mm(oracle['median_mm'])} / {_mm(oracle['p95_mm'])} |"
        )
    for r in results:
        points = ", ".join(
            f"{row['step']:,.0f}: {_mm(row.get('median_mm'))}/{_mm(row.get('p95_mm'))}"
            for row in r["validation"]
        )
        print(f"{r['learner']} validation (step: median/p95 mm): {points}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "landmark_phantom.yaml"))
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, default=["greedy", "double"])
    parser.add_argument(
        "--minutes", type=float, default=6.0, help="wall time per learner (train.max_minutes)"
    )
    parser.add_argument("--patience", type=int, default=1000, help="train.patience of both runs")
    parser.add_argument(
        "--parallel", action="store_true", help="train the learners at once, so that they share the load"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", type=Path, help="folder of the runs (default: runs/bench-learners-DATE)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "landmark_learners.json")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes: expected > 0, got {args.minutes}")
    root = (args.root or ROOT / "runs" / f"bench-learners-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if root.exists() and any(root.iterdir()):
        parser.error(f"--root {root}: not empty; pass a new folder")
    root.mkdir(parents=True, exist_ok=True)
    argvs = {
        learner: train_argv(learner, args.config, args.overrides, args.minutes, args.patience, root / learner)
        for learner in args.learners
    }
    how = "at once" if args.parallel else "one after the other"
    print(f"bench: training {', '.join(args.learners)} for {args.minutes} min each, {how}", flush=True)
    train_all(args.learners, argvs, root, args.parallel)
    results = [scores(learner, root / learner, root) for learner in args.learners]
    print_table(results)
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "config": args.config,
        "overrides": args.overrides,
        "minutes": args.minutes,
        "patience": args.patience,
        "parallel": args.parallel,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    print(f"bench: saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
