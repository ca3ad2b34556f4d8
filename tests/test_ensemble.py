"""evaluate.py --ensemble: several runs searched as one agent (their Q-values averaged)."""

from __future__ import annotations

import csv
import dataclasses
import importlib
from pathlib import Path

import pytest
from scripts_support import LANDMARK_CONFIG, config_args, evaluate_main, tiny_landmark, train_main

from agents.experiments import (
    RigidExperiment,
    Run,
    SdmExperiment,
    ensemble_of,
    load_policies,
    open_run,
)
from agents.experiments.predict import prediction_inputs

predict_module = importlib.import_module("agents.experiments.predict")  # the module, not the function


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two tiny landmark runs of one config (seeds 0 and 1) and their phantom folder."""
    root = tmp_path_factory.mktemp("ensemble")
    cache = root / "phantoms"
    made = []
    for seed in (0, 1):
        run = root / f"seed{seed}"
        overrides = [*tiny_landmark(200), f"data.phantoms.cache_dir={cache}", f"seed={seed}"]
        assert train_main([*config_args(LANDMARK_CONFIG, overrides), "--run-dir", str(run)]) == 0
        made.append(run)
    return made[0], made[1], next(cache.iterdir())


def test_evaluate_ensemble_cli_scores_one_agent_from_two_runs(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture
) -> None:
    seed0, seed1, _ = runs
    assert evaluate_main([str(seed0), str(seed1), "--ensemble"]) == 0
    out = seed0 / "eval-test-ensemble"  # never the single run's eval-test
    assert (out / "metrics.json").is_file()
    assert not (seed0 / "eval-test").exists()
    assert not (seed1 / "eval-test-ensemble").exists()
    title = (out / "metrics.md").read_text().splitlines()[0]
    assert f"ensemble of {seed0.name} + {seed1.name}" in title
    rows = list(csv.DictReader((out / "errors.csv").open()))
    assert {row["method"] for row in rows} == {"agent", "oracle"}
    assert "mean ± std over" not in capsys.readouterr().out  # one agent, not two runs summarised


def test_ensemble_members_load_their_own_networks(runs: tuple[Path, Path, Path]) -> None:
    seed0, seed1, _ = runs
    first, second = open_run(seed0), open_run(seed1)
    pair = ensemble_of([first, second])
    assert pair.members == (second,)
    assert pair.path == first.path
    assert pair.experiment == first.experiment
    assert pair.policy_paths() == [first.policy_path(), second.policy_path()]
    assert pair.eval_folder("test").name == "eval-test-ensemble"
    assert first.eval_folder("test").name == "eval-test"


def test_a_ray_task_searches_with_every_member(
    runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray task (run here in-process) reopens the members from their paths: its policy is
    built from every member's checkpoint, in order."""
    seed0, seed1, phantoms = runs
    loaded: list[list[Path]] = []

    def recording(run: Run, spaces: object) -> list[object]:
        loaded.append(run.policy_paths())
        return load_policies(run, spaces)

    monkeypatch.setattr(predict_module, "load_policies", recording)
    scan = str(prediction_inputs([phantoms / "manifest.csv"])[0])
    search = open_run(seed0).experiment.search
    (result,) = predict_module._search_chunk([str(seed0), str(seed1)], [(0, scan)], search, None)
    assert loaded == [[open_run(seed0).policy_path(), open_run(seed1).policy_path()]]
    assert result[0] == 0
    assert set(result[1]) == set(open_run(seed0).landmark_names())


def _run(tmp_path: Path, name: str, experiment: object, landmarks: list[str] | None = None) -> Run:
    run = Run(tmp_path / name, experiment)  # type: ignore[arg-type]
    if landmarks is not None:
        run.path.mkdir(parents=True)
        run.write_landmark_names(landmarks)
    return run


def test_members_that_see_or_act_otherwise_are_refused(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    first = open_run(runs[0])
    with pytest.raises(ValueError, match="two or more run folders, got 1"):
        ensemble_of([first])
    finer = dataclasses.replace(
        first.experiment, env=dataclasses.replace(first.experiment.env, levels_mm=(4.0, 2.0, 1.0))
    )
    with pytest.raises(ValueError, match=r"finer has env.levels_mm=\[4.0, 2.0, 1.0\].*same observations"):
        ensemble_of([first, _run(tmp_path, "finer", finer, first.landmark_names())])
    other = _run(tmp_path, "other", first.experiment, first.landmark_names()[::-1])
    with pytest.raises(ValueError, match="trained on the same landmarks"):
        ensemble_of([first, other])
    rigid = RigidExperiment()
    steps = dataclasses.replace(rigid, env=dataclasses.replace(rigid.env, rotation_steps_deg=(6.0, 2.0, 1.0)))
    with pytest.raises(ValueError, match=r"env\.rotation_steps_deg"):
        ensemble_of([_run(tmp_path, "r0", rigid), _run(tmp_path, "r1", steps)])
    assert ensemble_of([_run(tmp_path, "r2", rigid), _run(tmp_path, "r3", rigid)]).members
    with pytest.raises(ValueError, match="sdm runs cannot be ensembled"):
        ensemble_of([_run(tmp_path, "s0", SdmExperiment()), _run(tmp_path, "s1", SdmExperiment())])


def test_the_cli_refuses_an_ensemble_of_one_run_or_a_run_given_twice(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture
) -> None:
    seed0, _, _ = runs
    assert evaluate_main([str(seed0), "--ensemble"]) == 2
    assert "expected two or more run folders" in capsys.readouterr().err
    assert evaluate_main([str(seed0), str(seed0), "--ensemble"]) == 2
    assert "is given twice" in capsys.readouterr().err
