"""Evaluate landmark-detection and registration runs in millimetres on held-out volumes.

    python evaluate.py runs/rigid_phantom-... [--baseline sitk --baseline elastix]
        [--misalignments 15 30 45 60] [--trials 20] [--conditions mono multimodal partial]
    python evaluate.py runs/sdm_phantom-... [--baseline sitk]
    python evaluate.py RUN --register fixed.nii.gz moving.nrrd --out registered/

    python evaluate.py runs/landmark_phantom-20261125-101500 [more runs ...]
        [--data MANIFEST] [--split test] [--baseline atlas] [--gif] [--out DIR]
    python evaluate.py RUN --predict scan1.nii.gz scan2.nrrd --out predictions/

For every run: the agent's search on every case of the split, beside the oracle (greedy on
the true distance: the floor that the finest step sets) and optionally a baseline (landmarks:
register training volumes to each test volume with SimpleITK and carry their landmarks;
registration: SimpleITK, elastix). Writes metrics.json, a CSV of every result, metrics.md and
PNG plots; several landmark runs (training seeds) are summarised as mean +- std. Bad input
prints one line (``evaluate.py: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.experiments import (
    ConfigError,
    evaluate_landmark_runs,
    evaluate_registration_run,
    open_run,
    predict,
)
from agents.networks import set_torch_threads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate medgym runs in mm on held-out volumes.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folder(s) made by train.py")
    parser.add_argument("--data", type=Path, help="manifest to evaluate on (default: the run's own data)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument(
        "--baseline",
        action="append",
        choices=("atlas", "sitk", "sitk-presearch", "elastix"),
        help="also run a baseline: atlas (landmark task); sitk, sitk-presearch, elastix (rigid: "
        "SimpleITK VersorRigid3D + Mattes MI, optionally after an exhaustive rotation search, or "
        "elastix); sitk (sdm: SimpleITK B-spline). Repeat for several",
    )
    parser.add_argument(
        "--misalignments",
        type=float,
        nargs="+",
        default=[15.0, 30.0, 45.0, 60.0],
        metavar="X",
        help="rigid: initial misalignments, uniform +-X mm and +-X deg per parameter",
    )
    parser.add_argument("--trials", type=int, default=20, help="rigid: registrations per setting")
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=["mono", "multimodal", "partial"],
        choices=("mono", "multimodal", "partial"),
        help="rigid: moved copy as is, re-contrasted, or cropped to a 40-70%% slab",
    )
    parser.add_argument("--png", type=int, default=3, help="registration tasks: before/after PNGs to write")
    parser.add_argument(
        "--refine",
        action="store_true",
        help="rigid: also report the agent's answer polished by a short SimpleITK optimisation "
        "(agent+sitk), whatever the run's search.refine says",
    )
    parser.add_argument(
        "--register",
        nargs="+",
        type=Path,
        metavar="VOLUME",
        help="registration tasks: register MOVING to FIXED (rigid: two files; sdm: the fixed only) and "
        "write the transform, warped volume and trajectory to --out",
    )
    parser.add_argument(
        "--atlases",
        type=int,
        default=3,
        help="training volumes registered per test volume by --baseline atlas (median)",
    )
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF of one search")
    parser.add_argument("--out", type=Path, help="output folder (default RUN/eval-SPLIT)")
    parser.add_argument(
        "--predict",
        nargs="+",
        type=Path,
        metavar="VOLUME",
        help="write predicted landmarks (.fcsv, .mrk.json) for these volumes instead",
    )
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> int:
    runs = [open_run(path) for path in args.runs]
    # registration runs (rigid, sdm): one at a time
    if any(run.experiment.task != "landmark" for run in runs):
        if len(runs) != 1:
            raise ValueError("registration runs are evaluated one at a time; pass one run folder")
        return evaluate_registration_run(
            runs[0],
            data=args.data,
            split=args.split,
            baselines=args.baseline or [],
            misalignments=args.misalignments,
            trials=args.trials,
            conditions=args.conditions,
            png=args.png,
            refine=args.refine,
            register_volumes=args.register,
            out=args.out,
        )
    # landmark runs: checked before anything is computed
    if args.baseline and any(b != "atlas" for b in args.baseline):
        raise ValueError("--baseline: the landmark task offers 'atlas' only")
    for run in runs:
        run.landmark_names()
        run.policy_path()
    if args.predict:
        if len(runs) != 1:
            raise ValueError("--predict takes exactly one run folder")
        out = args.out or runs[0].path / "predictions"
        written = predict(runs[0], args.predict, out)
        print(f"evaluate.py: wrote {len(written)} landmark files to {out}")
        return 0
    return evaluate_landmark_runs(
        runs,
        data=args.data,
        split=args.split,
        baseline="atlas" if args.baseline else None,
        atlases=args.atlases,
        gif=args.gif,
        out=args.out,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        set_torch_threads(1)
        return evaluate(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"evaluate.py: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
