"""Evaluate landmark-detection and registration runs in millimetres on held-out volumes.

    python evaluate.py runs/rigid_phantom-... [--baseline sitk --baseline elastix]
        [--misalignments 15 30 45 60] [--trials 20] [--conditions mono multimodal partial]
    python evaluate.py runs/sdm_phantom-... [--baseline sitk]
    python evaluate.py RUN --register fixed.nii.gz moving.nrrd --out registered/

    python evaluate.py runs/landmark_phantom-20261125-101500 [more runs ...]
        [--data MANIFEST] [--split test] [--baseline atlas] [--gif] [--out DIR]
    python evaluate.py RUN --predict scan1.nii.gz scan2.nrrd --out predictions/

For every run: the agent's search on every case of the split, beside the oracle (greedy on
the true distance: the floor that the finest step sets) and optionally the atlas baseline
(register training volumes to each test volume with SimpleITK and carry their landmarks).
Writes metrics.json, errors.csv, metrics.md and PNG plots; several runs (training seeds)
are summarised as mean +- std.
"""

from __future__ import annotations

import argparse
import csv
import io as text_io
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.dqn import load_policy, set_torch_threads
from agents.experiments import ConfigError, LandmarkExperiment, Run, atomic_write_text, open_run
from agents.search import Detection, OraclePolicy, QNetworkPolicy, detect_landmarks, scored_detections
from envs import io
from envs.data import Case, Dataset
from envs.tasks import LandmarkWorld

__all__ = ["compute_metrics", "main"]

WITHIN_MM = (2.0, 4.0, 8.0)
MISS_MM = 10.0


def compute_metrics(errors_mm: list[float], found: list[bool], seconds: list[float]) -> dict[str, float]:
    """Summary of one method's errors: an undetected landmark counts as a miss, not as an error.

    Example:
        >>> m = compute_metrics([1.0, 2.0, 3.0, 30.0], [True] * 4, [0.01] * 4)
        >>> m["median_mm"], m["misses"], m["within_2mm"]
        (2.5, 1, 0.5)
    """
    values = np.array([e for e, f in zip(errors_mm, found, strict=True) if f], dtype=np.float64)
    total = len(errors_mm)
    not_found = total - len(values)
    nan = float("nan")
    metrics: dict[str, float] = {
        "n": total,
        "mean_mm": float(values.mean()) if values.size else nan,
        "std_mm": float(values.std()) if values.size else nan,
        "median_mm": float(np.median(values)) if values.size else nan,
        "p95_mm": float(np.percentile(values, 95)) if values.size else nan,
        "max_mm": float(values.max()) if values.size else nan,
        "not_found": not_found,
        "misses": int(np.sum(values > MISS_MM)) + not_found,
        "ms_per_landmark": 1000.0 * float(np.mean(seconds)) if seconds else nan,
    }
    for limit in WITHIN_MM:
        metrics[f"within_{limit:g}mm"] = float(np.sum(values <= limit)) / max(total, 1)
    return metrics


def _dataset_for(run: Run, data: Path | None) -> Dataset:
    if data is not None:
        return Dataset.from_manifest(data)
    from train import prepare_dataset

    return prepare_dataset(run.experiment)


def _world(experiment: LandmarkExperiment, dataset: Dataset, split: str, names: list[str]) -> LandmarkWorld:
    from train import make_world

    return make_world(experiment, dataset, split, augment=False, landmarks=names)


def _check_landmarks(run: Run, dataset: Dataset, split: str, names: list[str]) -> None:
    available = set(dataset.landmark_names([split]))
    missing = [name for name in names if name not in available]
    if len(missing) == len(names):
        raise ValueError(
            f"run {run.path}: the model was trained on landmarks {names}, but split {split!r} of "
            f"{dataset.source} has {sorted(available)}; evaluate with data annotated for this model"
        )
    if missing:
        print(
            f"evaluate.py: note: {missing} not annotated in {split!r}; they are searched but not scored",
            file=sys.stderr,
        )


