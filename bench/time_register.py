"""End-to-end time of ``agents.search.register`` (pyramids of both volumes + search [+ refinement]).

    python bench/time_register.py RUN [--n 5] [--refine]

The registration benchmark times the search alone (pairs are prepared once and shared by all
methods); this script times what a user of ``register()`` waits for, from two raw volumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.networks import set_torch_threads  # noqa: E402  (the repository root is put on the path first)
from envs.io.atomic import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from gymnasium import spaces

    from agents.checkpoints import load_policy
    from agents.experiments import make_alignment_world, open_run, prepare_dataset
    from agents.search import QNetworkPolicy, register
    from envs.core import euler_transform, resample_isotropic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--refine", action="store_true")
    args = parser.parse_args(argv)
    set_torch_threads(1)
    run = open_run(args.run)
    experiment = run.experiment
    search = replace(experiment.search, refine="sitk") if args.refine else experiment.search
    dataset = prepare_dataset(experiment)
    world = make_alignment_world(experiment, dataset, "test", training=False)
    policy = QNetworkPolicy(load_policy(run.policy_path(), (world.observation_space(), spaces.Discrete(12))))
    rng = np.random.default_rng(0)
    totals, searches, errors = [], [], []
    for index in range(args.n):
        fixed = dataset.load(world.cases[index % len(world.cases)]).volume
        truth = np.concatenate([rng.uniform(-30, 30, 3), rng.uniform(-30, 30, 3)])
        transform = euler_transform(truth, fixed.center_lps_mm)
        moving = resample_isotropic(fixed, float(fixed.spacing_xyz_mm[0]), transform=transform.GetInverse())
        began = time.perf_counter()
        answer, result = register(fixed, moving, policy, world, config=search)
        totals.append(time.perf_counter() - began)
        searches.append(result.seconds)
        points = fixed.index_to_lps(np.argwhere(fixed.voxels[::10, ::10, ::10] > -300)[:, ::-1] * 10.0)
        mapped = np.array([answer.TransformPoint(p.tolist()) for p in points])
        truth_points = np.array([transform.TransformPoint(p.tolist()) for p in points])
        errors.append(float(np.mean(np.linalg.norm(mapped - truth_points, axis=1))))
        print(f"total {totals[-1]:.2f} s (search {searches[-1]:.2f} s), TRE {errors[-1]:.2f} mm", flush=True)
    figures = {
        "run": str(args.run),
        "refine": args.refine,
        "median_total_s": float(np.median(totals)),
        "median_search_s": float(np.median(searches)),
        "median_tre_mm": float(np.median(errors)),
        "n": args.n,
    }
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / f"registration_register_time{'_refine' if args.refine else ''}.json"
    atomic_write_text(out, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
