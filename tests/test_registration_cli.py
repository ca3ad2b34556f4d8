"""train.py / evaluate.py for the registration tasks, in-process: smoke runs, outputs, bad input."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scripts_support import PROCESS_ENV, ROOT, evaluate_main, train_main

from agents.experiments import ConfigError, RigidExperiment, SdmExperiment, load_experiment
from envs import io

NETWORK = [
    "agent.channels=[4, 8]",
    "agent.kernel_sizes=[5, 3]",
    "agent.strides=[2, 2]",
    "agent.features_dim=32",
    "agent.net_arch=[32]",
    "agent.batch_size=16",
    "agent.buffer_size=200",
    "agent.learning_starts=50",
    "train.progress_bar=false",
    "train.eval_cases=1",
]
DATA = [
    "data.phantoms.n_train=2",
    "data.phantoms.n_val=1",
    "data.phantoms.n_test=1",
    "data.phantoms.spacing_mm=4.0",
    "env.levels_mm=[8.0, 4.0]",
    "env.obs_size=13",
]
RIGID = [
    *DATA,
    *NETWORK,
    "env.translation_steps_mm=[6.0, 1.0]",
    "env.rotation_steps_deg=[6.0, 1.0]",
    "env.variants_per_case=2",
    "env.n_envs=2",
    "train.total_timesteps=300",
    "train.eval_every_steps=150",
    "train.checkpoint_every_steps=150",
]
SDM = [
    *DATA,
    *NETWORK,
    "sdm.n_fields=6",
    "sdm.k=3",
    "env.coefficient_steps=[0.5, 0.1]",
    "train.total_timesteps=200",
    "train.eval_every_steps=100",
    "train.checkpoint_every_steps=100",
]


def _args(config: str, sets: list[str], cache: Path) -> list[str]:
    sets = [*sets, f"data.phantoms.cache_dir={cache}"]
    return [config, *(item for pair in (("--set", s) for s in sets) for item in pair)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registration_phantoms")


@pytest.fixture(scope="module")
def rigid_run(cache: Path) -> Path:
    run = cache.parent / "rigid_run"
    assert train_main([*_args("configs/rigid_phantom.yaml", RIGID, cache), "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def rigid_run_seed1(cache: Path) -> Path:
    run = cache.parent / "rigid_run_seed1"
    args = _args("configs/rigid_phantom.yaml", [*RIGID, "seed=1"], cache)
    assert train_main([*args, "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def sdm_run(cache: Path) -> Path:
    run = cache.parent / "sdm_run"
    assert train_main([*_args("configs/sdm_phantom.yaml", SDM, cache), "--run-dir", str(run)]) == 0
    return run


def test_shipped_configs_load_as_their_tasks() -> None:
    assert isinstance(load_experiment("configs/rigid_phantom.yaml"), RigidExperiment)
    sdm = load_experiment("configs/sdm_phantom.yaml")
    assert isinstance(sdm, SdmExperiment)
    assert sdm.data.phantoms is not None
    assert sdm.data.phantoms.shape_only
    own = load_experiment("configs/rigid_own_data.yaml")
    assert isinstance(own, RigidExperiment)
    assert own.search.refine == "sitk"
    # Random frames are on by default: without them one training scan does not transfer.
    assert own.env.frame_motion[1] > 0
    assert own.env.frame_scale > 0
    sdm_own = load_experiment("configs/sdm_own_data.yaml")
    assert isinstance(sdm_own, SdmExperiment)
    # the agent learns from subjects drawn from the fitted model; k fits the 3 training scans
    assert sdm_own.sdm.samples > 0
    assert sdm_own.sdm.k < sdm_own.sdm.n_fields
    assert sdm_own.sdm.atlas is not None


def test_rigid_greedy_run_is_self_describing(rigid_run: Path) -> None:
    for name in ("config.yaml", "meta.json", "state.json", "summary.json", "validation.csv"):
        assert (rigid_run / name).is_file(), name
    assert (rigid_run / "checkpoints" / "best.pt").is_file()
    summary = json.loads((rigid_run / "summary.json").read_text())
    assert summary["num_timesteps"] >= 300
    assert {"success_rate", "median_mm", "median_s"} <= set(summary["validations"][0])


def test_evaluate_rigid_writes_tables_plots_and_the_oracle_floor(rigid_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = evaluate_main(
        [str(rigid_run), "--trials", "2", "--misalignments", "15", "30", "--conditions", "mono", "partial",
         "--png", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the agent's final answer is also reported through the plausibility guard (search.guard)
    assert set(metrics) == {"agent", "agent+guard", "oracle"}
    guarded = metrics["agent+guard"]["mono"]["30"]
    assert 0.0 <= guarded["fallback_rate"] <= 1.0
    assert guarded["n"] == 2
    header = (out / "registrations.csv").read_text().splitlines()[0].split(",")
    assert {"fallback", "fallback_reason"} <= set(header)
    oracle = metrics["oracle"]["mono"]["30"]
    assert oracle["n"] == 2
    assert oracle["success_rate"] == 1.0  # 1 mm / 1 deg finest steps: the floor is below 2 mm
    assert oracle["before_mean_mm"] > 10.0
    for name in ("registrations.csv", "metrics.md", "success_vs_misalignment.png", "overlay_mono_0.png"):
        assert (out / name).is_file(), name


def test_evaluate_register_writes_files_slicer_and_simpleitk_read(
    rigid_run: Path, cache: Path, tmp_path: Path
) -> None:
    fixed_path = next(cache.rglob("phantom_test_000*.nii.gz"))
    fixed = io.read_volume(fixed_path)
    moving_path = tmp_path / "moving.nrrd"
    io.write_volume(fixed, moving_path)
    out = tmp_path / "registered"
    assert (
        evaluate_main([str(rigid_run), "--register", str(fixed_path), str(moving_path), "--out", str(out)])
        == 0
    )
    transform = sitk.ReadTransform(str(out / "transform.tfm"))
    assert transform.GetNumberOfParameters() == 6
    assert io.read_volume(out / "warped.nii.gz").shape_zyx == fixed.shape_zyx
    assert (out / "trajectory.csv").read_text().startswith("step,level,tx_mm")
    assert json.loads((out / "registration.json").read_text())["fallback"] in (None, "sitk")


def _agent_results(out: Path) -> list[tuple[str, ...]]:
    """registrations.csv's agent rows without their timings: case, condition, start, TRE before, after."""
    rows = csv.DictReader((out / "registrations.csv").open())
    keys = ("case_id", "condition", "misalignment", "before_mm", "after_mm", "steps")
    return [tuple(row[key] for key in keys) for row in rows if row["method"] == "agent"]


