"""What evaluations write: CSV and Markdown tables, PNG plots, the search GIF, output file names.

Every file goes through :mod:`envs.io.atomic` (figures via ``atomic_path``). Landmark points
are LPS millimetres; plots draw on the finest pyramid level's voxel grid.
"""

from __future__ import annotations

import csv
import io as text_io
import os
from pathlib import Path
from typing import Any

import numpy as np

from agents.experiments.metrics import CONFIDENCE_THRESHOLDS, MISS_MM
from agents.search import Alignment, Detection
from envs.io.atomic import atomic_path, atomic_write_text
from envs.tasks import UNIT, AlignmentPair, AlignmentWorld, LandmarkWorld

__all__ = [
    "landmark_markdown",
    "markdown_table",
    "overlay_png",
    "plot_errors",
    "plot_success",
    "plot_trajectories",
    "prediction_stems",
    "volume_stem",
    "write_csv",
    "write_gif",
]


def volume_stem(path: Path) -> str:
    """A volume's file name without its image suffix (``ct.nii.gz`` -> ``ct``)."""
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def prediction_stems(volumes: list[Path]) -> list[str]:
    """One output name (without suffix) per input volume, never two alike.

    File stems when they differ (``ct.nii.gz`` -> ``ct``); otherwise the inputs' folders below
    their common folder are kept (``a/ct.nii.gz``, ``b/ct.nii.gz`` -> ``a/ct``, ``b/ct``).
    The same file given twice raises ``ValueError``.
    """
    resolved = [Path(os.path.abspath(p)) for p in volumes]
    seen: dict[Path, Path] = {}
    for given, path in zip(volumes, resolved, strict=True):
        if path in seen:
            raise ValueError(f"--predict {given}: given twice (as {seen[path]}); pass each volume once")
        seen[path] = given
    stems = [volume_stem(p) for p in resolved]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [(p.parent.relative_to(common) / volume_stem(p)).as_posix() for p in resolved]


