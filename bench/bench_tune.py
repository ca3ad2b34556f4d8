"""Ray Tune throughput on this machine: the same short trials in this process vs as Tune trials.

    python bench/bench_tune.py [--trials 4] [--steps 400] [--concurrent 1 2]
        [--out bench/results/tune.json]

Each trial is a small landmark DQN on phantoms (the tiny config of the tests, ``--steps`` env
steps, one seed per trial), trained into its own run folder by ``agents.experiments.sweep_tune``.
Modes: ``sequential`` (one after another in this process, no Ray), then ``tune-N`` (Ray Tune,
N trials at once, 1 CPU each, on a local Ray of N CPUs started before the clock). Reports per
mode the wall time, trials per minute and the overhead per trial against the sequential run
((wall - sequential wall) / trials; with N > 1 concurrency hides some of it), plus the Ray start
time and the machine's load average (the figures are only comparable on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.experiments.sweep import plan_trials  # noqa: E402  (the repository root is put on the path first)
from agents.experiments.sweep_tune import run_sweep  # noqa: E402
from envs.io.atomic import atomic_write_text  # noqa: E402

CONFIG = str(ROOT / "configs" / "landmark_phantom.yaml")


def tiny(steps: int, cache: Path) -> list[str]:
    """``--set`` values of a trial of a few seconds (as tests/scripts_support.tiny_landmark)."""
    return [
        "data.phantoms.n_train=2",
        "data.phantoms.n_val=1",
        "data.phantoms.n_test=1",
        f"data.phantoms.cache_dir={cache}",
        f"train.total_timesteps={steps}",
        f"train.eval_every_steps={steps}",
        f"train.checkpoint_every_steps={steps}",
        "train.progress_bar=false",
        "agent.learning_starts=100",
        "agent.buffer_size=1000",
        "agent.channels=[4, 8]",
        "agent.kernel_sizes=[5, 3]",
        "agent.strides=[2, 2]",
        "agent.features_dim=32",
        "agent.net_arch=[32]",
        "augment.variants_per_case=1",
        "env.patch_size=15",
    ]


def training_minutes(sweep_dir: Path) -> float:
    """The trials' own learning time (summary.json ``minutes``), summed."""
    return sum(json.loads(p.read_text())["minutes"] for p in sweep_dir.glob("*/summary.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tune.json")
    args = parser.parse_args(argv)
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    try:
        overrides = tiny(args.steps, work / "phantoms")
        trials, experiments = plan_trials(CONFIG, overrides, list(range(args.trials)), None)
        run_sweep(
            CONFIG, overrides, trials[:1], experiments[:1], work / "warmup", use_ray=False
        )  # data, imports
        modes: dict[str, dict[str, float]] = {}
        began = time.perf_counter()
        assert run_sweep(CONFIG, overrides, trials, experiments, work / "sequential", use_ray=False) == 0
        modes["sequential"] = {"wall_s": time.perf_counter() - began}
        modes["sequential"]["training_s"] = 60 * training_minutes(work / "sequential")
        ray_start_s = {}
        for concurrent in args.concurrent:
            began = time.perf_counter()
            ray.init(num_cpus=concurrent, include_dashboard=False)
            ray_start_s[str(concurrent)] = time.perf_counter() - began
            try:
                folder = work / f"tune-{concurrent}"
                began = time.perf_counter()
                status = run_sweep(
                    CONFIG, overrides, trials, experiments, folder, max_concurrent=concurrent, use_ray=True
                )
                assert status == 0, f"tune-{concurrent}: some trials failed"
                wall = time.perf_counter() - began
            finally:
                ray.shutdown()
            modes[f"tune-{concurrent}"] = {"wall_s": wall, "training_s": 60 * training_minutes(folder)}
        sequential = modes["sequential"]["wall_s"]
        for figures in modes.values():
            figures["trials_per_min"] = 60 * args.trials / figures["wall_s"]
            figures["overhead_per_trial_s"] = (figures["wall_s"] - sequential) / args.trials
        result = {
            "command": " ".join(
                ["python bench/bench_tune.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "trials": args.trials,
            "steps_per_trial": args.steps,
            "modes": modes,
            "ray_start_s": ray_start_s,
            "cpus": os.cpu_count(),
            "load_average_1_5_15": list(os.getloadavg()),
            "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'mode':<11} {'wall s':>8} {'train s':>8} {'trials/min':>11} {'overhead/trial s':>17}")
    for mode, figures in modes.items():
        print(
            f"{mode:<11} {figures['wall_s']:8.1f} {figures['training_s']:8.1f} "
            f"{figures['trials_per_min']:11.2f} {figures['overhead_per_trial_s']:17.1f}"
        )
    print(f"Ray start: {ray_start_s} s; load average {result['load_average_1_5_15']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
