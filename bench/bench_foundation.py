"""Benchmark the foundation: volume load + preprocess, cached env reset, patch crops, phantom generation.

Prints tables and writes ``bench/results/foundation.json``.
Run: ``.venv/bin/python bench/bench_foundation.py`` (``--quick`` for a smoke run).

What is timed (``time.perf_counter``, warm-up calls first, median and p90 over the repeats):

- ``envs.io.read_volume`` and ``envs.core.build_pyramid`` separately and together (read + build)
  for (a) phantom seed 0 at 2 mm (150x160x120 int16) written as ``.nii.gz`` and ``.nrrd``, pyramid
  (8, 4, 2) mm; (b) a realistic 1 mm CT volume of shape (z, y, x) = (182, 218, 182) int16: phantom
  seed 0 resampled to 1 mm with 15 HU noise added at 1 mm (so gzip sees CT-like entropy), pyramid
  (4, 2, 1) mm. ``SimpleITK.ReadImage`` alone is timed too, as the floor of ``read_volume``.
- ``LandmarkEnv.reset()`` once its cases are loaded and their pyramids cached (target <= 1 ms).
- ``envs.core.crop_patch`` of 25^3 and 45^3 uint8 patches inside the 1 mm level and at its border.
- ``envs.phantom.generate_phantom``: the first call of a fresh process (which paints the template and
  builds the deformation modes) and later calls, at 2 mm and 1.5 mm, each spacing in its own
  subprocess (wall time of the call only, not the interpreter start).

The helpers here (timing, machine info, atomic JSON, tables, the 1 mm volume) are imported by
``bench/bench_landmark_env.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs import io  # noqa: E402 - after the sys.path line, run as a script
from envs.core import Volume, build_pyramid, crop_patch  # noqa: E402
from envs.io.atomic import atomic_write_text  # noqa: E402
from envs.phantom import generate_phantom, phantom_dataset  # noqa: E402
from envs.tasks import LandmarkEnv  # noqa: E402

#: Shape (z, y, x) of the realistic 1 mm volume (the MNI152 1 mm grid: 182 x 218 x 182 voxels).
SHAPE_1MM_ZYX = (182, 218, 182)
#: LPS centre of the 1 mm crop of the phantom: z = -20 mm keeps 8 of its 10 landmarks inside.
CENTER_1MM_LPS = (0.0, 0.0, -20.0)
PACKAGES = ("numpy", "scipy", "SimpleITK", "gymnasium", "stable_baselines3", "torch", "rich")


# ---------------------------------------------------------------------- shared helpers
def summarise_ms(times_s: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean and min of per-call wall times (seconds in, milliseconds out)."""
    ms = 1000.0 * np.asarray(times_s, dtype=np.float64)
    return {
        "median_ms": float(f"{np.median(ms):.5g}"),
        "p90_ms": float(f"{np.percentile(ms, 90):.5g}"),
        "mean_ms": float(f"{ms.mean():.5g}"),
        "min_ms": float(f"{ms.min():.5g}"),
        "repeats": len(ms),
    }


