"""Training to accuracy on phantoms, CPU only: agent vs oracle vs atlas baseline, with speeds.

    python bench/bench_training.py [--config configs/landmark_phantom.yaml] [--set KEY=VALUE ...]
        [--baseline atlas] [--out bench/results/training.json]

Trains with the config (fixed train/val/test phantom seeds), evaluates on the test phantoms
and prints the agent's errors beside the oracle's (greedy on the true distance: the floor
the finest step sets) and, optionally, the atlas baseline's. Saves the figures as JSON.
Targets from the landmark issue: agent median <= 1.2x oracle median, p95 <= 2x oracle p95,
no miss > 10 mm, within 10 minutes, >= 400 env steps/s per core while learning,
detection <= 10 ms per landmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.io.atomic import atomic_write_text  # noqa: E402  (the repository root is put on the path first)


def run_script(name: str, argv: list[str]) -> int:
    """Run ``python NAME ARGV...`` in this process (no script is imported); returns its exit status."""
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(ROOT / name), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "landmark_phantom.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--baseline", choices=("atlas",))
    parser.add_argument("--run-dir", type=Path, help="default: a fresh folder under runs/")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training.json")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or ROOT / "runs" / f"bench-training-{time.strftime('%Y%m%d-%H%M%S')}"
    sets = [item for override in args.overrides for item in ("--set", override)]
    began = time.perf_counter()
    if (
        run_script(
            "train.py", [args.config, *sets, "--set", "train.progress_bar=false", "--run-dir", str(run_dir)]
        )
        != 0
    ):
        return 1
    train_minutes = (time.perf_counter() - began) / 60.0
    eval_args = [str(run_dir), "--out", str(run_dir / "eval-test")]
    if args.baseline:
        eval_args += ["--baseline", args.baseline]
    if run_script("evaluate.py", eval_args) != 0:
        return 1
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    agent, oracle = metrics["agent"]["all"], metrics["oracle"]["all"]
    figures = {
        "train_minutes": train_minutes,
        "num_timesteps": summary["num_timesteps"],
        "env_steps_per_s_while_learning": summary["steps_per_s"],
        "best_val_median_mm": summary["best_val_median_mm"],
        "test": metrics,
        "agent_over_oracle_median": agent["median_mm"] / oracle["median_mm"],
        "agent_over_oracle_p95": agent["p95_mm"] / oracle["p95_mm"],
        "agent_misses_over_10mm": agent["misses"],
        "detection_ms_per_landmark": agent["ms_per_landmark"],
    }
    result = {
        "figures": figures,
        "run_dir": str(run_dir),
        "command": [sys.executable, *sys.argv],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(
        f"agent median {agent['median_mm']:.2f} mm (oracle {oracle['median_mm']:.2f}, "
        f"x{figures['agent_over_oracle_median']:.2f}); p95 {agent['p95_mm']:.2f} mm (oracle "
        f"{oracle['p95_mm']:.2f}, x{figures['agent_over_oracle_p95']:.2f}); misses {agent['misses']}; "
        f"{summary['steps_per_s']:.0f} steps/s; {agent['ms_per_landmark']:.1f} ms/landmark; "
        f"trained {train_minutes:.1f} min -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