def run_output_names(runs: list[Path]) -> list[str]:
    """One output folder name per run folder, never two alike: the folder names when they differ,
    else the runs' paths below their common folder.

    >>> run_output_names([Path("/runs/sweepA/s0"), Path("/runs/sweepB/s0")])
    ['sweepA/s0', 'sweepB/s0']
    """
    resolved = [Path(os.path.abspath(p)) for p in runs]
    names = [p.name for p in resolved]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [p.relative_to(common).as_posix() for p in resolved]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (header from the first row; floats with 4 decimals)."""
    buffer = text_io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path, dpi: int) -> Path:
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=dpi)
    return path


# ---------------------------------------------------------------------- landmarks
def landmark_markdown(metrics: dict[str, Any], title: str) -> str:
    """A Markdown table of landmark metrics: one row per method and landmark, "all" last; then a
    table of how well each method's confidence flags its misses (the "all" rows).

    Example:
        >>> from agents.experiments.metrics import compute_metrics
        >>> m = compute_metrics(
        ...     [1.0, 30.0, float("nan")],
        ...     [True, True, False],
        ...     [0.01] * 3,
        ...     confidence=[0.9, 0.2, 0.0],
        ...     present=[True, True, False],
        ... )
        >>> text = landmark_markdown({"agent": {"all": m}}, "demo")
        >>> "| agent | **all** | 2 |" in text, "| agent | 1.00 |" in text
        (True, True)
    """
    lines = [
        f"### {title}",
        "",
        "Errors over the landmarks each method found; a landmark not found counts as a miss "
        f"(misses: not found, or error > {MISS_MM:g} mm). Absent landmarks (not in the scan or "
        "outside its field of view) are scored apart: reported absent (ok) or found (false).",
        "",
        "| method | landmark | n | mean ± std (mm) | median | p95 | max "
        "| ≤2 mm | ≤4 mm | ≤8 mm | misses | absent: ok / false | ms/landmark |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, per_landmark in metrics.items():
        for landmark in sorted(per_landmark, key=lambda n: (n == "all", n)):
            m = per_landmark[landmark]
            absent = f"{m['absent_correct']} / {m['false_detections']}" if m.get("n_absent", 0) else "-"
            errors = (
                f"{m['mean_mm']:.2f} ± {m['std_mm']:.2f} | {m['median_mm']:.2f} | {m['p95_mm']:.2f} | "
                f"{m['max_mm']:.2f} | {m['within_2mm']:.0%} | {m['within_4mm']:.0%} | {m['within_8mm']:.0%}"
                if m["n"]
                else " | ".join(["-"] * 7)  # absent from every case: nothing to measure
            )
            lines.append(
                f"| {method} | {'**all**' if landmark == 'all' else landmark} | {m['n']} | {errors} | "
                f"{m['misses']} | {absent} | {m['ms_per_landmark']:.1f} |"
            )
    lines += [
        "",
        "Confidence as a miss flag (all landmarks present and located): AUROC of the confidence "
        f"separating hits from misses (> {MISS_MM:g} mm; 1 perfect, 0.5 chance, n/a with one class), "
        "and the miss rate among the answers at or above a confidence (share kept).",
        "",
        "| method | AUROC | "
        + " | ".join(f"misses at conf ≥ {t:g} (kept)" for t in CONFIDENCE_THRESHOLDS)
        + " |",
        "|---|---|" + "---|" * len(CONFIDENCE_THRESHOLDS),
    ]
    for method, per_landmark in metrics.items():
        m = per_landmark.get("all", {})
        cells = [_share(m.get("confidence_auroc"), ".2f")]
        for t in CONFIDENCE_THRESHOLDS:
            miss_rate, kept = m.get(f"miss_rate_at_conf_{t:g}"), m.get(f"kept_at_conf_{t:g}")
            cells.append(f"{_share(miss_rate, '.0%')} ({_share(kept, '.0%')})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _share(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``; ``n/a`` for None or NaN."""
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def plot_errors(rows: list[dict[str, Any]], path: Path) -> None:
    """Box plots of the found landmarks' errors (mm, log axis), per landmark and method."""
    plt = _pyplot()
    import matplotlib.ticker

    order = ("agent", "oracle", "atlas")
    methods = sorted({r["method"] for r in rows}, key=lambda m: order.index(m) if m in order else 9)
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
    _save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_trajectories(
    world: LandmarkWorld, variant: Any, detections: dict[str, Detection], path: Path, gif: bool
) -> None:
    """Search paths of every landmark on three orthogonal maximum-intensity views of the finest level.

    With ``gif`` also the first landmark's search as an animated GIF beside it (``.gif``).
    """
    plt = _pyplot()
    level = variant.pyramid.levels[-1]
    voxels = level.voxels
    views = [
        ("axial (z)", voxels.max(axis=0)),
        ("coronal (y)", voxels.max(axis=1)[::-1]),
        ("sagittal (x)", voxels.max(axis=2)[::-1]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    n_z = voxels.shape[0]
    for ax, (title, image) in zip(axes, views, strict=True):
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
    _save_figure(fig, path, dpi=110)
    plt.close(fig)
    if gif:
        write_gif(world, variant, detections, path.with_suffix(".gif"))


def write_gif(world: LandmarkWorld, variant: Any, detections: dict[str, Detection], path: Path) -> None:
    """The first landmark's first search as orthogonal slices, frame by frame."""
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
    with atomic_path(path) as temporary:
        frames[0].save(temporary, format="GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)


# ---------------------------------------------------------------------- registration
_TRE_KEYS = ("before_mean_mm", "mean_mm", "median_mm", "p95_mm")


def _figure(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" for a missing one (NaN, or null read back from JSON)."""
    return "-" if value is None or value != value else format(value, spec)


def markdown_table(metrics: dict[str, Any], title: str) -> str:
    """A Markdown table of registration metrics: one row per method, condition and misalignment."""
    lines = [
        f"### {title}",
        "",
        "| method | condition | misalignment (mm, deg) | n | TRE before mean (mm) | TRE after mean "
        "| median | p95 | success (<2 mm) | median time (s) | Dice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, conditions in metrics.items():
        for condition, by_misalignment in conditions.items():
            for misalignment, m in by_misalignment.items():
                dice = f"{m['dice_mean']:.3f}" if "dice_mean" in m else ""
                # cases without a truth (an SDM case with a label map only) have no TRE: "-"
                mm = {key: _figure(m[key], ".2f") for key in _TRE_KEYS}
                lines.append(
                    f"| {method} | {condition} | {misalignment} | {m['n']} | {mm['before_mean_mm']} | "
                    f"{mm['mean_mm']} | {mm['median_mm']} | {mm['p95_mm']} | "
                    f"{_figure(m['success_rate'], '.0%')} | {_figure(m['median_s'], '.3f')} | {dice} |"
                )
    return "\n".join(lines) + "\n"


def plot_success(metrics: dict[str, Any], path: Path) -> Path | None:
    """Success rate against misalignment, one line per method and condition (PNG); None if nothing to draw."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    drawn = False
    for method, conditions in metrics.items():
        for condition, by_misalignment in conditions.items():
            keys = sorted(by_misalignment, key=float)
            if len(keys) < 2:
                continue
            ax.plot(
                [float(k) for k in keys],
                [100 * by_misalignment[k]["success_rate"] for k in keys],
                marker="o",
                label=f"{method} ({condition})",
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("initial misalignment per parameter (+- mm and deg)")
    ax.set_ylabel("success rate (mean TRE < 2 mm), %")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def overlay_png(world: AlignmentWorld, pair: AlignmentPair, result: Alignment, path: Path) -> Path:
    """Before / after on the coarsest level's grid (the whole body): checkerboards (top) and
    green (fixed) / magenta (moving) overlays (bottom)."""
    plt = _pyplot()
    from envs.render import checkerboard_slices, overlay_slices

    coarsest = 0
    panels = []
    for params in (result.trajectory_params[0], result.trajectory_params[-1]):
        observation = world.observation(pair, coarsest, np.rint(params * UNIT).astype(np.int64))["patch"]
        panels.append((checkerboard_slices(observation[0], observation[1]), overlay_slices(*observation)))
    fig, axes = plt.subplots(2, 2, figsize=(10, 4.6))
    titles = (
        f"before: TRE {result.initial_error_mm:.1f} mm",
        f"after {result.steps} steps: TRE {result.error_mm:.2f} mm",
    )
    for column, ((board, overlay), title) in enumerate(zip(panels, titles, strict=True)):
        axes[0, column].imshow(board)
        axes[0, column].set_title(title, fontsize=9)
        axes[1, column].imshow(overlay)
        for row in range(2):
            axes[row, column].axis("off")
    fig.suptitle(f"{pair.case_id}: axial, coronal, sagittal at {world.levels_mm[coarsest]:g} mm", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
