"""Contrast the rigid agent can learn: observed intensities vs edge maps (issue #11, item 2).

    python bench/bench_rigid_contrast.py speed [--steps 300]
    python bench/bench_rigid_contrast.py eval RUN [RUN ...] [--trials 20] [--misalignments 30]

``speed``: pair building and random-action steps/s of the rigid env for each ``env.observation``
(``intensity``, ``gradient``, ``both``), and the two ways of making the moving edge channel:
resampling the moving edge map precomputed per pyramid level (what the env does) or computing
the edge map of the resampled moving intensity patch.

``eval``: each run (made by ``train.py``) on the test phantoms, conditions ``mono`` and
``multimodal``, the agent alone and agent + SimpleITK, against SimpleITK (VersorRigid3D,
Mattes MI) from the same starts. Train the runs with the same wall time, e.g. side by side::

    python train.py configs/rigid_phantom.yaml --set env.observation=intensity \\
        --set train.max_minutes=10 --run-dir runs/contrast-intensity
    python train.py configs/rigid_phantom.yaml --set env.observation=gradient \\
        --set train.max_minutes=10 --run-dir runs/contrast-gradient

Both parts print their figures and save JSON under bench/results/ (2 CPU cores, torch 1 thread).
Success = mean TRE over control points < 2 mm.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.networks import set_torch_threads  # noqa: E402  (the repository root is put on the path first)
from envs.io.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
OBSERVATIONS = ("intensity", "gradient", "both")


def _save(name: str, figures: dict) -> Path:
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": 1}
    path = RESULTS / f"rigid_contrast_{name}.json"
    atomic_write_text(path, json.dumps({"machine": machine, **figures}, indent=2, default=float) + "\n")
    print(f"bench: saved {path}")
    return path


def bench_speed(steps: int, cases: int) -> dict:
    """Pair building, env steps/s and the two moving-edge renderings, per observation kind."""
    from envs.core.pyramid import edge_map
    from envs.phantom import phantom_dataset
    from envs.tasks import RigidRegistrationEnv

    dataset = phantom_dataset(cases, 0, 0, seed=0)
    figures: dict = {"steps": steps, "cases": cases}
    # Untimed warm-up: the phantoms and the fixed pyramids (cached per case) are made once, so
    # pair_build_s below is each kind's own cost (moving pyramid, variation, edge maps).
    warm = RigidRegistrationEnv(dataset, "train", contrast="same", variants_per_case=2).world
    for index in range(warm.n_variants):
        warm.pair(index)
    for observation in OBSERVATIONS:
        env = RigidRegistrationEnv(
            dataset, "train", contrast="mixed", variants_per_case=2, observation=observation
        )
        world = env.world
        began = time.perf_counter()
        for index in range(world.n_variants):
            world.pair(index)
        build_s = (time.perf_counter() - began) / world.n_variants
        env.reset(seed=0)
        env.action_space.seed(0)
        began = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        rate = steps / (time.perf_counter() - began)
        figures[observation] = {
            "steps_per_s": rate,
            "pair_build_s": build_s,
            "obs_shape": list(env.observation_space["patch"].shape),
        }
        print(
            f"{observation:9s}: {rate:6.0f} steps/s, pair build {build_s:.2f} s, "
            f"obs {figures[observation]['obs_shape']}"
        )
        if observation == "gradient":
            rng = np.random.default_rng(0)
            poses = [
                (int(rng.integers(world.n_variants)), int(rng.integers(world.n_levels))) for _ in range(steps)
            ]
            starts = [world.start_params(world.pair(p), level, rng) for p, level in poses]
            timings = {}
            for name, render in (
                ("resample_edge_map", lambda pair, lv, x, w=world: w.render_moving(pair, lv, x, edges=True)),
                ("edge_of_patch", lambda pair, lv, x, w=world: edge_map(w.render_moving(pair, lv, x))),
                ("intensity_only", lambda pair, lv, x, w=world: w.render_moving(pair, lv, x)),
            ):
                began = time.perf_counter()
                for (index, level), params in zip(poses, starts, strict=True):
                    render(world.pair(index), level, params)
                timings[name] = 1000 * (time.perf_counter() - began) / steps
            figures["moving_edge_ms"] = timings
            print(
                "moving edge channel per render: resample the precomputed edge map "
                f"{timings['resample_edge_map']:.2f} ms, edge map of the resampled patch "
                f"{timings['edge_of_patch']:.2f} ms (intensity alone {timings['intensity_only']:.2f} ms)"
            )
    return figures


def bench_eval(runs: list[Path], trials: int, misalignments: list[float], conditions: list[str]) -> dict:
    """Agent, agent + SimpleITK and SimpleITK on the same test pairs and starts, per run."""
    from dataclasses import replace

    from gymnasium import spaces

    from agents.checkpoints import load_policy
    from agents.experiments import (
        evaluate_rigid,
        make_alignment_world,
        markdown_table,
        open_run,
        prepare_dataset,
    )

    figures: dict = {"trials": trials, "misalignments": misalignments, "conditions": conditions, "runs": {}}
    for run in runs:
        opened = open_run(run)
        experiment = opened.experiment
        experiment = replace(experiment, search=replace(experiment.search, refine="sitk"))
        dataset = prepare_dataset(experiment)
        world = make_alignment_world(experiment, dataset, "test", training=False)
        policy = load_policy(
            opened.policy_path(), (world.observation_space(), spaces.Discrete(world.n_actions))
        )
        began = time.perf_counter()
        metrics, _rows = evaluate_rigid(
            experiment,
            policy,
            dataset,
            "test",
            misalignments=misalignments,
            trials=trials,
            conditions=conditions,
            baselines=["sitk"],
            progress=False,
        )
        summary_path = Path(run) / "summary.json"
        training = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        training.pop("validations", None)
        observation = experiment.env.observation
        print(markdown_table(metrics, f"{run} (env.observation={observation}), {trials} test pairs per cell"))
        figures["runs"][str(run)] = {
            "observation": observation,
            "contrast": experiment.env.contrast,
            "training": training,
            "seconds": time.perf_counter() - began,
            "metrics": metrics,
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    speed = sub.add_parser("speed", help="steps/s and edge rendering cost per observation kind")
    speed.add_argument("--steps", type=int, default=300)
    speed.add_argument("--cases", type=int, default=2)
    evaluate = sub.add_parser("eval", help="runs vs SimpleITK on mono and multimodal test pairs")
    evaluate.add_argument("runs", nargs="+", type=Path)
    evaluate.add_argument("--trials", type=int, default=20)
    evaluate.add_argument("--misalignments", type=float, nargs="+", default=[30.0])
    evaluate.add_argument("--conditions", nargs="+", default=["mono", "multimodal"])
    evaluate.add_argument("--name", default="eval", help="suffix of the JSON file (default eval)")
    args = parser.parse_args(argv)
    set_torch_threads(1)
    try:
        if args.part == "speed":
            _save("speed", bench_speed(args.steps, args.cases))
        else:
            _save(args.name, bench_eval(args.runs, args.trials, args.misalignments, args.conditions))
    except (ValueError, FileNotFoundError) as error:
        print(f"bench_rigid_contrast: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