def evaluate_run(
    run: Run, dataset: Dataset, split: str, baseline: str | None, out: Path, gif: bool, atlases: int = 3
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Errors of agent, oracle (and baseline) on every case of ``split``; returns metrics and rows."""
    experiment = run.experiment
    names = run.landmark_names()
    _check_landmarks(run, dataset, split, names)
    world = _world(experiment, dataset, split, names)
    policy = load_policy(run.policy_path(), (world.observation_space(), _action_space()))
    methods: dict[str, Any] = {"agent": QNetworkPolicy(policy), "oracle": OraclePolicy()}
    rows: list[dict[str, Any]] = []
    from tqdm import tqdm

    first_detections: dict[str, Detection] | None = None
    for index in tqdm(range(world.n_variants), desc=f"evaluate {run.path.name}", unit="case"):
        variant = world.variant(index)
        for method, policy_fn in methods.items():
            detections = detect_landmarks(world, variant, policy_fn, config=experiment.search, seed=index)
            if method == "agent" and first_detections is None:
                first_detections = detections
                _plot_trajectories(world, variant, detections, out / "trajectories.png", gif)
            rows.extend(_rows(run, variant, names, method, detections))
        if baseline == "atlas":
            rows.extend(_atlas_rows(run, dataset, variant, names, atlases))
    metrics = _metrics_from_rows(rows)
    return metrics, rows


def _action_space() -> Any:
    from gymnasium import spaces

    return spaces.Discrete(6)


def _rows(
    run: Run, variant: Any, names: list[str], method: str, detections: dict[str, Detection]
) -> list[dict[str, Any]]:
    rows = []
    for name, truth, detection, error, found in scored_detections(
        names, variant.landmarks_lps_mm, detections
    ):
        position = detection.position_lps_mm
        rows.append(
            {
                "run": run.path.name,
                "case": variant.case_id,
                "landmark": name,
                "method": method,
                "error_mm": error,
                "found": found,
                "confidence": detection.confidence,
                "seconds": detection.seconds,
                "x_lps": position[0],
                "y_lps": position[1],
                "z_lps": position[2],
                "true_x_lps": truth[0],
                "true_y_lps": truth[1],
                "true_z_lps": truth[2],
            }
        )
    return rows


def _atlas_rows(
    run: Run, dataset: Dataset, variant: Any, names: list[str], count: int
) -> list[dict[str, Any]]:
    from agents.baselines import multi_atlas_transfer

    atlases = []
    for case in dataset.split("train")[:count]:
        subject = dataset.load(case)
        atlases.append((subject.volume, {n: p for n, p in subject.landmarks.items() if n in names}))
    target = dataset.load(variant.case_id).volume
    result = multi_atlas_transfer(atlases, target)
    detections = {}
    for name in names:
        point = result.landmarks.get(name, np.full(3, np.nan))
        detections[name] = Detection(
            name,
            np.asarray(point, dtype=float),
            not np.isnan(point[0]),
            1.0,
            0,
            result.seconds / max(len(names), 1),
            np.zeros((0, 3)),
            [],
        )
    return _rows(run, variant, names, "atlas", detections)


def _metrics_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["method"], row["landmark"])].append(row)
        grouped[(row["method"], "all")].append(row)
    metrics: dict[str, Any] = defaultdict(dict)
    for (method, landmark), items in grouped.items():
        metrics[method][landmark] = compute_metrics(
            [r["error_mm"] for r in items], [r["found"] for r in items], [r["seconds"] for r in items]
        )
    return dict(metrics)


def _markdown(metrics: dict[str, Any], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "Errors over the landmarks each method found; a landmark not found counts as a miss "
        f"(misses: not found, or error > {MISS_MM:g} mm).",
        "",
        "| method | landmark | n | mean ± std (mm) | median | p95 | max "
        "| ≤2 mm | ≤4 mm | ≤8 mm | misses | ms/landmark |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, per_landmark in metrics.items():
        for landmark in sorted(per_landmark, key=lambda n: (n == "all", n)):
            m = per_landmark[landmark]
            lines.append(
                f"| {method} | {'**all**' if landmark == 'all' else landmark} | {m['n']} | "
                f"{m['mean_mm']:.2f} ± {m['std_mm']:.2f} | {m['median_mm']:.2f} | {m['p95_mm']:.2f} | "
                f"{m['max_mm']:.2f} | {m['within_2mm']:.0%} | {m['within_4mm']:.0%} | "
                f"{m['within_8mm']:.0%} | "
                f"{m['misses']} | {m['ms_per_landmark']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = text_io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _plot_errors(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    methods = sorted(
        {r["method"] for r in rows},
        key=lambda m: ("agent", "oracle", "atlas").index(m) if m in ("agent", "oracle", "atlas") else 9,
    )
    landmarks = sorted({r["landmark"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(landmarks) + 2), 4.2))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        # Clipped at 0.25 mm for the log axis (sub-voxel differences are not the point here).
        data = [
            [
                max(r["error_mm"], 0.25)
                for r in rows
                if r["method"] == method and r["landmark"] == lm and r["found"]
            ]
            or [np.nan]
            for lm in landmarks
        ]
        positions = np.arange(len(landmarks)) + (k - (len(methods) - 1) / 2) * width
        parts = ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=True,
            manage_ticks=False,
        )
        for box in parts["boxes"]:
            box.set_facecolor(f"C{k}")
            box.set_alpha(0.6)
        ax.plot([], [], color=f"C{k}", linewidth=6, alpha=0.6, label=method)
    ax.set_xticks(np.arange(len(landmarks)), landmarks, rotation=30, ha="right")
    ax.set_ylabel("error (mm, log scale)")
    ax.set_yscale("log")
    ticks = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(0.2, max(4.0, 1.3 * max((r["error_mm"] for r in rows if r["found"]), default=4.0)))
    ax.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title("Landmark error per landmark on held-out cases")
    ax.legend(loc="upper left")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig: Any, path: Path) -> None:
    buffer = text_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(buffer.getvalue())
    temp.replace(path)


def _plot_trajectories(
    world: LandmarkWorld, variant: Any, detections: dict[str, Detection], path: Path, gif: bool
) -> None:
    """Search paths of every landmark on three orthogonal maximum-intensity views of the finest level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = variant.pyramid.levels[-1]
    voxels = level.voxels
    views = [
        ("axial (z)", voxels.max(axis=0), (0, 1)),
        ("coronal (y)", voxels.max(axis=1)[::-1], (0, 2)),
        ("sagittal (x)", voxels.max(axis=2)[::-1], (1, 2)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    n_z = voxels.shape[0]
    for ax, (title, image, _) in zip(axes, views, strict=True):
        ax.imshow(image, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    for k, (name, detection) in enumerate(detections.items()):
        color = f"C{k % 10}"
        truth = variant.landmarks_lps_mm[world.landmark_names.index(name)]
        for path_lps in detection.trajectories_lps_mm:
            if len(path_lps) == 0:
                continue
            zyx = level.lps_to_index(path_lps)[:, ::-1]
            axes[0].plot(zyx[:, 2], zyx[:, 1], color=color, linewidth=0.9)
            axes[1].plot(zyx[:, 2], n_z - 1 - zyx[:, 0], color=color, linewidth=0.9)
            axes[2].plot(zyx[:, 1], n_z - 1 - zyx[:, 0], color=color, linewidth=0.9)
        if not np.isnan(truth[0]):
            t = level.lps_to_index(truth)[::-1]
            axes[0].plot(t[2], t[1], "x", color=color, markersize=7, label=name)
            axes[1].plot(t[2], n_z - 1 - t[0], "x", color=color, markersize=7)
            axes[2].plot(t[1], n_z - 1 - t[0], "x", color=color, markersize=7)
    axes[0].legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle(f"{variant.case_id}: search paths (lines) and true landmarks (x)")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    if gif:
        _write_gif(world, variant, detections, path.with_suffix(".gif"))


def _write_gif(world: LandmarkWorld, variant: Any, detections: dict[str, Detection], path: Path) -> None:
    """The first landmark's search as orthogonal slices, frame by frame."""
    from PIL import Image

    from envs.render import orthogonal_slices

    name, detection = next(iter(detections.items()))
    if not detection.trajectories_lps_mm:
        return
    trajectory = detection.trajectories_lps_mm[0]
    level = variant.pyramid.levels[-1]
    truth = variant.landmarks_lps_mm[world.landmark_names.index(name)]
    frames = [
        Image.fromarray(orthogonal_slices(level, point, trajectory[: i + 1], truth))
        for i, point in enumerate(trajectory)
    ]
    temp = path.with_name(f".{path.name}.tmp")
    frames[0].save(temp, format="GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)
    temp.replace(path)


def predict(run: Run, volumes: list[Path], out: Path) -> list[Path]:
    """Detect the run's landmarks on unlabelled volumes and write .fcsv and .mrk.json for 3D Slicer."""
    names = run.landmark_names()
    cases = [Case(f"predict_{i:03d}_{_stem(path)}", "test", image=path) for i, path in enumerate(volumes)]
    for path in volumes:
        if not path.exists():
            raise FileNotFoundError(f"--predict {path}: file not found")
    dataset = Dataset(cases, source="--predict volumes")
    world = _world(run.experiment, dataset, "test", names)
    policy = QNetworkPolicy(load_policy(run.policy_path(), (world.observation_space(), _action_space())))
    written = []
    for index, path in enumerate(volumes):
        variant = world.variant(index)
        detections = detect_landmarks(world, variant, policy, config=run.experiment.search, seed=index)
        points = {name: d.position_lps_mm for name, d in detections.items() if d.found}
        if not points:
            print(f"evaluate.py: {path}: no landmark found in the field of view", file=sys.stderr)
            continue
        for suffix in (".fcsv", ".mrk.json"):
            written.append(io.write_landmarks(points, out / f"{_stem(path)}{suffix}"))
        for name, d in detections.items():
            state = "found" if d.found else "NOT FOUND"
            print(
                f"{_stem(path)}: {name}: {state} at LPS {np.round(d.position_lps_mm, 1).tolist()} "
                f"(confidence {d.confidence:.2f})"
            )
    return written


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _summarise_runs(per_run: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std over runs of the overall figures, per method."""
    summary: dict[str, Any] = {}
    methods = {m for metrics in per_run.values() for m in metrics}
    for method in sorted(methods):
        figures = defaultdict(list)
        for metrics in per_run.values():
            if method in metrics:
                for key, value in metrics[method]["all"].items():
                    figures[key].append(value)
        summary[method] = {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": len(v)}
            for key, v in figures.items()
        }
    return summary


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    try:
        set_torch_threads(1)
        return _run(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"evaluate.py: error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    runs = [open_run(path) for path in args.runs]
    if any(run.experiment.task != "landmark" for run in runs):
        if len(runs) != 1:
            raise ValueError("registration runs are evaluated one at a time; pass one run folder")
        return _run_alignment(args, runs[0])
    if args.baseline and any(b != "atlas" for b in args.baseline):
        raise ValueError("--baseline: the landmark task offers 'atlas' only")
    args.baseline = "atlas" if args.baseline else None
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
    per_run: dict[str, dict[str, Any]] = {}
    markdown = []
    for run in runs:
        began = time.perf_counter()
        dataset = _dataset_for(run, args.data)
        if not dataset.split(args.split):
            raise ValueError(
                f"{dataset.source}: split {args.split!r} has no cases; choose --split train/val/test"
            )
        out = (
            args.out / run.path.name
            if args.out and len(runs) > 1
            else (args.out or run.path / f"eval-{args.split}")
        )
        out.mkdir(parents=True, exist_ok=True)
        if args.atlases < 1:
            raise ValueError(f"--atlases: expected >= 1, got {args.atlases}")
        metrics, rows = evaluate_run(run, dataset, args.split, args.baseline, out, args.gif, args.atlases)
        per_run[f"{len(per_run)}:{run.path}"] = metrics
        _write_csv(out / "errors.csv", rows)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        table = _markdown(metrics, f"{run.path.name}: split {args.split} ({dataset.source})")
        atomic_write_text(out / "metrics.md", table)
        _plot_errors(rows, out / "errors_per_landmark.png")
        markdown.append(table)
        print(table)
        print(
            f"evaluate.py: {time.perf_counter() - began:.0f} s; wrote {out}/metrics.json, errors.csv, "
            f"metrics.md, errors_per_landmark.png, trajectories.png"
            + (", trajectories.gif" if args.gif else "")
        )
    if len(runs) > 1:
        summary = _summarise_runs(per_run)
        target = args.out or runs[0].path.parent
        atomic_write_text(Path(target) / "summary_over_runs.json", json.dumps(summary, indent=2) + "\n")
        print(f"### mean ± std over {len(runs)} runs")
        for method, figures in summary.items():
            med, p95 = figures["median_mm"], figures["p95_mm"]
            print(
                f"{method}: median {med['mean']:.2f} ± {med['std']:.2f} mm, p95 {p95['mean']:.2f} ± "
                f"{p95['std']:.2f} mm"
            )
    return 0


def _run_alignment(args: argparse.Namespace, run: Run) -> int:
    """Registration runs: TRE before/after, success, time, Dice; baselines side by side."""
    from agents.experiments import (
        RigidExperiment,
        evaluate_rigid,
        evaluate_sdm,
        make_alignment_world,
        markdown_table,
        overlay_png,
        plot_success,
        prepare_sdm,
    )

    experiment = run.experiment
    if args.refine:
        if not isinstance(experiment, RigidExperiment):
            raise ValueError("--refine: only rigid runs can be refined")
        experiment = replace(experiment, search=replace(experiment.search, refine="sitk"))
    if args.trials < 1:
        raise ValueError(f"--trials: expected >= 1, got {args.trials}")
    if any(not 0 <= m <= 180 for m in args.misalignments):
        raise ValueError(
            f"--misalignments: expected values in 0..180 (mm and degrees), got {args.misalignments}"
        )
    baselines = [b for b in (args.baseline or []) if b]
    if "atlas" in baselines:
        raise ValueError("--baseline atlas is for landmark runs; use sitk, sitk-presearch or elastix")
    if "elastix" in baselines:
        import importlib.util

        if importlib.util.find_spec("itk") is None:
            raise ValueError(
                "--baseline elastix: the itk-elastix package is not installed; "
                "pip install itk-elastix==0.25.4"
            )
    policy_path = run.policy_path()
    if args.register and args.data is None:
        # Registering given files needs the run's settings, not its data set: a lazy phantom
        # stands in (never generated) so that nothing is written or loaded.
        dataset = Dataset.phantoms(1, 0, 0)
    else:
        dataset = _dataset_for(run, args.data)
    bundle = (
        None
        if isinstance(experiment, RigidExperiment)
        else prepare_sdm(experiment, dataset, run.path / "sdm.npz")
    )
    if args.register:
        return _register_files(args, run, experiment, policy_path, dataset, bundle)
    if not dataset.split(args.split):
        raise ValueError(
            f"{dataset.source}: split {args.split!r} has no cases; choose --split train/val/test"
        )
    world = make_alignment_world(experiment, dataset, args.split, training=False, bundle=bundle)
    from gymnasium import spaces

    policy = load_policy(policy_path, (world.observation_space(), spaces.Discrete(world.n_actions)))
    out = args.out or run.path / f"eval-{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    pictures: list[Path] = []

    def on_result(condition: str, world: Any, pair: Any, result: Any) -> None:
        if len(pictures) < args.png:
            pictures.append(
                overlay_png(world, pair, result, out / f"overlay_{condition}_{len(pictures)}.png")
            )

    began = time.perf_counter()
    if isinstance(experiment, RigidExperiment):
        metrics, rows = evaluate_rigid(
            experiment,
            policy,
            dataset,
            args.split,
            misalignments=args.misalignments,
            trials=args.trials,
            conditions=args.conditions,
            baselines=baselines,
            on_result=on_result,
        )
    else:
        metrics, rows = evaluate_sdm(
            experiment, policy, dataset, args.split, bundle, baselines=baselines, on_result=on_result
        )
    _write_csv(out / "registrations.csv", rows)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    table = markdown_table(metrics, f"{run.path.name}: split {args.split} ({dataset.source})")
    atomic_write_text(out / "metrics.md", table)
    plot = plot_success(metrics, out / "success_vs_misalignment.png")
    print(table)
    written = ["metrics.json", "registrations.csv", "metrics.md"] + ([plot.name] if plot else [])
    written += [p.name for p in pictures]
    print(f"evaluate.py: {time.perf_counter() - began:.0f} s; wrote {out}/ {', '.join(written)}")
    return 0


def _register_files(
    args: argparse.Namespace, run: Run, experiment: Any, policy_path: Path, dataset: Dataset, bundle: Any
) -> int:
    from gymnasium import spaces

    from agents.experiments import RigidExperiment, make_alignment_world
    from agents.search import register, write_registration

    world = make_alignment_world(experiment, dataset, "train", training=False, bundle=bundle)
    policy = QNetworkPolicy(
        load_policy(policy_path, (world.observation_space(), spaces.Discrete(world.n_actions)))
    )
    rigid = isinstance(experiment, RigidExperiment)
    expected = 2 if rigid else 1
    if len(args.register) != expected:
        raise ValueError(
            f"--register: expected {'FIXED MOVING' if rigid else 'FIXED'} ({expected} file(s)), "
            f"got {len(args.register)}"
        )
    fixed = io.read_volume(args.register[0])
    moving = io.read_volume(args.register[1]) if rigid else None
    answer, result = register(fixed, moving, policy, world)
    out = args.out or run.path / "registrations" / _stem(args.register[0])
    written = write_registration(
        out,
        fixed,
        moving if rigid else world.atlas,
        answer,
        result,
        param_names=world.param_names,
        labels=None if rigid else world.atlas_labels,
    )
    print(
        f"evaluate.py: registered in {result.seconds:.2f} s ({result.steps} steps); "
        f"wrote {', '.join(str(p) for p in written.values())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
