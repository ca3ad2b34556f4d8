"""Evaluate landmark-detection and registration runs in millimetres on held-out volumes.

    python evaluate.py runs/rigid_phantom-... [--baseline sitk --baseline elastix]
        [--misalignments 15 30 45 60] [--trials 20] [--conditions mono multimodal partial]
    python evaluate.py runs/sdm_phantom-... [--baseline sitk]
    python evaluate.py RUN --register fixed.nii.gz moving.nrrd --out registered/

    python evaluate.py runs/landmark_phantom-20261125-101500 [more runs ...]
        [--data MANIFEST] [--split test] [--baseline atlas] [--gif] [--out DIR]
    python evaluate.py runs/landmark_phantom-sweep-20261125-101500     (a sweep: its finished trials)
    python evaluate.py RUN_SEED0 RUN_SEED1 RUN_SEED2 --ensemble [--register ... | --predict ...]
    python evaluate.py RUN --predict scan1.nii.gz scan2.nrrd --out predictions/
    python evaluate.py RUN --predict scans/ manifest.csv --workers 8 [--ray-address auto]

    python evaluate.py runs/custom_env-... [more runs ...] [--episodes 50] [--out DIR]

For every run: the agent's search on every case of the split, beside the oracle (greedy on
the true distance: the floor that the finest step sets) and optionally a baseline (landmarks:
register training volumes to each test volume with SimpleITK and carry their landmarks;
registration: SimpleITK, elastix). Writes metrics.json, a CSV of every result, metrics.md and
PNG plots; several landmark runs (training seeds) are summarised as mean +- std, or, with
``--ensemble``, searched as one agent (landmark and rigid runs: their Q-values averaged). A ``task: custom``
run (any Gymnasium env) is scored by seeded episodes of its greedy policy: return, and the final
``distance_mm`` / ``tre_mm`` and success where the env's info has them (episodes.csv). Bad input
prints one line (``evaluate.py: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from agents.checkpoints import read_checkpoint
from agents.experiments import (
    ConfigError,
    Run,
    apply_overrides,
    ensemble_of,
    evaluate_custom_runs,
    evaluate_landmark_runs,
    evaluate_registration_run,
    experiment_from_mapping,
    open_run,
    predict,
    to_mapping,
)
from agents.experiments.predict import prediction_inputs
from agents.experiments.runs import handle_sigterm
from agents.experiments.sweep import expand_run_folders
from agents.networks import set_torch_threads
from envs.io import check_output_folder
from envs.io.cli import OneLineArgumentParser, print_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="evaluate.py", description="Evaluate medgym runs in mm on held-out volumes."
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run folder(s) made by train.py; a sweep folder means its trials"
    )
    parser.add_argument("--data", type=Path, help="manifest to evaluate on (default: the run's own data)")
    parser.add_argument("--split", choices=("train", "val", "test"), help="split to evaluate (default test)")
    parser.add_argument(
        "--baseline",
        action="append",
        choices=("atlas", "sitk", "sitk-presearch", "sitk-moments", "elastix"),
        help="also run a baseline: atlas (landmark task); sitk, sitk-presearch, sitk-moments, elastix "
        "(rigid: SimpleITK VersorRigid3D + Mattes MI from the start, optionally after an exhaustive "
        "rotation search, or from its moments initialisation; or elastix); sitk (sdm: SimpleITK "
        "B-spline). Repeat for several",
    )
    parser.add_argument(
        "--misalignments",
        type=float,
        nargs="+",
        metavar="X",
        help="rigid: initial misalignments, uniform +-X mm and +-X deg per parameter (default 15 30 45 60)",
    )
    parser.add_argument("--trials", type=int, help="rigid: registrations per setting (default 20)")
    parser.add_argument(
        "--conditions",
        nargs="+",
        choices=("mono", "multimodal", "partial"),
        help="rigid: moved copy as is, re-contrasted, or cropped to a 40-70%% slab (default: all three)",
    )
    parser.add_argument("--png", type=int, help="registration tasks: before/after PNGs to write (default 3)")
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
        help="landmark task: training volumes registered per test volume by --baseline atlas (default 3)",
    )
    parser.add_argument(
        "--search",
        action="append",
        metavar="KEY=VALUE",
        help="evaluate with this search setting instead of the run's (landmark: e.g. starts=5, "
        "shape_check=true, see SearchConfig; rigid: e.g. symmetric=true, refine=sitk, see AlignConfig); "
        "repeat for several. The run folder is not changed",
    )
    parser.add_argument(
        "--gif", action="store_true", help="landmark task: also write an animated GIF of one search"
    )
    parser.add_argument(
        "--episodes", type=int, help="custom task: episodes per run (default: the run's evaluate.episodes)"
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="landmark and rigid runs: search with the runs as one agent, averaging their networks' "
        "Q-values at every step (runs of one config, e.g. other seeds); the first run gives the search "
        "settings and data. Outputs go to RUN/eval-SPLIT-ensemble (predictions-ensemble, "
        "registrations-ensemble)",
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default RUN/eval-SPLIT; custom: RUN/eval; see --ensemble)"
    )
    parser.add_argument(
        "--predict",
        nargs="+",
        type=Path,
        metavar="VOLUME",
        help="landmark task: write predicted landmarks (.fcsv, .mrk.json per scan, predictions.csv) for "
        "these volume files, DICOM series folders, folders of scans or manifests instead",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="--predict: Ray tasks at once (with medgym[ray]; default 1: in this process)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="--predict: run the tasks on this Ray cluster (auto, HOST:6379, ray://HOST:10001)",
    )
    return parser.parse_args(argv)


# Flags that only one kind of run reads: given for the other kind, they are refused.
REGISTRATION_ONLY = ("register", "misalignments", "trials", "conditions", "png", "refine")
LANDMARK_ONLY = ("predict", "gif", "atlases", "workers", "ray_address")
CUSTOM_ONLY = ("episodes",)
# What a custom run reads: its own env config; the data and method flags are the medgym tasks'.
NOT_CUSTOM = (*REGISTRATION_ONLY, *LANDMARK_ONLY, "data", "split", "baseline", "ensemble", "search")
# Flags that a --predict / --register call does not read (it works on the given files only).
EVALUATION_ONLY = (
    "data",
    "split",
    "baseline",
    "misalignments",
    "trials",
    "conditions",
    "png",
    "gif",
    "atlases",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [_flag(name) for name in names if getattr(args, name) not in (None, False)]


def check_flags(args: argparse.Namespace, task: str) -> None:
    """Refuse flags that the runs' task, or the chosen mode (--predict, --register), does not read."""
    if task == "custom":
        wrong = _given(args, NOT_CUSTOM)
        if wrong:
            raise ValueError(
                f"{wrong[0]} does not apply to custom runs (scored by episodes): drop {wrong[0]}"
            )
        if args.episodes is not None and args.episodes < 1:
            raise ValueError(f"--episodes: expected >= 1, got {args.episodes}")
        return
    wrong = _given(args, CUSTOM_ONLY)
    if wrong:
        raise ValueError(f"{wrong[0]} applies to custom runs only; this is a {task} run: drop {wrong[0]}")
    registration = task != "landmark"
    wrong = _given(args, LANDMARK_ONLY if registration else REGISTRATION_ONLY)
    if wrong:
        kind = "landmark" if registration else "registration (rigid, sdm)"
        raise ValueError(f"{wrong[0]} applies to {kind} runs only; this is a {task} run: drop {wrong[0]}")
    for mode in ("predict", "register"):
        if getattr(args, mode):
            extra = _given(args, EVALUATION_ONLY)
            if extra:
                raise ValueError(f"{extra[0]} does not apply to --{mode}, which reads only the given files")
    if not args.predict and (args.workers is not None or args.ray_address is not None):
        flag = "--workers" if args.workers is not None else "--ray-address"
        raise ValueError(f"{flag} applies to --predict only")
    for name, low in (("trials", 1), ("png", 0), ("atlases", 1), ("workers", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"{_flag(name)}: expected >= {low}, got {value}")


def _each_once(runs: list) -> None:
    """Refuse a run folder given twice (e.g. a sweep folder and one of its trials): mean +- std would
    count it twice."""
    seen: dict = {}
    for run in runs:
        key = run.path.resolve()
        if key in seen:
            raise ValueError(
                f"run folder {run.path} is given twice (as {seen[key]}; a sweep folder means its trials); "
                "pass each run once"
            )
        seen[key] = run.path


def with_search(run: Run, settings: list[str]) -> Run:
    """The run with ``search.KEY=VALUE`` settings applied (in memory; its folder is unchanged)."""
    mapping = apply_overrides(to_mapping(run.experiment), [f"search.{setting}" for setting in settings])
    return dataclasses.replace(run, experiment=experiment_from_mapping(mapping))


def evaluate(args: argparse.Namespace) -> int:
    runs = [open_run(path) for path in expand_run_folders(args.runs)]
    tasks = sorted({run.experiment.task for run in runs})
    if len(tasks) > 1:
        raise ValueError(f"the runs mix tasks {tasks}; evaluate runs of one task at a time")
    check_flags(args, tasks[0])
    if args.search:
        runs = [with_search(run, args.search) for run in runs]
    for run in runs:  # a damaged checkpoint is named now, before any folder is made
        read_checkpoint(run.policy_path(), "evaluate.py")
    if args.ensemble:  # one agent: the first run, the others its members
        _each_once(runs)
        runs = [ensemble_of(runs)]
    if args.out is not None:
        check_output_folder(args.out)
    if tasks[0] == "custom":
        _each_once(runs)
        return evaluate_custom_runs(runs, episodes=args.episodes, out=args.out)
    split = args.split or "test"
    # registration runs (rigid, sdm): one at a time
    if tasks[0] != "landmark":
        if len(runs) != 1:
            raise ValueError("registration runs are evaluated one at a time; pass one run folder")
        return evaluate_registration_run(
            runs[0],
            data=args.data,
            split=split,
            baselines=args.baseline or [],
            misalignments=args.misalignments or [15.0, 30.0, 45.0, 60.0],
            trials=20 if args.trials is None else args.trials,
            conditions=args.conditions or ["mono", "multimodal", "partial"],
            png=3 if args.png is None else args.png,
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
        out = args.out or runs[0].path / ("predictions-ensemble" if runs[0].members else "predictions")
        scans = prediction_inputs(args.predict)
        written = predict(runs[0], scans, out, workers=args.workers or 1, ray_address=args.ray_address)
        listing = ", ".join(str(path.relative_to(out)) for path in written) or "nothing"
        if len(written) > 21:
            listing = f"{written[0].relative_to(out)} ... {written[-1].relative_to(out)}"
        print(f"evaluate.py: {len(scans)} scans; wrote {len(written)} files to {out}: {listing}")
        return 0
    _each_once(runs)
    return evaluate_landmark_runs(
        runs,
        data=args.data,
        split=split,
        baseline="atlas" if args.baseline else None,
        atlases=3 if args.atlases is None else args.atlases,
        gif=args.gif,
        out=args.out,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = handle_sigterm()  # a killed evaluation removes the output folder it made, as on an error
    try:
        set_torch_threads(1)
        return evaluate(args)
    except (ConfigError, ValueError, OSError, KeyError) as error:
        return print_error("evaluate.py", error)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
