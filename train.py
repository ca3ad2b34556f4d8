"""Train a landmark-detection or registration agent from a YAML config.

    python train.py configs/landmark_phantom.yaml [--set train.total_timesteps=20000 ...]
    python train.py configs/rigid_phantom.yaml        (task: rigid)
    python train.py configs/sdm_phantom.yaml          (task: sdm)
    python train.py --resume runs/landmark-20261125-101500

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
    parser.add_argument("--run-dir", type=Path, help="run folder to create (default runs/NAME-DATE)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint"
    )
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> int:
    # 1. config: a new experiment, or the run to resume with its own config and state
    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise ValueError("--resume takes the run's own config.yaml; drop the CONFIG and --set arguments")
        run = open_run(args.resume)
        experiment = run.experiment
        state = run.read_state()
    else:
        if args.config is None:
            raise ValueError("give a config file, e.g. python train.py configs/landmark_phantom.yaml")
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
    except (ConfigError, ValueError, OSError, KeyError) as error:
        return print_error("train.py", error)


if __name__ == "__main__":
    sys.exit(main())
