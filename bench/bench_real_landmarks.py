"""Real-anatomy landmark benchmark: train on one real scan, test on held-out moved scans, vs the atlas.

    python bench/bench_real_landmarks.py [--data data/real] [--sets afids cerebra] [--minutes M]
        [--set KEY=VALUE ...] [--skip-train SET=RUN ...] [--ensemble SET=RUN ...]
        [--out bench/results/real_landmarks.json]
    python bench/bench_real_landmarks.py --compare BEFORE.json AFTER.json

Needs ``python bench/real_anatomy.py prepare --out data/real`` first (nothing is downloaded
here). For each data set: ``train.py configs/landmark_own_data.yaml`` with its defaults (only
``data.manifest`` and the run folder set; ``--minutes`` sets ``train.max_minutes`` for short
trials, ``--set`` passes more overrides), then ``evaluate.py RUN --baseline atlas``, then
``evaluate.py RUN --predict`` on the scans whose field of view leaves landmarks out (are the
absent ones reported absent?). Prints and saves, per data set and test condition (pose,
spacing, oblique header or grid, cropped field of view, bias and noise, contrast), the agent's
and the atlas's mean / median / p95 / max error (mm), share of errors > 10 mm (a landmark not
found counts as one) and ms per landmark, and the training minutes. ``--compare`` prints the
agent's figures of two saved results side by side, per data set and condition (nothing is run).
``--ensemble SET=RUN`` (repeatable) evaluates the set's run together with RUN as one agent
(``evaluate.py --ensemble``: their Q-values averaged).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.experiments import MISS_MM, summarise_errors  # noqa: E402  (the root is on the path now)
from envs import io  # noqa: E402
from envs.io.atomic import atomic_write_text  # noqa: E402

CONFIG = ROOT / "configs" / "landmark_own_data.yaml"
METHODS = ("agent", "atlas", "oracle")


def run_process(script: str, argv: list[str]) -> float:
    """``python SCRIPT ARGV...`` as a process (one torch / OpenMP thread); returns its wall minutes."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    print(f"$ python {script} {' '.join(argv)}", flush=True)
    done = subprocess.run([sys.executable, str(ROOT / script), *argv], env=environment, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench_real_landmarks.py: {script} failed with exit status {done.returncode}")
    return (time.perf_counter() - began) / 60.0


def error_summary(rows: list[dict[str, str]]) -> dict[str, float]:
    """Mean / median / p95 / max (mm) of the found landmarks; misses (> 10 mm or not found); ms each.

    Rows of absent landmarks (true position NaN: outside the field of view), which evaluate.py
    may write, are counted apart: reported absent (correct) or reported found (false detection).
    """
    absent = [r for r in rows if r.get("true_x_lps", "0").lower() == "nan"]
    present = [r for r in rows if r.get("true_x_lps", "0").lower() != "nan"]
    errors = [float(r["error_mm"]) for r in present if r["found"] == "True"]
    not_found = len(present) - len(errors)
    summary = {key: value for key, value in summarise_errors(errors).items() if key.endswith("_mm")}
    misses = sum(error > MISS_MM for error in errors) + not_found
    seconds = [float(r["seconds"]) for r in rows]
    return {
        "n": len(present),
        **summary,
        "not_found": not_found,
        "percent_over_10mm": 100.0 * misses / max(len(present), 1),
        "ms_per_landmark": 1000.0 * float(np.mean(seconds)) if seconds else float("nan"),
        "n_absent": len(absent),
        "absent_reported_found": sum(r["found"] == "True" for r in absent),
    }


def by_condition(errors_csv: Path, conditions: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``condition (and "all") -> method -> error_summary`` from an evaluate.py errors.csv."""
    grouped: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    with errors_csv.open(newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            condition = conditions[row["case"]]["condition"]
            grouped[(condition, row["method"])].append(row)
            grouped[("all", row["method"])].append(row)
    table: dict[str, dict[str, Any]] = defaultdict(dict)
    for (condition, method), rows in sorted(grouped.items()):
        table[condition][method] = error_summary(rows)
    return dict(table)


def absent_handling(
    runs: list[str], folder: Path, data: Path, conditions: dict[str, Any], out: Path, search: list[str]
) -> dict:
    """``evaluate.py RUN --predict`` on the scans with absent landmarks: which does the agent report?"""
    cases = {case_id: spec for case_id, spec in conditions.items() if spec["absent"]}
    if not cases:
        return {}
    images = {
        row["case_id"]: data / row["image"]
        for row in csv.DictReader((data / "manifest.csv").open(newline="", encoding="utf-8"))
        if row["case_id"] in cases
    }
    run_process("evaluate.py", [*runs, "--predict", *map(str, images.values()), *search, "--out", str(out)])
    report = {}
    for case_id, image in images.items():
        stem = image.name.split(".")[0]
        written = sorted(out.glob(f"{stem}*.mrk.json"))
        reported = io.read_landmarks(written[0]) if written else {}
        absent = set(cases[case_id]["absent"])
        present = set(cases[case_id]["truth_lps_mm"]) - absent
        report[case_id] = {
            "absent": len(absent),
            "absent_reported_as_found": sorted(absent & set(reported)),
            "present": len(present),
            "present_not_reported": sorted(present - set(reported)),
        }
    return report


def bench_set(name: str, args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """Train (unless skipped), evaluate with the atlas baseline and summarise one data set."""
    data = args.data / name
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(
            f"bench_real_landmarks.py: {manifest} not found; run python bench/real_anatomy.py prepare "
            f"--out {args.data} first"
        )
    conditions = json.loads((data / "conditions.json").read_text(encoding="utf-8"))
    skipped = dict(item.split("=", 1) for item in args.skip_train)
    train: dict[str, Any] = {"skipped": name in skipped}
    if name in skipped:
        run = Path(skipped[name])
    else:
        run = args.runs / f"real-{name}-{stamp}"
        overrides = [f"data.manifest={manifest}", *args.overrides]
        if args.minutes is not None:
            overrides.append(f"train.max_minutes={args.minutes}")
        sets = [item for override in overrides for item in ("--set", override)]
        train["wall_minutes"] = run_process("train.py", [str(CONFIG), *sets, "--run-dir", str(run)])
        train["overrides"] = overrides
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    train.update(
        {key: summary.get(key) for key in ("num_timesteps", "minutes", "steps_per_s", "best_val_median_mm")}
    )
    folder = run / f"bench-real-{stamp}"
    baseline = [] if args.no_atlas else ["--baseline", "atlas"]
    search = [item for setting in args.search for item in ("--search", setting)]
    members = [item.split("=", 1)[1] for item in args.ensemble if item.split("=", 1)[0] == name]
    runs = [str(run), *members, *(["--ensemble"] if members else [])]
    evaluate = [*runs, *baseline, *search, "--out", str(folder / "test")]
    evaluate_minutes = run_process("evaluate.py", evaluate)
    table = by_condition(folder / "test" / "errors.csv", conditions)
    absent = absent_handling(runs, folder, data, conditions, folder / "predict_absent", search)
    return {
        "run": str(run),
        "ensemble": members,
        "manifest": str(manifest),
        "train": train,
        "evaluate_minutes": evaluate_minutes,
        "conditions": table,
        "absent_landmarks": absent,
    }


def print_table(name: str, result: dict[str, Any]) -> None:
    train = result["train"]
    print(
        f"\n### {name}: trained {train.get('minutes') or float('nan'):.1f} min of learning "
        f"({train.get('num_timesteps')} steps; wall {train.get('wall_minutes', float('nan')):.1f} min), "
        f"run {result['run']}"
    )
    print("| condition | method | n | mean | median | p95 | max (mm) | % > 10 mm | not found | ms/landmark |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for condition, methods in result["conditions"].items():
        for method in METHODS:
            if method in methods:
                m = methods[method]
                print(
                    f"| {condition} | {method} | {m['n']} | {m['mean_mm']:.2f} | {m['median_mm']:.2f} | "
                    f"{m['p95_mm']:.2f} | {m['max_mm']:.2f} | {m['percent_over_10mm']:.1f} | "
                    f"{m['not_found']} | {m['ms_per_landmark']:.1f} |"
                )
    for case_id, absent in result["absent_landmarks"].items():
        print(
            f"{case_id}: {len(absent['absent_reported_as_found'])} of {absent['absent']} absent landmarks "
            f"reported as found; {len(absent['present_not_reported'])} of {absent['present']} present ones "
            "not reported"
        )


COMPARED = ("mean_mm", "median_mm", "p95_mm", "percent_over_10mm", "absent_reported_found")


def compare(before_path: Path, after_path: Path, method: str = "agent") -> list[str]:
    """Markdown rows: ``method``'s figures per data set and condition, BEFORE -> AFTER."""
    before, after = (
        json.loads(path.read_text(encoding="utf-8"))["sets"] for path in (before_path, after_path)
    )
    lines = [
        f"{method}: {before_path.name} -> {after_path.name}",
        "| set | condition | n | " + " | ".join(COMPARED) + " |",
        "|---|---|---|" + "---|" * len(COMPARED),
    ]
    for name in sorted(set(before) & set(after)):
        old_table, new_table = before[name]["conditions"], after[name]["conditions"]
        for condition in [c for c in old_table if c in new_table]:
            old, new = old_table[condition].get(method), new_table[condition].get(method)
            if old is None or new is None:
                continue
            cells = [f"{old[key]:.2f} -> {new[key]:.2f}" for key in COMPARED]
            lines.append(f"| {name} | {condition} | {new['n']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "real")
    parser.add_argument("--sets", nargs="+", default=["afids", "cerebra"], choices=["afids", "cerebra"])
    parser.add_argument(
        "--minutes", type=float, help="train.max_minutes for a short trial (default: config's)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-train", action="append", default=[], metavar="SET=RUN", help="evaluate RUN")
    parser.add_argument(
        "--search", action="append", default=[], metavar="KEY=VALUE", help="evaluate.py --search setting"
    )
    parser.add_argument(
        "--ensemble", action="append", default=[], metavar="SET=RUN", help="evaluate with RUN as one agent"
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--no-atlas", action="store_true", help="agent and oracle only (the atlas takes ~90 s a scan)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_landmarks.json")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="print two results side by side"
    )
    args = parser.parse_args(argv)
    if args.compare:
        missing = [str(path) for path in args.compare if not path.is_file()]
        if missing:
            parser.error(f"--compare: {', '.join(missing)} not found; pass two JSON files this script saved")
        print("\n".join(compare(*args.compare)))
        return 0
    for flag, items in (("--skip-train", args.skip_train), ("--ensemble", args.ensemble)):
        for item in items:
            if "=" not in item or item.split("=", 1)[0] not in args.sets:
                parser.error(f"{flag} {item}: expected SET=RUN with SET one of {args.sets}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {name: bench_set(name, args, stamp) for name in args.sets}
    document = {
        "sets": results,
        "command": [sys.executable, *sys.argv],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    for name, result in results.items():
        print_table(name, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
