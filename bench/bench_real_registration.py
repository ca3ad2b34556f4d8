"""Rigid registration on a held-out real CT: agent, agent + SimpleITK, the guard, SimpleITK alone.

    python bench/real_ct.py prepare --out data/real_ct                       # once
    python train.py configs/rigid_own_data.yaml --set train.max_minutes=15 --run-dir runs/real_ct
    python bench/bench_real_registration.py runs/real_ct [--trials 10] [--misalignments 15 30 45 60]
        [--conditions mono partial] [--baselines sitk sitk-moments elastix] [--ensemble RUN2 RUN3]
        [--symmetric true|false]

The run is trained self-supervised on the training scans of the manifest (by default lung1 and
ts_abdomen: moved, re-noised, cropped copies of themselves); the benchmark registers each test
scan (lung2 and ts_chest: other patients, never seen in training) to moved copies of itself at
+-M mm and +-M degrees per parameter (uniform), ``--trials`` pairs per M (spread over the test
scans); ``--conditions partial`` crops the moved copy to a 40-70 % slab (partial overlap). On
the same pairs and starts: ``agent`` (the learnt search alone), ``agent+sitk`` (its answer polished by a short
SimpleITK optimisation), ``agent+sitk+guard`` (that answer through the plausibility guard, with
its SimpleITK fallback: the product as ``evaluate.py --register`` runs it), ``sitk`` (SimpleITK
versor rigid + Mattes MI from the same start) and ``sitk-moments`` (SimpleITK from its moments
initialisation, as a user runs it on two scans), and with ``--baselines ... elastix``
elastix's default rigid map (``pip install itk-elastix==0.25.4``: the ``medgym[elastix]`` extra).
Success: mean TRE over control points < 2 mm. ``--ensemble`` averages the Q-values of other runs'
networks (e.g. other seeds of the same config) with RUN's at every step of the search.
Prints a table and saves bench/results/real_registration.json.

The real multimodal pair (T1w vs T2w, co-registered MNI 2009c templates from
``bench/real_anatomy.py prepare``; the truth is the rigid fit of their shared landmarks)::

    python train.py configs/rigid_own_data.yaml --set data.manifest=data/real_ct/multimodal_manifest.csv \
        --set "env.levels_mm=[8.0,4.0,2.0]" --set env.contrast=multimodal --run-dir runs/t1_multimodal
    python bench/bench_real_registration.py runs/t1_multimodal \
        --manifest data/real_ct/multimodal_manifest.csv --pairing landmarks --misalignments 30 60 \
        --out bench/results/real_multimodal_registration.json

(``data/real_ct/multimodal_manifest.csv``, written by ``bench/real_ct.py prepare`` when
``data/real`` holds the templates: t1_train (train), t1_val (val: a moved T1w), t1 and t2 (test:
the source T1w and T2w with the CerebrA centroids).)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.networks import set_torch_threads  # noqa: E402  (the repository root is put on the path first)
from envs.io.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MANIFEST = ROOT / "data" / "real_ct" / "manifest.csv"


def bench(
    run: Path,
    manifest: Path,
    trials: int,
    misalignments: list[float],
    split: str,
    pairing: str | None = None,
    baselines: tuple[str, ...] = ("sitk", "sitk-moments"),
    conditions: tuple[str, ...] = ("mono",),
    ensemble: tuple[Path, ...] = (),
    search: dict | None = None,
) -> dict:
    """Every method on ``trials`` pairs per misalignment of ``split``; the figures as a dict.

    ``pairing="landmarks"`` pairs each test case with the next one (truth: the rigid fit of
    their shared landmarks), e.g. a T1w and a T2w scan in one space: a real multimodal pair.
    """
    from gymnasium import spaces

    from agents.experiments import (
        ensemble_of,
        evaluate_rigid,
        load_policies,
        make_alignment_world,
        markdown_table,
        open_run,
    )
    from envs.data import Dataset

    opened = open_run(run)
    if ensemble:  # the mean Q-values of this run's network and theirs (evaluate.py --ensemble)
        opened = ensemble_of([opened, *(open_run(other) for other in ensemble)])
    experiment = opened.experiment
    experiment = replace(
        experiment, search=replace(experiment.search, refine="sitk", guard=True, **(search or {}))
    )
    if pairing is not None:
        # random frames are for training self pairs only; the test worlds are frameless anyway
        frameless = {"frame_motion": (0.0, 0.0), "frame_scale": 0.0, "frame_elastic_mm": 0.0}
        experiment = replace(experiment, env=replace(experiment.env, pairing=pairing, **frameless))
    dataset = Dataset.from_manifest(manifest)
    world = make_alignment_world(experiment, dataset, split, training=False)
    spaces_ = (world.observation_space(), spaces.Discrete(world.n_actions))
    policy = load_policies(opened, spaces_)
    began = time.perf_counter()
    metrics, rows = evaluate_rigid(
        experiment,
        policy,
        dataset,
        split,
        misalignments=misalignments,
        trials=trials,
        conditions=conditions,
        baselines=baselines,
        oracle=False,
    )
    cases = ", ".join(case.case_id for case in dataset.split(split))
    print(markdown_table(metrics, f"real data ({split}: {cases})"))
    for method, by_condition in metrics.items():
        for condition, misalignment, entry in (
            (c, m, e) for c, by_misalignment in by_condition.items() for m, e in by_misalignment.items()
        ):
            extra = f", fallback {entry['fallback_rate']:.0%}" if "fallback_rate" in entry else ""
            print(
                f"{method:>18} {condition:>7} +-{misalignment:>3}: success {entry['success_rate']:.0%}, "
                f"median TRE {entry['median_mm']:.2f} mm (before {entry['before_median_mm']:.1f}), "
                f"median {entry['median_s']:.2f} s{extra}"
            )
    summary_path = run / "summary.json"
    training = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "run": str(run),
        "ensemble": [str(other) for other in ensemble],
        "manifest": str(manifest),
        "split": split,
        "trials": trials,
        "misalignments": misalignments,
        "conditions": list(conditions),
        "seconds": time.perf_counter() - began,
        "training": {k: training.get(k) for k in ("num_timesteps", "minutes", "best_mm") if k in training},
        "config": {"env": dict(experiment.env.__dict__), "search": dict(experiment.search.__dict__)},
        "metrics": metrics,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder trained with configs/rigid_own_data.yaml")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--split", default="test")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--misalignments", type=float, nargs="+", default=[15.0, 30.0, 45.0, 60.0])
    parser.add_argument(
        "--baselines", nargs="*", default=["sitk", "sitk-moments"], help="SimpleITK baselines (none: none)"
    )
    parser.add_argument("--pairing", choices=("self", "landmarks"), help="override the run's env.pairing")
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=["mono"],
        choices=("mono", "partial", "multimodal"),
        help="mono: moved, re-noised copies; partial: cropped to a 40-70 %% slab; multimodal: re-contrasted",
    )
    parser.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN",
        help="other runs (e.g. other seeds) whose networks' Q-values are averaged with RUN's",
    )
    parser.add_argument(
        "--symmetric",
        choices=("true", "false"),
        help="search.symmetric for this benchmark (default: the run's): the inverse search too, averaged",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "real_registration.json")
    args = parser.parse_args(argv)
    set_torch_threads(1)
    try:
        baselines = tuple(b for b in args.baselines if b != "none")
        figures = bench(
            args.run,
            args.manifest,
            args.trials,
            args.misalignments,
            args.split,
            args.pairing,
            baselines,
            tuple(args.conditions),
            tuple(args.ensemble),
            {} if args.symmetric is None else {"symmetric": args.symmetric == "true"},
        )
    except (ValueError, OSError) as error:
        print(f"bench_real_registration.py: {error}", file=sys.stderr)
        return 2
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": 1}
    command = "python bench/bench_real_registration.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    atomic_write_text(
        args.out, json.dumps({"machine": machine, "command": command, **figures}, indent=2) + "\n"
    )
    print(f"bench: saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
