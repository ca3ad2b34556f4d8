"""Does a rigid agent hold the truth? Per level, where its search ends when it starts at the answer.

    python bench/bench_rigid_drift.py RUN [--manifest data/real_ct/manifest.csv]
        [--splits val test] [--starts 5] [--jitter-steps 2]

For each case of each split (variant 0: the scan as it is, no random frame) and each pyramid
level, the run's agent searches that level alone (greedy on its Q-values, until it returns to
one of its last 4 poses or takes 80 steps) from the true pose and from ``--starts - 1`` poses
jittered by up to ``--jitter-steps`` of that level's steps per parameter. The final TRE (mean over
control points, mm) says whether the network's optimum is the truth on that scan:

- on the training scan (``val``: moved copies of it) an agent that has learnt the task ends
  within about one finest step of the truth;
- on another patient's scan (``test``) an ending many millimetres away shows that the network's
  optimum moved with the anatomy: the agent did not generalise, and no search setting, finer
  step or larger lever arm fixes that (more training patients or augmentation does).

Prints a table and saves bench/results/rigid_drift.json (2 CPU cores, torch 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.networks import set_torch_threads  # noqa: E402  (the repository root is put on the path first)
from envs.io.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MANIFEST = ROOT / "data" / "real_ct" / "manifest.csv"
WINDOW = 4
MAX_STEPS = 80


def search_level(world, pair, policy, level: int, params: np.ndarray) -> np.ndarray:
    """Greedy steps on ``level`` alone from ``params`` (integer units) until a pose repeats."""
    recent = [tuple(int(v) for v in params)]
    for _ in range(MAX_STEPS):
        observation = world.observation(pair, level, params)
        batch = {"patch": observation["patch"][np.newaxis], "level": np.array([level])}
        index, delta = world.action_delta(int(np.argmax(policy(batch, pair, params, level)[0])), level)
        params = params.copy()
        params[index] += delta
        key = tuple(int(v) for v in params)
        if key in recent[-WINDOW:]:
            break
        recent.append(key)
    return params


def bench(run: Path, manifest: Path, splits: list[str], starts: int, jitter_steps: float) -> dict:
    """Final TRE per split, case and level from the truth (first) and jittered starts."""
    from gymnasium import spaces

    from agents.checkpoints import load_policy
    from agents.experiments import make_alignment_world, open_run
    from agents.search import QNetworkPolicy
    from envs.data import Dataset
    from envs.tasks import UNIT

    if starts < 1:
        raise ValueError(f"--starts: expected >= 1, got {starts}")
    opened = open_run(run)
    if opened.experiment.task != "rigid":
        raise ValueError(f"{run}: a {opened.experiment.task} run; this bench takes rigid runs")
    dataset = Dataset.from_manifest(manifest)
    rng = np.random.default_rng(0)
    policy = None
    results: dict = {}
    for split in splits:
        world = make_alignment_world(opened.experiment, dataset, split, training=False)
        if policy is None:
            spaces_ = (world.observation_space(), spaces.Discrete(world.n_actions))
            policy = QNetworkPolicy(load_policy(opened.policy_path(), spaces_))
        for case in dataset.split(split):
            pair = world.pair(world.pair_index(case.case_id, 0))
            truth = np.rint(pair.truth * UNIT).astype(np.int64)
            for level in range(world.n_levels):
                finals = []
                for start in range(starts):
                    jitter = rng.uniform(-jitter_steps, jitter_steps, truth.shape) if start else 0.0
                    params = truth + np.rint(jitter * world.steps_int[level]).astype(np.int64)
                    final = search_level(world, pair, policy, level, params)
                    finals.append(float(world.errors_mm(pair, final[np.newaxis])[0]))
                entry = {
                    "level_mm": float(world.levels_mm[level]),
                    "from_truth_mm": finals[0],
                    "jittered_mm": finals[1:],
                    "median_mm": float(np.median(finals)),
                }
                results.setdefault(split, {}).setdefault(case.case_id, []).append(entry)
                print(
                    f"{split:>5} {case.case_id:>12} level {level} ({entry['level_mm']:g} mm): from the "
                    f"truth {finals[0]:6.2f} mm, median over {starts} starts {entry['median_mm']:6.2f} mm",
                    flush=True,
                )
    return {
        "run": str(run),
        "manifest": str(manifest),
        "starts": starts,
        "jitter_steps": jitter_steps,
        "cases": results,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a rigid run folder (train.py)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--starts", type=int, default=5, help="the truth plus this many - 1 jittered starts")
    parser.add_argument("--jitter-steps", type=float, default=2.0, help="jitter: +- this many level steps")
    parser.add_argument("--out", type=Path, default=RESULTS / "rigid_drift.json")
    args = parser.parse_args(argv)
    set_torch_threads(1)
    try:
        figures = bench(args.run, args.manifest, args.splits, args.starts, args.jitter_steps)
    except (ValueError, OSError) as error:
        print(f"bench_rigid_drift.py: {error}", file=sys.stderr)
        return 2
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": 1}
    command = "python bench/bench_rigid_drift.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(
        args.out, json.dumps({"machine": machine, "command": command, **figures}, indent=2) + "\n"
    )
    print(f"bench: saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
