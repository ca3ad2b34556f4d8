"""Seeds and sweeps: trials planned from a sweep file, run as Ray Tune trials, failures cleaned up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from scripts_support import LANDMARK_CONFIG, config_args, evaluate_main, tiny_landmark, train_main

from agents.experiments import ConfigError
from agents.experiments import sweep_tune as sweep_tune_module
from agents.experiments.sweep import expand_run_folders, plan_trials, read_sweep
from agents.experiments.sweep_tune import SweepFailed, run_sweep, run_trial


def _overrides(cache: Path) -> list[str]:
    return [*tiny_landmark(200), f"data.phantoms.cache_dir={cache}"]


def _sweep_file(folder: Path, content: dict) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.fixture(scope="module")
def ray_session() -> object:
    """The module's one local Ray (2 CPUs); the sweep uses a running session and leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantoms")


def test_sweep_file_gives_samples_x_grid_x_seeds_trials(tmp_path: Path) -> None:
    path = _sweep_file(
        tmp_path,
        {
            "grid": {"agent.learning_rate": [1.0e-4, 3.0e-4], "agent.net_arch": [[32], [64, 64]]},
            "random": {"agent.gamma": {"uniform": [0.8, 0.99]}, "agent.batch_size": {"choice": [16, 32]}},
            "samples": 3,
        },
    )
    spec = read_sweep(path)
    trials, experiments = plan_trials(LANDMARK_CONFIG, [], [0, 1], spec, path)
    assert len(trials) == 3 * 2 * 2 * 2
    assert len({t.name for t in trials}) == len(trials)
    assert [e.seed for e in experiments[:2]] == [0, 1]
    gammas = {e.agent.gamma for e in experiments}
    assert len(gammas) == 3
    assert all(0.8 <= g <= 0.99 for g in gammas)
    assert {e.agent.net_arch for e in experiments} == {(32,), (64, 64)}
    first = experiments[0]
    assert f"agent.gamma={first.agent.gamma}" in trials[0].name  # the name says the trial's values
    again, _ = plan_trials(LANDMARK_CONFIG, [], [0, 1], read_sweep(path), path)
    assert again == trials  # the sweep's seed makes the draws repeatable
    # without --seeds: the config's own seed, one trial per grid point
    alone, experiments = plan_trials(LANDMARK_CONFIG, ["seed=7"], None, read_sweep(path), path)
    assert len(alone) == 12
    assert {e.seed for e in experiments} == {7}


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ({"grid": {"agent.learnin_rate": [1.0e-4]}}, "agent.learnin_rate"),
        ({"random": {"agent.gamma": {"gaussian": [0, 1]}}}, "gaussian"),
        ({"random": {"agent.gamma": {"uniform": [0.9, 0.8]}}}, "low < high"),
        ({"grid": {"agent.gamma": []}}, "non-empty list"),
        ({"grid": {"agent.gamma": [0.9]}, "sample": 3}, "'sample'"),
        ({"grid": {"agent.algorithm": ["dqn", "ppo"]}}, "ppo"),
    ],
)
def test_bad_sweep_file_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: dict, phrase: str
) -> None:
    path = _sweep_file(tmp_path, content)
    run_dir = tmp_path / "sweep"
    assert train_main([LANDMARK_CONFIG, "--sweep", str(path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error: --sweep")
    assert phrase in err[-1]
    assert not run_dir.exists()


def test_failed_trials_leave_nothing_and_keep_what_was_there(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process (no Ray; training replaced by a stand-in): one trial fails midway, then all."""

    def fail_on_seed_1(experiment, run, state, run_dir):
        assert run_dir.is_dir()  # the trial made it, empty
        assert not any(run_dir.iterdir())
        (run_dir / "config.yaml").write_text("seed: 0")
        if experiment.seed == 1:
            raise RuntimeError("trial broke")
        summary = {"best_val_median_mm": 2.5, "validations": [{"median_mm": 3.0}]}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return 0

    monkeypatch.setattr(sweep_tune_module, "train_experiment", fail_on_seed_1)
    trials, experiments = plan_trials(LANDMARK_CONFIG, _overrides(cache), [0, 1], None)
    mine = tmp_path / "mine.txt"
    mine.write_text("user data")
    folder = tmp_path / "sweep"
    status = run_sweep(LANDMARK_CONFIG, _overrides(cache), trials, experiments, folder, use_ray=False)
    assert status == 1
    assert sorted(p.name for p in folder.iterdir()) == ["s0", "sweep.json"]
    rows = json.loads((folder / "sweep.json").read_text())["trials"]
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert (rows[0]["final_val_median_mm"], rows[0]["best_val_median_mm"]) == (3.0, 2.5)
    assert "trial broke" in rows[1]["error"]
    # every trial fails: the sweep folder this call made is removed; an empty folder given stays
    only_bad, bad_experiments = plan_trials(LANDMARK_CONFIG, _overrides(cache), [1], None)
    for target, kept in ((tmp_path / "new" / "sweep", False), (tmp_path / "empty", True)):
        if kept:
            target.mkdir()
        with pytest.raises(SweepFailed, match="trial broke"):
            run_sweep(LANDMARK_CONFIG, _overrides(cache), only_bad, bad_experiments, target, use_ray=False)
        assert target.exists() == kept
        assert not kept or not any(target.iterdir())
    assert not (tmp_path / "new").exists()
    assert mine.read_text() == "user data"


def test_two_seeds_as_tune_trials_give_two_runs_scored_as_mean_and_std(
    ray_session: object, tmp_path: Path, cache: Path
) -> None:
    folder = tmp_path / "sweep"
    argv = config_args(LANDMARK_CONFIG, _overrides(cache))
    assert train_main([*argv, "--seeds", "0", "1", "--run-dir", str(folder)]) == 0
    table = json.loads((folder / "sweep.json").read_text())
    assert table["runner"] == "ray-tune"
    assert [(row["run_folder"], row["status"]) for row in table["trials"]] == [("s0", "ok"), ("s1", "ok")]
    assert (folder / "tune").is_dir()  # Tune's own files, apart from the run folders
    runs = expand_run_folders([folder])
    assert runs == [folder / "s0", folder / "s1"]
    for seed, run in enumerate(runs):
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        assert (run / "checkpoints" / "best.pt").is_file()
    out = tmp_path / "eval"
    assert evaluate_main([str(folder), "--out", str(out)]) == 0  # the sweep folder means its trials
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["s0", "s1"]
    summary = json.loads((out / "summary_over_runs.json").read_text())
    assert summary["oracle"]["median_mm"]["runs"] == 2
    assert summary["agent"]["median_mm"]["runs"] == 2
    weights = [(run / "checkpoints" / "best.pt").read_bytes() for run in runs]
    assert weights[0] != weights[1]  # the seeds trained two different agents


def test_a_trial_never_writes_into_or_removes_a_folder_it_did_not_make(tmp_path: Path, cache: Path) -> None:
    trials, _ = plan_trials(LANDMARK_CONFIG, _overrides(cache), [0], None)
    theirs = tmp_path / trials[0].name
    theirs.mkdir()
    (theirs / "config.yaml").write_text("another sweep's run")
    with pytest.raises(ValueError, match="exists already"):
        run_trial(LANDMARK_CONFIG, _overrides(cache), trials[0], tmp_path)
    assert (theirs / "config.yaml").read_text() == "another sweep's run"


def test_a_sweep_folder_without_finished_trials_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sweep.json").write_text(json.dumps({"trials": [{"run_folder": "s0", "status": "failed"}]}))
    with pytest.raises(ValueError, match="no finished trial"):
        expand_run_folders([tmp_path])
    with pytest.raises(ConfigError, match="repeats a seed"):
        plan_trials(LANDMARK_CONFIG, [], [1, 1], None)
