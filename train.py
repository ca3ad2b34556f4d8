"""Train a landmark-detection or registration agent from a YAML config.

    python train.py configs/landmark_phantom.yaml [--set train.total_timesteps=20000 ...]
    python train.py configs/rigid_phantom.yaml        (task: rigid)
    python train.py configs/sdm_phantom.yaml          (task: sdm)
    python train.py --resume runs/landmark-20261125-101500
    python train.py configs/landmark_phantom.yaml --seeds 0 1 2 [--sweep sweep.yaml]
        [--ray-address auto] [--max-concurrent 4]   (Ray Tune trials; one run folder each)

Reads top to bottom: arguments, config, seeding, data, then the task's training (worlds, envs,
run folder, model, callbacks, learn, summary) in agents/experiments. Bad input prints one line
(``train.py: error: ...``) and exits with status 2, leaving no run folder behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.experiments import (
    ConfigError,
    check_run_dir,
    load_experiment,
    open_run,
    train_experiment,
)
from agents.experiments.sweep import plan_trials, read_sweep, sweep_folder
from agents.experiments.sweep_tune import SweepFailed, run_sweep
from envs.io.cli import OneLineArgumentParser, print_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="train.py", description="Train a medgym landmark-detection or registration agent."
    )
    parser.add_argument("config", nargs="?", help="experiment YAML, e.g. configs/landmark_phantom.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.total_timesteps=20000",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="run folder to create (default runs/NAME-DATE); with --seeds / --sweep the sweep folder "
        "(default runs/NAME-sweep-DATE)",
    )
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED", help="one run per seed (the config's seed replaced)"
    )
    parser.add_argument(
        "--sweep",
        type=Path,
        metavar="FILE",
        help="sweep file (YAML): grid: and/or random: over config keys, samples:, seed:",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run the trials on this Ray cluster (auto, HOST:6379, ray://HOST:10001); default: a local Ray",
    )
    parser.add_argument(
        "--max-concurrent", type=int, metavar="N", help="trials at once (default: CPUs // 1 CPU per trial)"
    )
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace) -> int:
    """--seeds / --sweep: every trial checked first, then run as Ray Tune trials (or one by one)."""
    spec = read_sweep(args.sweep) if args.sweep is not None else None
    trials, experiments = plan_trials(args.config, args.overrides, args.seeds, spec, args.sweep)
    folder = sweep_folder(experiments[0], args.run_dir)
    print(f"train.py: {len(trials)} trials into {folder}")
    return run_sweep(
        args.config,
        args.overrides,
        trials,
        experiments,
        folder,
        ray_address=args.ray_address,
        max_concurrent=args.max_concurrent,
    )


def train(args: argparse.Namespace) -> int:
    # 1. config: a new experiment, or the run to resume with its own config and state
    several = args.seeds is not None or args.sweep is not None
    if not several and (args.ray_address is not None or args.max_concurrent is not None):
        flag = "--ray-address" if args.ray_address is not None else "--max-concurrent"
        raise ValueError(f"{flag} applies to --seeds / --sweep runs only")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError(f"--max-concurrent: expected >= 1, got {args.max_concurrent}")
    if args.resume is not None:
        if args.config is not None or args.overrides or several:
            raise ValueError(
                "--resume takes the run's own config.yaml; drop CONFIG, --set, --seeds and --sweep"
            )
        run = open_run(args.resume)
        experiment = run.experiment
        state = run.read_state()
    else:
        if args.config is None:
            raise ValueError("give a config file, e.g. python train.py configs/landmark_phantom.yaml")
        if several:
            return sweep(args)
        experiment = load_experiment(args.config, args.overrides)
        run, state = None, {}
        if args.run_dir is not None:
            check_run_dir(args.run_dir)
    # 2. seeding, data checks, then the task's training (agents/experiments/dispatch.py)
    return train_experiment(experiment, run, state, args.run_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (ConfigError, ValueError, OSError, KeyError, SweepFailed) as error:
        return print_error("train.py", error)


if __name__ == "__main__":
    sys.exit(main())
