"""RLlib DQN env-runner scaling on the landmark env: env steps/s with 1, 2 and 4 env runners.

    python bench/bench_rllib_scaling.py [--runners 1 2 4] [--envs-per-runner 8] [--fragment 0] [--seconds 20]
        [--config configs/landmark_phantom.yaml] [--set KEY=VALUE ...]
        [--out bench/results/rllib_scaling.json]

For each runner count R, a fresh local Ray (``num_cpus = R + 1``: one CPU per runner, one for
the learner; Ray's CPUs are logical, so R + 1 above the machine's cores oversubscribes them)
and RLlib's DQN as ``agent.backend: rllib`` builds it (:func:`agents.rllib.dqn_config`, the
project's network) with ``--envs-per-runner`` envs in each runner and ``--fragment`` steps per env
and sample round (0: the automatic length of :mod:`agents.rllib.config`). After a warm-up (each runner
builds its training variants on its first episodes), two figures:

- sampling: all runners call ``EnvRunner.sample`` at once (epsilon-greedy actions from the
  project's network, the episodes stay in the runner): env steps/s over all runners;
- training: ``algo.train()`` iterations (sample, replay, one update per round as configured,
  weight sync to the runners) with learning started: env steps/s and iterations/s.

Every run uses the config's data and network with ``--set`` overrides (default: 4 training
phantoms, 1 variant each). The figures depend on the machine and its load: compare them
within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from agents.experiments import load_experiment, make_world, prepare_dataset  # noqa: E402  (root on the path first)
from agents.networks import set_torch_threads  # noqa: E402
from agents.rllib import (  # noqa: E402
    RLlibSettings,
    dqn_config,
    env_config,
    local_ray,
    register_landmark_env,
    sampled_steps,
)
from envs.io.atomic import atomic_write_text  # noqa: E402

DEFAULT_SET = [
    "data.phantoms.n_train=4",
    "data.phantoms.n_val=1",
    "data.phantoms.n_test=1",
    "augment.variants_per_case=1",
    "agent.learning_starts=200",
    "train.eval_every_steps=400",  # algo.train() iterations of >= 400 env steps
    "train.checkpoint_every_steps=400",
]


def _timed_sampling(algo: Any, steps_per_runner: int) -> tuple[int, float]:
    """All remote runners sample ``steps_per_runner`` env steps at once; returns (steps, seconds)."""

    def sample(runner: Any) -> int:
        return sum(len(episode) for episode in runner.sample(num_timesteps=steps_per_runner, explore=True))

    began = time.perf_counter()
    counts = algo.env_runner_group.foreach_env_runner(sample, local_env_runner=False)
    return int(sum(counts)), time.perf_counter() - began


def measure(
    experiment: Any, names: list[str], runners: int, envs_per_runner: int, fragment: int, seconds: float
) -> dict:
    """Sampling and training throughput with ``runners`` env runners (see the module docstring)."""
    settings = RLlibSettings(runners, envs_per_runner, rollout_fragment_length=fragment)
    config = dqn_config(experiment, settings, env_config(experiment, names))
    figures: dict[str, Any] = {
        "runners": runners,
        "envs_per_runner": envs_per_runner,
        "rollout_fragment_length": config.rollout_fragment_length,
        "training_intensity": config.training_intensity,
    }
    with local_ray(runners + 1):
        register_landmark_env()
        began = time.perf_counter()
        algo = config.build_algo()
        figures["build_s"] = time.perf_counter() - began
        try:
            _timed_sampling(algo, 400)  # warm-up: variants built, first episodes
            chunk = 200 * envs_per_runner // 8
            steps, elapsed = 0, 0.0
            while elapsed < seconds:
                done, took = _timed_sampling(algo, chunk)
                steps, elapsed = steps + done, elapsed + took
            figures["sample_steps_per_s"] = steps / elapsed
            figures["sample_steps_per_s_per_runner"] = steps / elapsed / runners
            # training: the first iterations fill the replay up to learning_starts
            result = algo.train()
            while sampled_steps(result) < experiment.agent.learning_starts:
                result = algo.train()
            start_steps, iterations, began = sampled_steps(result), 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                result = algo.train()
                iterations += 1
            elapsed = time.perf_counter() - began
            figures["train_steps_per_s"] = (sampled_steps(result) - start_steps) / elapsed
            figures["train_iterations_per_s"] = iterations / elapsed
            figures["train_steps_per_iteration"] = (sampled_steps(result) - start_steps) / iterations
            round_steps = runners * envs_per_runner * config.rollout_fragment_length
            figures["train_rounds_per_s"] = figures["train_steps_per_s"] / round_steps
        finally:
            algo.stop()
    return figures


def main() -> None:
    """Run the bench (see the module docstring); prints a table and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--envs-per-runner", type=int, default=8)
    parser.add_argument(
        "--fragment", type=int, default=0, help="rollout_fragment_length (0: automatic, agents.rllib.config)"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="measuring time per figure and runner count"
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "landmark_phantom.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rllib_scaling.json")
    args = parser.parse_args()
    set_torch_threads(1)
    experiment = load_experiment(args.config, [*DEFAULT_SET, "agent.backend=rllib", *args.overrides])
    dataset = prepare_dataset(experiment)  # phantoms written once, before any runner reads them
    names = list(make_world(experiment, dataset, "train").landmark_names)
    rows = []
    for runners in args.runners:
        row = measure(experiment, names, runners, args.envs_per_runner, args.fragment, args.seconds)
        rows.append(row)
        print(
            f"{runners} runner(s) x {args.envs_per_runner} envs: sampling "
            f"{row['sample_steps_per_s']:.0f} steps/s "
            f"({row['sample_steps_per_s_per_runner']:.0f} per runner); "
            f"training {row['train_steps_per_s']:.0f} steps/s, "
            f"{row['train_iterations_per_s']:.2f} iterations/s "
            f"({row['train_steps_per_iteration']:.0f} steps each), "
            f"{row['train_rounds_per_s']:.1f} sample+update rounds/s",
            flush=True,
        )
    base = rows[0]["sample_steps_per_s"]
    for row in rows:
        row["sample_speedup"] = row["sample_steps_per_s"] / base
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": args.config,
        "overrides": [*DEFAULT_SET, *args.overrides],
        "seconds": args.seconds,
        "rows": rows,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(
        f"speed-up of sampling over {rows[0]['runners']} runner(s): "
        + ", ".join(f"{row['runners']}: {row['sample_speedup']:.2f}x" for row in rows)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