def test_an_ensemble_registers_with_the_mean_of_its_networks(
    rigid_run: Path, rigid_run_seed1: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(rigid_run, copy)  # the same weights
    common = ["--trials", "3", "--misalignments", "30", "--conditions", "mono", "--png", "0"]
    assert evaluate_main([str(rigid_run), *common, "--out", str(tmp_path / "one")]) == 0
    assert (
        evaluate_main([str(rigid_run), str(copy), "--ensemble", *common, "--out", str(tmp_path / "same")])
        == 0
    )
    assert evaluate_main([str(rigid_run_seed1), *common, "--out", str(tmp_path / "other")]) == 0
    pair = [str(rigid_run), str(rigid_run_seed1), "--ensemble", *common]
    assert evaluate_main([*pair, "--out", str(tmp_path / "pair")]) == 0
    one, other, both = (_agent_results(tmp_path / name) for name in ("one", "other", "pair"))
    assert len(one) == 3
    # two equal networks average to the same Q-values: the same registrations, step for step
    assert _agent_results(tmp_path / "same") == one
    # two different networks: the same pairs and starts, other answers than either network's alone
    assert [row[:4] for row in both] == [row[:4] for row in one]
    assert both not in (one, other)
    assert "ensemble of rigid_run + rigid_run_seed1" in (tmp_path / "pair" / "metrics.md").read_text()


def test_search_settings_reach_a_registration_run(rigid_run: Path, tmp_path: Path) -> None:
    common = ["--trials", "2", "--misalignments", "30", "--conditions", "mono", "--png", "0"]
    assert evaluate_main([str(rigid_run), *common, "--out", str(tmp_path / "plain")]) == 0
    symmetric = [*common, "--search", "symmetric=true", "--out", str(tmp_path / "symmetric")]
    assert evaluate_main([str(rigid_run), *symmetric]) == 0
    plain, both = _agent_results(tmp_path / "plain"), _agent_results(tmp_path / "symmetric")
    assert [row[:4] for row in both] == [row[:4] for row in plain]  # the same pairs and starts
    # the inverse search runs too: more steps for every registration
    assert all(int(b[5]) > int(p[5]) for b, p in zip(both, plain, strict=True))
    assert "symmetric: false" in (rigid_run / "config.yaml").read_text()  # the run is not changed


def test_register_with_an_ensemble_writes_beside_the_single_runs_registrations(
    rigid_run: Path, rigid_run_seed1: Path, cache: Path, tmp_path: Path
) -> None:
    fixed_path = next(cache.rglob("phantom_test_000*.nii.gz"))
    moving_path = tmp_path / "moving.nrrd"
    io.write_volume(io.read_volume(fixed_path), moving_path)
    argv = [
        str(rigid_run),
        str(rigid_run_seed1),
        "--ensemble",
        "--register",
        str(fixed_path),
        str(moving_path),
    ]
    assert evaluate_main(argv) == 0
    out = rigid_run / "registrations-ensemble" / fixed_path.name.split(".")[0]
    assert sitk.ReadTransform(str(out / "transform.tfm")).GetNumberOfParameters() == 6
    assert json.loads((out / "registration.json").read_text())["steps"] > 0


def test_sdm_runs_and_mixed_tasks_are_not_ensembled(
    rigid_run: Path, sdm_run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert evaluate_main([str(sdm_run), str(sdm_run), "--ensemble"]) == 2
    assert "is given twice" in capsys.readouterr().err
    assert evaluate_main([str(rigid_run), str(sdm_run), "--ensemble"]) == 2
    assert "mix tasks" in capsys.readouterr().err


def test_a_failed_evaluation_removes_only_the_folder_it_made(
    rigid_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a case could not be read")

    monkeypatch.setattr(importlib.import_module("agents.experiments.registration"), "evaluate_rigid", broken)
    common = ["--trials", "1", "--misalignments", "15", "--conditions", "mono"]
    fresh = tmp_path / "new" / "eval"
    assert evaluate_main([str(rigid_run), *common, "--out", str(fresh)]) == 2
    assert "a case could not be read" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # everything this call made is gone
    mine = tmp_path / "mine"
    mine.mkdir()
    assert evaluate_main([str(rigid_run), *common, "--out", str(mine)]) == 2
    assert mine.is_dir()  # a folder the user had stays


def test_a_killed_evaluation_removes_the_folder_it_made(rigid_run: Path, tmp_path: Path) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) mid-evaluation: exit status 143, no folder left."""
    out = tmp_path / "eval"
    argv = [str(rigid_run), "--trials", "20", "--conditions", "mono", "--out", str(out)]
    with (tmp_path / "evaluate.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "evaluate.py"), *argv], env=PROCESS_ENV, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 120.0
    while not out.exists():
        assert process.poll() is None, (tmp_path / "evaluate.log").read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    assert process.poll() is None, "the evaluation ended before it could be killed"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not out.exists()


def test_dqn_also_trains_on_the_rigid_env(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "dqn_run"
    args = _args(
        "configs/rigid_phantom.yaml", [*RIGID, "agent.algorithm=double", "train.total_timesteps=200"], cache
    )
    assert train_main([*args, "--run-dir", str(run)]) == 0
    assert (run / "checkpoints" / "latest.pt").is_file()


def test_sdm_run_saves_its_model_and_evaluates_with_dice(sdm_run: Path, tmp_path: Path) -> None:
    from envs.tasks import StatisticalDeformationModel

    model = StatisticalDeformationModel.load(sdm_run / "sdm.npz")
    assert model.k == 3
    out = tmp_path / "eval"
    assert evaluate_main([str(sdm_run), "--out", str(out), "--png", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"agent", "oracle", "mean shape"} <= set(metrics)
    oracle, mean_shape = metrics["oracle"]["sdm"]["0"], metrics["mean shape"]["sdm"]["0"]
    assert oracle["mean_mm"] < oracle["before_mean_mm"]
    assert 0.0 < mean_shape["dice_mean"] <= oracle["dice_mean"] <= 1.0


def test_bad_registration_configs_fail_in_one_line(cache: Path, capsys: pytest.CaptureFixture) -> None:
    for override, expected in [
        ("env.contrast=pet", "config env.contrast: expected same, multimodal or mixed"),
        (
            "env.translation_steps_mm=[1.0]",
            "config env.translation_steps_mm: expected one positive step per level",
        ),
        ("env.obs_size=3", "config env.obs_size: expected >= 9"),
    ]:
        code = train_main(_args("configs/rigid_phantom.yaml", [override], cache))
        assert code == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message
        assert expected in message
    with pytest.raises(ConfigError, match=r"expected one of \['landmark', 'rigid', 'sdm'"):
        load_experiment(None, ["task=affine"])


def test_evaluate_register_needs_two_files_for_rigid(rigid_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert evaluate_main([str(rigid_run), "--register", "only_one.nii.gz"]) == 2
    assert "expected FIXED MOVING" in capsys.readouterr().err


def test_validation_scores_prefer_success_then_median() -> None:
    from agents.experiments import alignment_score

    better = {"success_rate": 0.9, "median_mm": 1.5, "p95_mm": 9.0}
    worse = {"success_rate": 0.8, "median_mm": 1.0, "p95_mm": 2.0}
    assert alignment_score(better) < alignment_score(worse)
    assert np.isfinite(alignment_score(better)).all()
