"""How a trained landmark agent copes with a cropped field of view: crop one scan from each face.

    python bench/bench_fov_sensitivity.py RUN [--data MANIFEST] [--case test_pose_1]
        [--crops z-:0.2 z-:0.3 z-:0.37 z+:0.25 z+:0.4 y-:0.2 x-:0.25] [--out JSON]

Takes one held-out scan of ``MANIFEST`` (default: the run's own data), cuts ``FRACTION`` of its
voxel grid away at face ``FACE`` (``z-`` = first slices along the grid's third axis, inferior
for an LPS-aligned scan; ``z+``, ``y-``, ``y+``, ``x-``, ``x+`` likewise), writes the crops to a
temporary folder and searches every landmark left inside with the run's policy and search
settings, twice: from the search's own starts, and with every start at the true point (a
search that walks away from the truth is the policy's doing, not its starts'). Also records the
Q-argmax at the truth per level and how far each landmark is from the cut. Prints a table and
saves JSON (default ``bench/results/fov_sensitivity.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402  (the root is on the path now)

from agents.checkpoints import load_policy  # noqa: E402
from agents.experiments import open_run  # noqa: E402
from agents.experiments.data import make_world  # noqa: E402
from agents.networks import set_torch_threads  # noqa: E402
from agents.search import QNetworkPolicy, detect_landmarks  # noqa: E402
from envs import io  # noqa: E402
from envs.core import Volume  # noqa: E402
from envs.data import Case, Dataset  # noqa: E402
from envs.io.atomic import atomic_write_text  # noqa: E402
from envs.tasks import ACTION_NAMES  # noqa: E402

FACES = {"x-": (0, 0), "x+": (0, 1), "y-": (1, 0), "y+": (1, 1), "z-": (2, 0), "z+": (2, 1)}
"""face -> (SimpleITK index axis x/y/z, 0: cut the low-index end, 1: the high-index end)"""
NDArrayPlane = tuple[np.ndarray, np.ndarray] | None
"""a cut plane: (a point on it in LPS mm, the unit normal into the kept part), None when uncut"""
DEFAULT_CROPS = ("none:0", "z-:0.2", "z-:0.3", "z-:0.37", "z+:0.25", "z+:0.4", "y-:0.2", "x-:0.25")


def parse_crop(text: str) -> tuple[str, float]:
    """``"FACE:FRACTION"`` -> (face, fraction); ``"none:0"`` is the uncropped scan."""
    face, _, fraction = text.partition(":")
    try:
        value = float(fraction)
    except ValueError:
        value = float("nan")
    if (face not in FACES and face != "none") or not 0 <= value < 0.9:
        raise SystemExit(
            f"bench_fov_sensitivity.py: --crops {text!r}: expected FACE:FRACTION with FACE one of "
            f"{', '.join(FACES)} (or none:0) and FRACTION in [0, 0.9)"
        )
    return face, value


def crop(volume: Volume, face: str, fraction: float) -> tuple[Volume, NDArrayPlane]:
    """``volume`` with ``fraction`` of its grid cut away at ``face`` (physical placement kept),
    and the cut plane as ``(point_lps_mm, unit normal into the kept part)``."""
    image = volume.to_sitk()
    if face == "none":
        return volume, None
    axis, end = FACES[face]
    size = list(image.GetSize())
    cut = round(fraction * size[axis])
    slices = [slice(None)] * 3
    slices[axis] = slice(cut, None) if end == 0 else slice(0, size[axis] - cut)
    kept = Volume.from_sitk(image[tuple(slices)])
    index = np.zeros(3)
    index[axis] = cut - 0.5 if end == 0 else size[axis] - cut - 0.5
    direction = np.asarray(image.GetDirection()).reshape(3, 3)[:, axis]
    normal = direction if end == 0 else -direction
    return kept, (np.asarray(image.TransformContinuousIndexToPhysicalPoint(index.tolist())), normal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, help="manifest holding --case (default: the run's own)")
    parser.add_argument("--case", default="test_pose_1")
    parser.add_argument("--crops", nargs="+", default=list(DEFAULT_CROPS), metavar="FACE:FRACTION")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fov_sensitivity.json")
    args = parser.parse_args(argv)
    crops = [parse_crop(text) for text in args.crops]
    set_torch_threads(1)
    run = open_run(args.run)
    manifest = args.data or Path(run.experiment.data.manifest)
    source = Dataset.from_manifest(manifest)
    matches = [case for case in source.cases if case.case_id == args.case]
    if not matches:
        raise SystemExit(f"bench_fov_sensitivity.py: --case {args.case!r} is not in {manifest}")
    subject = source.load(matches[0])
    names = run.landmark_names()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fov-sensitivity-") as folder:
        cases = []
        planes = {}
        for face, fraction in crops:
            case_id = f"{face}{fraction:g}"
            volume, plane = crop(subject.volume, face, fraction)
            planes[case_id] = plane
            inside = {n: p for n, p in subject.landmarks.items() if bool(volume.contains(p, margin_vox=0.5))}
            image = io.write_volume(volume, Path(folder) / f"{case_id}.nii.gz")
            points = io.write_landmarks(inside, Path(folder) / f"{case_id}.mrk.json")
            cases.append(Case(case_id, "test", image, points, matches[0].modality))
        world = make_world(
            run.experiment, Dataset(cases, source=folder), "test", augment=False, landmarks=names
        )
        spaces = (world.observation_space(), gym.spaces.Discrete(len(ACTION_NAMES)))
        policy = QNetworkPolicy(load_policy(run.policy_path(), spaces))
        for index, case in enumerate(cases):
            variant = world.variant(world.variant_index(case.case_id))
            began = time.perf_counter()
            searched = detect_landmarks(world, variant, policy, config=run.experiment.search, seed=index)
            rows = []
            for row, name in enumerate(names):
                truth = variant.landmarks_lps_mm[row]
                if np.isnan(truth[0]):
                    continue
                from_truth = detect_landmarks(
                    world, variant, policy, [name], run.experiment.search, truth[np.newaxis]
                )[name]
                argmax = []
                for level in range(world.n_levels):
                    centre = np.rint(variant.targets_zyx[level][row]).astype(int)
                    observation = world.observation(variant, row, level, centre[np.newaxis])
                    batch = {key: np.asarray(value)[np.newaxis] for key, value in observation.items()}
                    argmax.append(ACTION_NAMES[int(np.argmax(policy(batch)))])
                plane = planes[case.case_id]
                rows.append(
                    {
                        "landmark": name,
                        "error_mm": float(np.linalg.norm(searched[name].position_lps_mm - truth)),
                        "error_from_truth_mm": float(np.linalg.norm(from_truth.position_lps_mm - truth)),
                        "to_cut_mm": None if plane is None else float(np.dot(truth - plane[0], plane[1])),
                        "argmax_at_truth": argmax,
                    }
                )
            errors = np.array([r["error_mm"] for r in rows])
            from_truth_errors = np.array([r["error_from_truth_mm"] for r in rows])
            results.append(
                {
                    "crop": case.case_id,
                    "present": len(rows),
                    "absent": int(np.sum(~variant.present())),
                    "mean_mm": float(errors.mean()),
                    "median_mm": float(np.median(errors)),
                    "over_10mm": int(np.sum(errors > 10)),
                    "from_truth_mean_mm": float(from_truth_errors.mean()),
                    "from_truth_over_10mm": int(np.sum(from_truth_errors > 10)),
                    "seconds": time.perf_counter() - began,
                    "landmarks": rows,
                }
            )
            print(
                f"{case.case_id:>8}: {len(rows)} present, mean {errors.mean():6.2f} mm, median "
                f"{np.median(errors):6.2f}, > 10 mm {int(np.sum(errors > 10))}; from the truth: mean "
                f"{from_truth_errors.mean():6.2f}, > 10 mm {int(np.sum(from_truth_errors > 10))}",
                flush=True,
            )
    document = {
        "run": str(args.run),
        "manifest": str(manifest),
        "case": args.case,
        "command": [sys.executable, *sys.argv],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "crops": results,
    }
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
