"""Landmark env step and search time of two (or more) checkouts, alternated on the same machine.

    python bench/compare_checkouts.py OTHER_CHECKOUT [.] [--rounds 3] [--steps 20000]

Each round runs every checkout once, in its own process (so their ``envs`` packages never
mix), in turn, for a 25^3 and a 45^3 patch on 2 in-memory phantoms:
- env step: a ``LandmarkEnv`` steps through the same seeded random actions with a reset every
  50 steps, 15 repeats; the best time per step;
- search: ``detect_landmarks`` of the 10 landmarks of a test phantom with random Q-values
  (the network excluded) and with the oracle, 20 seeds, 5 repeats; the best time per
  landmark-step.
Alternating the checkouts spreads a shared machine's noise over both.
Prints the best and median of the rounds per checkout and saves them as JSON.
Works on checkouts from before the layered layout too (``envs.landmark``, ``Dataset.phantoms``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.io.atomic import atomic_write_text  # noqa: E402  (the repository root is put on the path first)

WORKER = """
import json, sys, time
import numpy as np
root, steps = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, root)
try:
    from envs.phantom import phantom_dataset
    from envs.tasks import LandmarkEnv
    dataset = phantom_dataset(2, 1, 1, seed=0)
except ImportError:  # a checkout from before the layered layout
    from envs.dataset import Dataset
    from envs.landmark import LandmarkEnv
    dataset = Dataset.phantoms(2, 1, 1, seed=0)
actions = np.random.default_rng(0).integers(0, 6, steps).tolist()
best = {}
for size in (25, 45):
    env = LandmarkEnv(dataset, patch_size=size)
    env.reset(seed=0)
    times = []
    for repeat in range(15):
        env.reset(seed=repeat)
        start = time.perf_counter()
        for index, action in enumerate(actions):
            env.step(action)
            if index % 50 == 49:
                env.reset()
        times.append((time.perf_counter() - start) / steps * 1e6)
    best[f"step {size}^3"] = min(times)
from agents.search import OraclePolicy, detect_landmarks


class RandomQ:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, observations, *context):
        return self.rng.standard_normal((len(observations["level"]), 6))


for size in (25, 45):
    env = LandmarkEnv(dataset, split="test", patch_size=size, schedule="coarse")
    env.reset(seed=0)
    world = env.world
    variant = world.variant(0)
    for label, policy in (("random Q", RandomQ(0)), ("oracle", OraclePolicy())):
        detect_landmarks(world, variant, policy)
        times = []
        for repeat in range(5):
            steps, start = 0, time.perf_counter()
            for seed in range(20):
                found = detect_landmarks(world, variant, policy, seed=seed)
                steps += sum(detection.steps for detection in found.values())
            times.append((time.perf_counter() - start) / steps * 1e6)
        best[f"search {label} {size}^3"] = min(times)
print(json.dumps(best))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository roots to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare_checkouts.json")
    args = parser.parse_args(argv)
    roots = [str(path.resolve()) for path in args.checkouts]
    runs: dict[str, list[dict[str, float]]] = {root: [] for root in roots}
    for round_index in range(args.rounds):
        for root in roots:
            done = subprocess.run(
                [sys.executable, "-c", WORKER, root, str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
                env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
            )
            best = json.loads(done.stdout.strip().splitlines()[-1])
            runs[root].append(best)
            cells = ", ".join(f"{name} {value:.2f}" for name, value in best.items())
            print(f"round {round_index + 1}: {root}: {cells} (us)")
    summary = {}
    for root, rows in runs.items():
        summary[root] = {
            name: {
                "best_us": min(row[name] for row in rows),
                "median_us": sorted(row[name] for row in rows)[len(rows) // 2],
            }
            for name in rows[0]
        }
        cells = ", ".join(
            f"{k} best {v['best_us']:.2f} / median {v['median_us']:.2f} us" for k, v in summary[root].items()
        )
        print(f"{root}: {cells}")
    atomic_write_text(
        args.out, json.dumps({"steps": args.steps, "rounds": args.rounds, "runs": summary}, indent=2) + "\n"
    )
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
