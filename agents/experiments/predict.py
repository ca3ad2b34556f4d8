"""Landmark prediction on unlabelled scans, one by one or fanned out over Ray workers.

``evaluate.py RUN --predict`` lands here. Inputs are volume files, DICOM series folders,
folders of them (:func:`prediction_inputs`) or manifests (their ``image`` column). Outputs, in
``out``: one ``.fcsv`` and ``.mrk.json`` pair per scan with a found landmark (3D Slicer), and
``predictions.csv`` (one row per scan and landmark, written atomically at the end). Nothing is
ever overwritten. Points are LPS millimetres.

With ``workers > 1`` and Ray installed (``medgym[ray]``) the searches run as Ray tasks of 1 CPU
each, on a local Ray or a cluster (``ray_address``); otherwise in this process. Both give the
same points: a scan's search is seeded by its position in the input list.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from agents.experiments.data import make_world
from agents.experiments.ensemble import load_policies
from agents.experiments.landmark_eval import run_shape
from agents.experiments.reports import prediction_stems, volume_stem, write_csv
from agents.experiments.runs import Run, open_run
from agents.search import LandmarkShape, QNetworkPolicy, SearchConfig, detect_with_shape
from envs import io
from envs.data import Case, Dataset
from envs.data.manifest import read_manifest
from envs.io.atomic import check_output_folder, make_folders

__all__ = ["PREDICTION_COLUMNS", "predict", "prediction_inputs", "training_modality"]

ACTIONS = gym.spaces.Discrete(6)  # one step along +-x, +-y, +-z
PREDICTION_COLUMNS = ("scan", "landmark", "x_lps", "y_lps", "z_lps", "found", "confidence", "seconds")
_MANIFEST_SUFFIXES = (".csv", ".yaml", ".yml")


def prediction_inputs(paths: list[Path]) -> list[Path]:
    """The scans named by ``--predict`` arguments, in order.

    A manifest (``.csv``, ``.yaml``) gives its ``image`` column; a folder holding one DICOM
    series is that scan; any other folder gives every volume file (``.nii``, ``.nii.gz``,
    ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) and DICOM series folder below it, sorted. Other
    paths are kept as given (:func:`predict` checks them).

    Raises:
        ValueError: a folder with no scan in it, or a malformed manifest.
    """
    scans: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix.lower() in _MANIFEST_SUFFIXES:
            scans.extend(Path(case.image) for case in read_manifest(path))
        elif path.is_dir():
            found = [path] if _dicom_series(path) else _scans_below(path)
            if not found:
                raise ValueError(
                    f"--predict {path}: no volume file ({', '.join(io.VOLUME_SUFFIXES)}) or DICOM series "
                    "in this folder; pass scans, a folder of scans or a manifest"
                )
            scans.extend(found)
        else:
            scans.append(path)
    return scans


def _dicom_series(folder: Path) -> bool:
    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _scans_below(folder: Path) -> list[Path]:
    scans: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(root)
        volumes = [here / f for f in sorted(files) if f.lower().endswith(io.VOLUME_SUFFIXES)]
        if not volumes and files and here != folder and _dicom_series(here):
            scans.append(here)
            dirs.clear()  # a series folder is one scan
            continue
        scans.extend(volumes)
    return scans


def predict(
    run: Run,
    volumes: list[Path],
    out: Path,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Detect the run's landmarks on unlabelled volumes; write Slicer files and ``predictions.csv``.

    Args:
        run: a landmark run (its best checkpoint, landmark order and search settings).
        volumes: volume files or DICOM series folders (see :func:`prediction_inputs` for folders
            of scans and manifests).
        out: output folder; one pair of files per input, named by :func:`prediction_stems`
            (inputs that share a file name keep their folders).
        workers: Ray tasks at once (> 1 with Ray installed: fan out; else in this process).
        ray_address: a Ray cluster to run on (``auto``, ``HOST:6379``); None: a local Ray.
        progress: show a progress bar.

    Every volume is read and checked, and every output name checked free, before the first
    search. Returns the files written (``predictions.csv`` last).
    """
    if workers < 1:
        raise ValueError(f"--workers: expected >= 1, got {workers}")
    if not volumes:
        raise ValueError("--predict: no scans given")
    names = run.landmark_names()
    for path in volumes:
        if not path.exists():
            raise FileNotFoundError(f"--predict {path}: file not found")
    stems = prediction_stems(volumes)
    check_output_folder(out)
    existing = [out / f"{stem}{suffix}" for stem in stems for suffix in (".fcsv", ".mrk.json")]
    existing = [path for path in [*existing, out / "predictions.csv"] if path.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ValueError(
            f"--out {out}: {existing[0]} exists{more}; predictions never overwrite files: "
            "pass another --out or move them away"
        )
    world = _world(run, volumes, range(len(volumes)), names)
    variants = []
    for index, path in enumerate(volumes):
        try:
            variants.append(world.variant(index))  # reads and checks the volume before any search
        except ValueError as error:
            raise ValueError(f"--predict {path}: {error}") from None
    use_ray = (workers > 1 or ray_address is not None) and ray_installed()
    if ray_address is not None and not use_ray:
        raise ValueError("--ray-address needs Ray: pip install 'medgym[ray]'")
    if workers > 1 and not use_ray:
        print(
            "evaluate.py: Ray is not installed; predicting in this process (pip install 'medgym[ray]')",
            file=sys.stderr,
        )
    bar = tqdm(total=len(volumes), desc="predict", unit="scan", disable=not progress, file=sys.stderr)
    written: list[Path] = []
    rows: list[dict[str, Any]] = []
    shape = run_shape(run) if run.experiment.search.shape_check else None
    if use_ray:
        del variants  # the workers read their own scans
        results = _fan_out(run, volumes, workers, ray_address, shape)
    else:
        policy = QNetworkPolicy(load_policies(run, (world.observation_space(), ACTIONS)))
        results = (
            _search(run, world, policy, index, variants[index], shape) for index in range(len(volumes))
        )
    made = make_folders(out)
    try:
        for index, detections, seconds in results:
            written.extend(
                _write_scan(out, volumes[index], stems[index], detections, verbose=len(volumes) <= 20)
            )
            rows.extend(_rows(index, volumes[index], detections, seconds))
            bar.update(1)
        rows.sort(key=lambda row: (row["index"], row["order"]))
        table = [{column: row[column] for column in PREDICTION_COLUMNS} for row in rows]
        write_csv(out / "predictions.csv", table)
    except BaseException:  # a failed batch leaves nothing half-written: a rerun starts clean
        for path in written:
            path.unlink(missing_ok=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        bar.close()
    written.append(out / "predictions.csv")
    return written


def ray_installed() -> bool:
    """Whether Ray can be imported (the ``medgym[ray]`` extra)."""
    return importlib.util.find_spec("ray") is not None


def _world(run: Run, volumes: list[Path], indices: range | list[int], names: list[str]) -> Any:
    """A test world over ``volumes`` (case ids carry the scans' positions in the whole input list)."""
    modality = training_modality(run)
    cases = [
        Case(f"predict_{i:03d}_{volume_stem(path)}", "test", image=path, modality=modality)
        for i, path in zip(indices, volumes, strict=True)
    ]
    return make_world(
        run.experiment, Dataset(cases, source="--predict volumes"), "test", augment=False, landmarks=names
    )


def training_modality(run: Run) -> str:
    """The modality of the run's training cases: what picks the intensity preset when the run's
    ``env.preset`` is null (an MR scan under the CT window is a grey blank to the agent)."""
    manifest = run.experiment.data.manifest
    if run.experiment.env.preset is not None or manifest is None:
        return "ct"  # a named preset ignores the modality; phantoms are CT
    if not Path(manifest).is_file():
        raise ValueError(
            f"run {run.path}: env.preset is null (picked by modality) and its training manifest "
            f"{manifest} is gone, so the scans' modality is unknown; set env.preset (mr or ct) in "
            f"{run.path / 'config.yaml'}"
        )
    modalities = sorted({case.modality for case in read_manifest(manifest) if case.split == "train"})
    if len(modalities) != 1:
        raise ValueError(
            f"run {run.path}: trained on modalities {modalities} with env.preset null; set env.preset "
            f"(mr or ct) in {run.path / 'config.yaml'} to say how --predict scans are normalised"
        )
    return modalities[0]


def _search(
    run: Run, world: Any, policy: Any, index: int, variant: Any, shape: LandmarkShape | None
) -> tuple[int, dict[str, Any], float]:
    """One scan's search, seeded by its position ``index``: (index, name -> detection, seconds)."""
    began = time.perf_counter()
    detections = detect_with_shape(world, variant, policy, run.experiment.search, shape, seed=index)
    found = {
        name: (np.asarray(d.position_lps_mm, dtype=float).tolist(), bool(d.found), float(d.confidence))
        for name, d in detections.items()
    }
    return index, found, time.perf_counter() - began


def _search_chunk(
    run_paths: list[str], scans: list[tuple[int, str]], search: SearchConfig, shape: LandmarkShape | None
) -> list[tuple[int, dict[str, Any], float]]:
    """A Ray task: the searches of some scans, ``(index, path)``, with the run's best policy (and
    its ensemble members', the runs after the first), the caller's search settings
    (``evaluate.py --search`` may have changed the run's) and shape."""
    from agents.networks import set_torch_threads

    set_torch_threads(1)
    run, *members = (open_run(path) for path in run_paths)
    run = dataclasses.replace(
        run, experiment=dataclasses.replace(run.experiment, search=search), members=tuple(members)
    )
    indices, volumes = [i for i, _ in scans], [Path(p) for _, p in scans]
    world = _world(run, volumes, indices, run.landmark_names())
    policy = QNetworkPolicy(load_policies(run, (world.observation_space(), ACTIONS)))
    return [_search(run, world, policy, index, world.variant(k), shape) for k, index in enumerate(indices)]


def _fan_out(
    run: Run, volumes: list[Path], workers: int, ray_address: str | None, shape: LandmarkShape | None
) -> Any:
    """Yield the searches' results as Ray tasks (1 CPU each, ``workers`` at once) finish them."""
    import ray

    own_session = not ray.is_initialized()
    if own_session:
        if ray_address is not None:
            ray.init(address=ray_address)
        else:
            ray.init(num_cpus=workers, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=1)(_search_chunk)
        size = max(1, math.ceil(len(volumes) / (workers * 4)))  # small chunks: an even load, a live bar
        scans = [(i, str(path.resolve())) for i, path in enumerate(volumes)]
        chunks = [scans[start : start + size] for start in range(0, len(scans), size)]
        search = run.experiment.search
        paths = [str(member.path.resolve()) for member in (run, *run.members)]
        pending = [task.remote(paths, chunk, search, shape) for chunk in chunks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results = ray.get(done[0])
            except ray.exceptions.RayTaskError as error:
                cause = getattr(error, "cause", None)
                raise (cause if isinstance(cause, Exception) else error) from None
            yield from results
    finally:
        if own_session:
            ray.shutdown()


def _write_scan(out: Path, path: Path, stem: str, detections: dict[str, Any], verbose: bool) -> list[Path]:
    """The scan's .fcsv and .mrk.json (found landmarks only); nothing when none was found."""
    points = {name: np.asarray(position) for name, (position, found, _) in detections.items() if found}
    if not points:
        tqdm.write(f"evaluate.py: {path}: no landmark found in the field of view", file=sys.stderr)
        return []
    if verbose:
        for name, (position, found, confidence) in detections.items():
            state = "found" if found else "NOT FOUND"
            where = np.round(position, 1).tolist()
            tqdm.write(f"{stem}: {name}: {state} at LPS {where} (confidence {confidence:.2f})")
    return [io.write_landmarks(points, out / f"{stem}{suffix}") for suffix in (".fcsv", ".mrk.json")]


def _rows(index: int, path: Path, detections: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    return [
        {
            "index": index,
            "order": order,
            "scan": str(path),
            "landmark": name,
            "x_lps": position[0],
            "y_lps": position[1],
            "z_lps": position[2],
            "found": found,
            "confidence": confidence,
            "seconds": seconds,
        }
        for order, (name, (position, found, confidence)) in enumerate(detections.items())
    ]
