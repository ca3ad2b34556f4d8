"""Batch prediction: folders and manifests of scans, Ray workers vs this process, predictions.csv."""

from __future__ import annotations

import csv
import importlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from scripts_support import LANDMARK_CONFIG, config_args, evaluate_main, tiny_landmark, train_main

from agents.experiments import open_run, predict
from agents.experiments.predict import PREDICTION_COLUMNS, prediction_inputs, training_modality

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session() -> object:
    """One local Ray with 2 CPUs for the module (predict uses a running session and leaves it)."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny landmark run and its phantom folder (4 scans: 2 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("batch")
    cache, run = root / "phantoms", root / "run"
    argv = config_args(LANDMARK_CONFIG, [*tiny_landmark(200), f"data.phantoms.cache_dir={cache}"])
    assert train_main([*argv, "--run-dir", str(run)]) == 0
    return run, next(cache.iterdir())


def _table(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        row.pop("seconds")
    return rows


def test_folders_and_manifests_expand_to_scans(tmp_path: Path, trained: tuple[Path, Path]) -> None:
    _, phantoms = trained
    images = prediction_inputs([phantoms / "manifest.csv"])
    assert sorted(p.name for p in images) == [
        "phantom_test_000.nii.gz",
        "phantom_train_000.nii.gz",
        "phantom_train_001.nii.gz",
        "phantom_val_000.nii.gz",
    ]
    folder = tmp_path / "scans"
    (folder / "b").mkdir(parents=True)
    shutil.copy(images[0], folder / "one.nii.gz")
    shutil.copy(images[1], folder / "b" / "two.nii.gz")
    (folder / "notes.txt").write_text("not a scan")
    assert prediction_inputs([folder]) == [folder / "one.nii.gz", folder / "b" / "two.nii.gz"]
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no volume file"):
        prediction_inputs([folder / "empty"])


def test_two_workers_predict_four_scans_like_one_process(
    ray_session: object, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run_path, phantoms = trained
    run = open_run(run_path)
    scans = prediction_inputs([phantoms / "manifest.csv"])
    assert len(scans) == 4
    parallel, serial = tmp_path / "parallel", tmp_path / "serial"
    # evaluate.py with a manifest and 2 Ray workers; the same through the function in this process
    argv = [str(run_path), "--predict", str(phantoms / "manifest.csv"), "--workers", "2"]
    assert evaluate_main([*argv, "--out", str(parallel)]) == 0
    written = predict(run, scans, serial, workers=1, progress=False)
    assert written[-1] == serial / "predictions.csv"
    rows = list(csv.DictReader((parallel / "predictions.csv").open()))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    names = run.landmark_names()
    assert len(rows) == 4 * len(names)
    assert [row["scan"] for row in rows[:: len(names)]] == [str(p) for p in scans]  # input order
    assert all(float(row["seconds"]) > 0 for row in rows)
    assert _table(parallel / "predictions.csv") == _table(serial / "predictions.csv")  # same points
    # one .fcsv / .mrk.json pair per scan with a found landmark, the same files both ways
    found = {row["scan"] for row in rows if row["found"] == "True"}
    pairs = sorted(p.name for p in parallel.iterdir() if p.suffix in (".fcsv", ".json"))
    assert len(pairs) == 2 * len(found)
    assert pairs == sorted(p.name for p in serial.iterdir() if p.suffix in (".fcsv", ".json"))
    # nothing is overwritten: a second prediction into the same folder is refused up front
    before = {p: p.stat().st_mtime_ns for p in parallel.iterdir()}
    with pytest.raises(ValueError, match="never overwrite"):
        predict(run, scans, parallel, workers=2, progress=False)
    assert {p: p.stat().st_mtime_ns for p in parallel.iterdir()} == before


def test_a_batch_that_fails_midway_leaves_nothing_half_written(
    tmp_path: Path, trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    predict_module = importlib.import_module("agents.experiments.predict")
    run, phantoms = trained
    scans = prediction_inputs([phantoms / "manifest.csv"])[:2]
    real_write = predict_module._write_scan
    calls = []

    def write_then_fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_write_scan", write_then_fail)
    out = tmp_path / "given"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OSError, match="disk full"):
        predict(open_run(run), scans, out, progress=False)
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt"]  # the first scan's files are gone too
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        predict(open_run(run), scans, tmp_path / "new" / "out", progress=False)
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(predict_module, "ray_installed", lambda: False)
    with pytest.raises(ValueError, match="--ray-address needs Ray"):
        predict(open_run(run), scans, tmp_path / "other", ray_address="auto", progress=False)


def test_predicted_scans_are_normalised_with_the_training_modality(tmp_path: Path) -> None:
    """--predict's scans get the training cases' modality (an MR run must not read them under the CT
    window when env.preset is null); mixed or unknown modalities are a clear error."""

    def run_with(rows: list[str], preset: str | None = None, manifest: Path | None = None) -> SimpleNamespace:
        path = manifest or tmp_path / "manifest.csv"
        for name in ("a.nii.gz", "b.nii.gz"):  # the manifest reader checks that the images exist
            (tmp_path / name).write_bytes(b"")
        if rows:
            path.write_text("case_id,image,landmarks,split,modality\n" + "\n".join(rows) + "\n")
        experiment = SimpleNamespace(
            data=SimpleNamespace(manifest=str(path)), env=SimpleNamespace(preset=preset)
        )
        return SimpleNamespace(experiment=experiment, path=tmp_path / "run")

    assert training_modality(run_with(["a,a.nii.gz,,train,mr", "b,b.nii.gz,,test,ct"])) == "mr"
    assert training_modality(run_with(["a,a.nii.gz,,train,mr"], preset="ct")) == "ct"
    with pytest.raises(ValueError, match="modalities"):
        training_modality(run_with(["a,a.nii.gz,,train,mr", "b,b.nii.gz,,train,ct"]))
    with pytest.raises(ValueError, match="is gone"):
        training_modality(run_with([], manifest=tmp_path / "missing.csv"))
