"""kill -9 at random moments of a real train.py, --resume each time, and the run completes intact.

Also: a damaged latest.pt falls back to previous.pt with a warning, and damaged checkpoints are
refused with a ValueError naming the file (never a torch or pickle traceback).
"""

from __future__ import annotations

import csv
import json
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import yaml
from scripts_support import LANDMARK_CONFIG, PROCESS_ENV, ROOT, config_args, tiny_landmark

from agents.checkpoints import load_policy, read_checkpoint
from agents.experiments import make_world, open_run, prepare_dataset

TOTAL = 1000
TINY = tiny_landmark(TOTAL, eval_every_steps=150, checkpoint_every_steps=100, learning_starts=50)
KILLS = 3
ACTIONS = gym.spaces.Discrete(6)  # the landmark task's six moves


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _steps(run: Path) -> int:
    try:
        return int(_strict_json(run / "state.json").get("num_timesteps", 0))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    environment = PROCESS_ENV
    with log.open("a") as stream:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *argv],
            cwd=log.parent,
            env=environment,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )


def _wait_for(condition, process: subprocess.Popen, log: Path, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"train.py ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], Path]:
    """A run killed with SIGKILL KILLS times at seeded random moments, resumed each time, then completed."""
    folder = tmp_path_factory.mktemp("crash")
    cache, run, log = folder / "phantoms", folder / "run", folder / "train.log"
    sets = [*TINY, f"data.phantoms.cache_dir={cache}"]
    new_run = config_args(LANDMARK_CONFIG, sets)
    rng = random.Random(9)
    killed_at: list[int] = []
    for kill in range(KILLS):
        before = _steps(run)
        process = _start([*new_run, "--run-dir", str(run)] if kill == 0 else ["--resume", str(run)], log)
        try:
            # after this session's first checkpoint, at a random moment of the next stretch
            _wait_for(lambda before=before: _steps(run) > before, process, log)
            moment = time.monotonic() + rng.uniform(0.0, 1.5)
            while time.monotonic() < moment and process.poll() is None:
                time.sleep(0.01)
            finished = process.poll() is not None  # a fast machine can finish within the wait
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        if finished:
            assert process.returncode == 0, log.read_text()[-3000:]
            break
        killed_at.append(_steps(run))
        if killed_at[-1] >= TOTAL:
            break
    final = _start(["--resume", str(run)], log)
    assert final.wait(timeout=300) == 0, log.read_text()[-3000:]
    return run, killed_at, log


def test_kill_9_at_random_moments_then_resume_completes_a_valid_run(
    killed_and_resumed: tuple[Path, list[int], Path],
) -> None:
    run, killed_at, log = killed_and_resumed
    assert len(killed_at) >= KILLS - 1, killed_at  # the last kill may come after the run finished
    assert all(0 < step < TOTAL for step in killed_at), killed_at  # every kill landed mid-training
    state = _strict_json(run / "state.json")
    assert state["num_timesteps"] == TOTAL
    summary = _strict_json(run / "summary.json")
    assert summary["num_timesteps"] == TOTAL
    rows = list(csv.DictReader((run / "validation.csv").open()))
    steps = [float(row["step"]) for row in rows]
    assert steps == sorted(set(steps)), steps  # no repeated or out-of-order validation
    assert steps[-1] == TOTAL
    assert all(value not in ("", None) for row in rows for value in row.values())
    assert {float(row["median_mm"]) >= 0 for row in rows} == {True}
    # every checkpoint loads into the env the run was trained for
    spaces = _spaces(run)
    for name in ("best.pt", "latest.pt", "previous.pt"):
        load_policy(run / "checkpoints" / name, spaces)
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["num_timesteps"] == TOTAL
    assert not [p for p in run.rglob(".*") if ".tmp-" in p.name]  # stale temporaries were cleared
    text = log.read_text()
    assert "Traceback" not in text


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    killed_and_resumed: tuple[Path, list[int], Path], tmp_path: Path
) -> None:
    source, _, _ = killed_and_resumed
    run = tmp_path / "run"
    shutil.copytree(source, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["total_timesteps"] = TOTAL + 200
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    latest = run / "checkpoints" / "latest.pt"
    previous_step = read_checkpoint(run / "checkpoints" / "previous.pt")["num_timesteps"]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--resume", str(run)],
        env=PROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" in result.stderr
    assert f"{latest} is truncated or not a policy file" in result.stderr
    assert "resuming from" in result.stderr
    assert "previous.pt" in result.stderr
    assert previous_step < TOTAL
    assert _strict_json(run / "state.json")["num_timesteps"] == TOTAL + 200
    rows = list(csv.DictReader((run / "validation.csv").open()))
    steps = [float(row["step"]) for row in rows]
    assert steps == sorted(set(steps))
    assert read_checkpoint(latest)["num_timesteps"] == TOTAL + 200


_SPACES: dict[Path, tuple] = {}


def _spaces(run: Path) -> tuple:
    """The observation and action spaces of the run's landmark env."""
    if run not in _SPACES:
        opened = open_run(run)
        dataset = prepare_dataset(opened.experiment)
        world = make_world(opened.experiment, dataset, "val", landmarks=opened.landmark_names())
        _SPACES[run] = (world.observation_space(), ACTIONS)
    return _SPACES[run]


def _damaged(kind: str, good: bytes, path: Path) -> None:
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"format": "medgym.policy", "evil": object.__name__}))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "no_weights":
        payload = torch.load(path.with_name("good.pt"), weights_only=True)
        del payload["q_net"]
        torch.save(payload, path)
    elif kind == "wrong_shapes":
        payload = torch.load(path.with_name("good.pt"), weights_only=True)
        payload["q_net"] = {key: torch.zeros(1) for key in payload["q_net"]}
        torch.save(payload, path)


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "garbage", "text", "pickle", "tensor", "no_weights", "wrong_shapes"]
)
def test_a_damaged_checkpoint_is_a_value_error_naming_the_file(
    killed_and_resumed: tuple[Path, list[int], Path], tmp_path: Path, kind: str
) -> None:
    source, _, _ = killed_and_resumed
    good = source / "checkpoints" / "best.pt"
    shutil.copy(good, tmp_path / "good.pt")
    path = tmp_path / "damaged.pt"
    path.write_bytes(good.read_bytes())
    _damaged(kind, good.read_bytes(), path)
    with pytest.raises(ValueError, match=str(path)) as raised:
        load_policy(path, _spaces(source))
    assert "\n" not in str(raised.value)