def time_calls(function: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Call ``function`` ``warmup`` times untimed, then ``repeats`` times timed each."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return summarise_ms(times)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for these timings."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, load average (1, 5, 15 min) and package versions, taken now."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(value, 2) for value in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:mod:`envs.io.atomic`)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table with rich (numbers right-aligned), or as plain text if rich is missing."""
    cells = [[f"{c:,.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in cells:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row in cells:
        table.add_row(*row)
    Console(width=160).print(table)


def base_results(name: str, quick: bool) -> dict[str, Any]:
    """The header every result JSON starts with: what ran, where, when, with which load."""
    return {
        "benchmark": name,
        "command": [Path(sys.executable).name, *sys.argv],
        "quick": quick,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
    }


def finish_results(results: dict[str, Any], began: float, out: Path) -> None:
    """Add the load at the end and the total runtime, write the JSON atomically and say where."""
    results["loadavg_end"] = [round(value, 2) for value in os.getloadavg()]
    results["total_runtime_s"] = round(time.perf_counter() - began, 1)
    write_json_atomic(out, results)
    print(
        f"\ntotal {results['total_runtime_s']} s; load average start {results['machine']['loadavg']}, "
        f"end {results['loadavg_end']} on {os.cpu_count()} CPUs; wrote {out}"
    )


def ct_volume_1mm(seed: int = 0, noise_hu: float = 15.0) -> tuple[Volume, dict[str, np.ndarray]]:
    """A (182, 218, 182) int16 CT volume at 1 mm and the phantom landmarks (LPS mm) inside it.

    Phantom ``seed`` at 2 mm, resampled linearly onto a 1 mm identity grid centred on
    :data:`CENTER_1MM_LPS` (air, -1000 HU, outside the phantom), plus Gaussian noise of
    ``noise_hu`` drawn at 1 mm. About 1-4 s (more on the first phantom of the process).
    """
    phantom = generate_phantom(seed)
    size_xyz = list(SHAPE_1MM_ZYX[::-1])
    origin = np.asarray(CENTER_1MM_LPS) - (np.asarray(size_xyz) - 1) / 2.0
    image = sitk.Resample(
        phantom.volume.to_sitk(),
        size_xyz,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        [1.0, 1.0, 1.0],
        np.eye(3).reshape(-1).tolist(),
        -1000.0,
        sitk.sitkFloat32,
    )
    voxels = sitk.GetArrayFromImage(image)
    voxels += np.random.default_rng(seed).normal(0.0, noise_hu, voxels.shape).astype(np.float32)
    hu = np.clip(np.rint(voxels), -1024, 3071).astype(np.int16)
    volume = Volume(hu, (1.0, 1.0, 1.0), origin, np.eye(3), name=f"phantom({seed}) at 1 mm")
    inside = {name: point for name, point in phantom.landmarks.items() if volume.contains(point, 2.0)}
    return volume, inside


# ---------------------------------------------------------------------- figures
def bench_load(volume: Volume, spacings: tuple[float, ...], folder: Path, label: str, repeats: int) -> list:
    """read_volume, build_pyramid and both together for a .nii.gz and a .nrrd copy of ``volume``."""
    rows = []
    for suffix in (".nii.gz", ".nrrd"):
        path = io.write_volume(volume, folder / f"{label}{suffix}")
        loaded = io.read_volume(path)
        assert loaded.shape_zyx == volume.shape_zyx
        timings = {
            "sitk_ReadImage": time_calls(lambda p=path: sitk.ReadImage(str(p)), repeats),
            "read_volume": time_calls(lambda p=path: io.read_volume(p), repeats),
            "build_pyramid": time_calls(lambda v=loaded: build_pyramid(v, spacings), repeats),
            "read_plus_pyramid": time_calls(
                lambda p=path: build_pyramid(io.read_volume(p), spacings), repeats
            ),
        }
        pyramid = build_pyramid(loaded, spacings)
        rows.append(
            {
                "volume": label,
                "format": suffix,
                "shape_zyx": list(volume.shape_zyx),
                "spacing_mm": float(volume.spacing_xyz_mm[0]),
                "file_MB": round(path.stat().st_size / 1e6, 2),
                "pyramid_mm": list(spacings),
                "pyramid_shapes_zyx": [list(level.shape_zyx) for level in pyramid.levels],
                **timings,
            }
        )
    return rows


def bench_reset(repeats: int) -> dict[str, Any]:
    """env.reset() of a LandmarkEnv (2 phantom cases, default levels) after a warm-up loads the cases."""
    dataset = phantom_dataset(2, 0, 0, seed=0)
    env = LandmarkEnv(dataset, split="train")
    start = time.perf_counter()
    env.reset(seed=0)
    for case in env.world.cases:  # loads every case, builds and caches its pyramid
        env.reset(options={"case_id": case.case_id})
    load_s = time.perf_counter() - start
    misses = dataset.cache.misses
    timing = time_calls(env.reset, repeats, warmup=50)
    assert dataset.cache.misses == misses, "reset missed the cache"
    return {
        "env": "LandmarkEnv(phantoms(2, 0, 0), levels (8, 4, 2) mm, P=25, frames=1, schedule=random)",
        "first_resets_load_s": round(load_s, 2),
        "reset": timing,
        "target_ms": 1.0,
    }


def bench_crop(volume: Volume, repeats: int) -> list[dict[str, Any]]:
    """crop_patch inside the volume and at its corner (a border patch only half inside per axis)."""
    voxels = np.ascontiguousarray(build_pyramid(volume, (1.0,)).levels[0].voxels)
    centre = np.array(voxels.shape) // 2
    rows = []
    for size in (25, 45):
        for where, point in (("inside", centre), ("border", np.zeros(3, np.int64))):
            patch = crop_patch(voxels, point, size)
            assert patch.shape == (size,) * 3
            rows.append(
                {
                    "patch": size,
                    "where": where,
                    "volume_shape_zyx": list(voxels.shape),
                    **time_calls(lambda p=point, s=size: crop_patch(voxels, p, s), repeats, warmup=100),
                }
            )
    return rows


_PHANTOM_WORKER = """
import json, sys, time
sys.path.insert(0, {root!r})
from envs.phantom import PhantomConfig, generate_phantom
config = PhantomConfig(spacing_mm={spacing!r})
times = []
for seed in range({calls}):
    start = time.perf_counter()
    phantom = generate_phantom(seed, config)
    times.append(time.perf_counter() - start)
print(json.dumps({{"times_s": times, "shape_zyx": list(phantom.volume.shape_zyx)}}))
"""


def bench_phantoms(spacings: Sequence[float], processes: int, later_calls: int) -> list[dict[str, Any]]:
    """First and later generate_phantom calls, ``processes`` fresh interpreters per spacing."""
    rows = []
    for spacing in spacings:
        first, later, shape = [], [], None
        for _ in range(processes):
            code = _PHANTOM_WORKER.format(root=str(ROOT), spacing=float(spacing), calls=1 + later_calls)
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
            )
            report = json.loads(done.stdout.strip().splitlines()[-1])
            first.append(report["times_s"][0])
            later.extend(report["times_s"][1:])
            shape = report["shape_zyx"]
        rows.append(
            {
                "spacing_mm": float(spacing),
                "shape_zyx": shape,
                "first_call_in_process": summarise_ms(first),
                "later_calls": summarise_ms(later),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run (~50 s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "foundation.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(1)
    quick = args.quick
    results = base_results("foundation", quick)

    with tempfile.TemporaryDirectory(prefix="medgym-bench-") as temp:
        folder = Path(temp)
        phantom = generate_phantom(0).volume
        start = time.perf_counter()
        volume_1mm, _ = ct_volume_1mm(0)
        make_1mm_s = time.perf_counter() - start
        load = bench_load(phantom, (8.0, 4.0, 2.0), folder, "phantom0_2mm", 2 if quick else 10)
        load += bench_load(volume_1mm, (4.0, 2.0, 1.0), folder, "ct_1mm", 1 if quick else 4)
    results["load_and_preprocess"] = load
    results["make_1mm_volume_s"] = round(make_1mm_s, 2)
    print_table(
        "volume load + preprocess (ms, median / p90)",
        ["volume", "format", "MB", "pyramid mm", "ReadImage", "read_volume", "build_pyramid", "read+pyramid"],
        [
            [
                f"{row['volume']} {'x'.join(map(str, row['shape_zyx']))}",
                row["format"],
                row["file_MB"],
                ",".join(f"{s:g}" for s in row["pyramid_mm"]),
                *(
                    f"{row[key]['median_ms']:.1f} / {row[key]['p90_ms']:.1f}"
                    for key in ("sitk_ReadImage", "read_volume", "build_pyramid", "read_plus_pyramid")
                ),
            ]
            for row in load
        ],
    )

    reset = bench_reset(200 if quick else 3000)
    results["cached_reset"] = reset
    print_table(
        "cached LandmarkEnv.reset() (target <= 1 ms)",
        ["env", "median ms", "p90 ms", "mean ms", "repeats"],
        [
            [
                "phantoms, P=25, frames 1",
                reset["reset"]["median_ms"],
                reset["reset"]["p90_ms"],
                reset["reset"]["mean_ms"],
                reset["reset"]["repeats"],
            ]
        ],
    )

    crops = bench_crop(volume_1mm, 500 if quick else 10_000)
    results["crop_patch"] = crops
    print_table(
        f"crop_patch uint8 on the {'x'.join(map(str, crops[0]['volume_shape_zyx']))} 1 mm level (µs)",
        ["patch", "where", "median µs", "p90 µs", "mean µs"],
        [
            [
                f"{row['patch']}^3",
                row["where"],
                1000 * row["median_ms"],
                1000 * row["p90_ms"],
                1000 * row["mean_ms"],
            ]
            for row in crops
        ],
    )

    phantoms = bench_phantoms((2.0, 1.5), processes=1 if quick else 2, later_calls=1 if quick else 3)
    results["generate_phantom"] = phantoms
    print_table(
        "generate_phantom (s, median / p90)",
        ["spacing mm", "shape zyx", "first call in process", "later calls", "n first / later"],
        [
            [
                f"{row['spacing_mm']:g}",
                "x".join(map(str, row["shape_zyx"])),
                f"{row['first_call_in_process']['median_ms'] / 1000:.2f} / "
                f"{row['first_call_in_process']['p90_ms'] / 1000:.2f}",
                f"{row['later_calls']['median_ms'] / 1000:.2f} / {row['later_calls']['p90_ms'] / 1000:.2f}",
                f"{row['first_call_in_process']['repeats']} / {row['later_calls']['repeats']}",
            ]
            for row in phantoms
        ],
    )
    finish_results(results, began, args.out)
    return results


if __name__ == "__main__":
    main()
