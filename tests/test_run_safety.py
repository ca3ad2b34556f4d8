"""A failed or interrupted train.py removes only what it made; it never deletes a folder of yours.

Each case first puts something the user owns in place, makes training fail (an exception, Ctrl-C,
SIGTERM) before its first checkpoint, and checks that the user's things are untouched.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripts_support import LANDMARK_CONFIG, PROCESS_ENV, ROOT, config_args, tiny_landmark, train_main

from agents.experiments import landmark as landmark_module


def _args(cache: Path, *extra: str) -> list[str]:
    return config_args(LANDMARK_CONFIG, [*tiny_landmark(), f"data.phantoms.cache_dir={cache}", *extra])


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantom files shared by this module's trainings (written by the first one)."""
    return tmp_path_factory.mktemp("phantoms")


@pytest.fixture
def fail_before_checkpoint(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseException]]:
    """Make the next training raise (the exception type put in the list) right after its run folder exists."""
    kind: list[type[BaseException]] = [RuntimeError]

    def broken_model(*args: object, **kwargs: object) -> None:
        raise kind[0]("simulated failure before the first checkpoint")

    monkeypatch.setattr(landmark_module, "build_model", broken_model)
    return kind


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work\n")
    (folder / "notes" / "todo.txt").write_text("back up\n")
    return folder


def _one_line_error(capsys: pytest.CaptureFixture, phrase: str) -> None:
    lines = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()
    assert lines, "nothing on stderr"
    assert phrase in lines[-1], lines
    assert lines[-1].startswith("train.py: error: ")
    assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_training_never_deletes_a_folder_of_yours(
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    fail_before_checkpoint: list[type[BaseException]],
    failure: type[BaseException],
) -> None:
    """The data-loss bug: --run-dir on a folder with your files + a failure before the first checkpoint."""
    fail_before_checkpoint[0] = failure
    folder = _user_folder(tmp_path)
    before = _snapshot(folder)
    assert train_main([*_args(cache), "--run-dir", str(folder)]) == 2  # refused up front
    _one_line_error(capsys, f"--run-dir {folder}: the folder exists, is not empty and is not a medgym run")
    assert _snapshot(folder) == before


def test_run_dir_dot_is_refused_and_the_current_folder_kept(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _user_folder(tmp_path)
    before = _snapshot(folder)
    monkeypatch.chdir(folder)
    assert train_main([*_args(cache), "--run-dir", "."]) == 2
    _one_line_error(capsys, "--run-dir .: the folder exists, is not empty")
    assert _snapshot(folder) == before


def test_run_dir_that_is_a_file_or_a_run_is_refused(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "file.txt"
    path.write_text("mine\n")
    assert train_main([*_args(cache), "--run-dir", str(path)]) == 2
    _one_line_error(capsys, "is a file, not a folder")
    assert path.read_text() == "mine\n"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: landmark\n")
    assert train_main([*_args(cache), "--run-dir", str(run)]) == 2
    _one_line_error(capsys, f"use --resume {run}")
    assert (run / "config.yaml").read_text() == "task: landmark\n"


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_an_empty_folder_of_yours_stays_and_only_the_run_files_go(
    cache: Path,
    tmp_path: Path,
    fail_before_checkpoint: list[type[BaseException]],
    failure: type[BaseException],
) -> None:
    fail_before_checkpoint[0] = failure
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(failure, match="simulated failure"):
        train_main([*_args(cache), "--run-dir", str(folder)])
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


def test_folders_the_run_made_are_removed_up_to_the_first_one_it_made(
    cache: Path, tmp_path: Path, fail_before_checkpoint: list[type[BaseException]]
) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "keep.txt").write_text("mine\n")
    with pytest.raises(RuntimeError, match="simulated failure"):
        train_main([*_args(cache), "--run-dir", str(parent / "new" / "run")])
    assert sorted(p.name for p in parent.iterdir()) == ["keep.txt"]


def test_sigterm_before_the_first_checkpoint_removes_only_the_run_files(cache: Path, tmp_path: Path) -> None:
    """A real train.py process, terminated while it learns: exit 143, the empty folder stays empty."""
    folder = tmp_path / "empty"
    folder.mkdir()
    # no checkpoint for a long time: every 10^6 steps
    args = _args(
        cache,
        "train.total_timesteps=1000000",
        "train.eval_every_steps=1000000",
        "train.checkpoint_every_steps=1000000",
    )
    environment = PROCESS_ENV
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, "--run-dir", str(folder)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (folder / "tb").exists():  # the model exists: learning has begun
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "train.py did not start learning in time"
            time.sleep(0.2)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted; removed the run" in err
    assert folder.is_dir()
    assert list(folder.iterdir()) == []
