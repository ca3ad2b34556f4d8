"""Run folders: the self-describing results of one training run, and their life cycle.

Layout::

    RUN/config.yaml        the resolved experiment (every default filled in)
    RUN/meta.json          package versions, seed, command line, start time
    RUN/landmarks.json     landmark task: the model's output order
    RUN/state.json         steps done, best validation score, patience (updated during training)
    RUN/validation.csv     one row per validation
    RUN/summary.json       the last training session: steps, speed, best figure, validations
    RUN/checkpoints/latest.pt, best.pt   policy weights only (agents.checkpoints)
    RUN/checkpoints/previous.pt          the checkpoint latest.pt replaced (the fallback)
    RUN/tb/                TensorBoard logs

Every file is written through :mod:`envs.io.atomic` (never half-written), and every JSON file
is strict JSON (:func:`json_text`: no ``Infinity``/``NaN``; a non-finite number is ``null``).

Life cycle: :func:`check_run_dir` refuses a ``--run-dir`` that is a file or a non-empty folder
other than a run, before any work; :func:`create_run` makes the folder (or takes an empty one)
and records what it made; :func:`new_run_or_nothing` removes exactly that if training fails or
is interrupted (exception, Ctrl-C, SIGTERM) before the first checkpoint, never anything that
existed before. A run killed at any moment (``kill -9``) resumes with ``--resume``:
:func:`resume_point` loads ``latest.pt`` (or ``previous.pt`` when ``latest.pt`` is damaged, with
a warning) and the step it was saved at.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.checkpoints import load_policy, read_checkpoint
from agents.experiments.config import Experiment
from agents.experiments.loading import experiment_from_mapping, to_mapping
from envs.io.atomic import atomic_write_text, check_output_folder, make_folders

__all__ = [
    "Run",
    "check_run_dir",
    "create_run",
    "handle_sigterm",
    "json_text",
    "new_run_or_nothing",
    "open_run",
    "package_versions",
    "resume_model",
    "resume_point",
]


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan) replaced by None, numpy scalars as Python."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value: Any) -> str:
    """Strict JSON (indented, one trailing newline): inf and nan are written as ``null``.

    Readers give ``null`` back its meaning (an infinite error: no validation yet, or a lost
    landmark). ``allow_nan=False`` makes any value that slips past the conversion fail loudly.

    >>> print(json_text({"best": float("inf"), "score": [float("nan")]}), end="")
    {
      "best": null,
      "score": [
        null
      ]
    }
    """
    return json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run's numbers depend on."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("medgym", "torch", "stable-baselines3", "gymnasium", "SimpleITK", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class Run:
    """A run folder and the experiment it holds."""

    path: Path
    experiment: Experiment
    # What create_run made in this process (a new run): the top-most folder it created, or
    # None when the run folder existed (empty) before. Never set for an opened run.
    made_folder: Path | None = field(default=None, compare=False, repr=False)
    new: bool = field(default=False, compare=False, repr=False)
    # An ensemble (evaluate.py --ensemble): other runs whose networks' Q-values are averaged with
    # this run's at every step of a search (agents.experiments.ensemble checks that they match).
    members: tuple[Run, ...] = ()

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_policy(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def latest_policy(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def previous_policy(self) -> Path:
        """The checkpoint ``latest.pt`` replaced: the fallback when ``latest.pt`` is damaged."""
        return self.checkpoints / "previous.pt"

    def policy_path(self) -> Path:
        """The best checkpoint when there is one, else the latest."""
        for path in (self.best_policy, self.latest_policy):
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"run {self.path}: no checkpoint in {self.checkpoints} (best.pt or latest.pt); "
            "the run stopped before its first checkpoint; train longer or resume it"
        )

    def policy_paths(self) -> list[Path]:
        """The checkpoint of this run, then of each ensemble member (see :attr:`members`)."""
        return [self.policy_path(), *(member.policy_path() for member in self.members)]

    def eval_folder(self, split: str) -> Path:
        """evaluate.py's default output folder for ``split`` (an ensemble's: ``eval-SPLIT-ensemble``)."""
        return self.path / (f"eval-{split}-ensemble" if self.members else f"eval-{split}")

    def landmark_names(self) -> list[str]:
        """The landmarks the run's model was trained on, in its output order."""
        path = self.path / "landmarks.json"
        if not path.is_file():
            raise ValueError(f"run folder {self.path}: no landmarks.json; it was not made by train.py")
        return list(json.loads(path.read_text())["landmarks"])

    def write_landmark_names(self, names: list[str]) -> None:
        """Record the model's landmark order (evaluate.py reads it back)."""
        atomic_write_text(self.path / "landmarks.json", json_text({"landmarks": names}))

    def read_state(self) -> dict[str, Any]:
        """state.json (empty when there is none); ``null`` numbers mean infinity (see json_text)."""
        path = self.path / "state.json"
        if not path.is_file():
            return {}
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"run folder {self.path}: state.json is not valid JSON ({error})") from None
        if not isinstance(state, dict):
            raise ValueError(f"run folder {self.path}: state.json is not a JSON object")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.path / "state.json", json_text(state))

    def update_state(self, **fields: Any) -> None:
        """Merge ``fields`` into state.json (keys keep their first position)."""
        state = self.read_state()
        state.update(fields)
        self.write_state(state)


def check_run_dir(path: str | os.PathLike[str] | None) -> None:
    """Refuse a ``--run-dir`` that train.py may not use, before any work is done.

    Accepted: a folder that does not exist yet (its parent must be writable) or an empty
    folder. Refused (ValueError, one line naming the folder): a file, a folder that holds a run
    (resume it instead), any other non-empty folder (train.py never writes into a folder of
    yours, so that a failed run can never delete anything of yours), a folder that is not writable.
    """
    if path is None:
        return
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--run-dir {folder}: is a file, not a folder; pick a new folder")
    if folder.is_dir():
        if (folder / "config.yaml").exists():
            raise ValueError(
                f"run folder {folder} already holds a run; pick a new --run-dir or use --resume {folder}"
            )
        if any(folder.iterdir()):
            raise ValueError(
                f"--run-dir {folder}: the folder exists, is not empty and is not a medgym run; "
                "pick a new or empty folder (train.py does not write into a folder of yours)"
            )
    check_output_folder(folder, "--run-dir")


def create_run(experiment: Experiment, root: Path = Path("runs"), path: Path | None = None) -> Run:
    """Make a new run folder (default ``root/NAME-DATE``) with the resolved config and meta data.

    ``path`` may be a new or an empty folder (:func:`check_run_dir`); the returned run records
    what was made, so that :func:`new_run_or_nothing` can remove exactly that.
    """
    if path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{experiment.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(root) / f"{experiment.name}-{stamp}-{suffix}"
    path = Path(path)
    check_run_dir(path)
    run = Run(path, experiment, made_folder=make_folders(path), new=True)
    try:
        # config.yaml first: from then on the folder is a run that --resume can continue
        atomic_write_text(path / "config.yaml", yaml.safe_dump(to_mapping(experiment), sort_keys=False))
        meta = {
            "versions": package_versions(),
            "seed": experiment.seed,
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(path / "meta.json", json_text(meta))
        run.checkpoints.mkdir(exist_ok=True)
    except BaseException:
        _remove_new_run(run)
        raise
    return run


def open_run(path: str | Path) -> Run:
    """Open an existing run folder; a folder that is not one gets a clear error."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"run folder {folder}: not found; pass a folder made by train.py (runs/NAME-DATE)"
        )
    config = folder / "config.yaml"
    if not config.is_file():
        raise ValueError(
            f"run folder {folder}: not a medgym run (no config.yaml); pass a folder made by train.py"
        )
    try:
        mapping = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"run folder {folder}: config.yaml is not valid YAML ({error})") from None
    return Run(folder, experiment_from_mapping(mapping))


def _remove_new_run(run: Run) -> None:
    """Remove what :func:`create_run` and the training made, nothing else."""
    if not run.new:
        return
    if run.made_folder is not None:
        shutil.rmtree(run.made_folder, ignore_errors=True)
        return
    # The folder existed and was empty (check_run_dir): everything in it is this run's.
    for entry in list(run.path.iterdir()) if run.path.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class _Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that clean-up runs (exit status 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(128 + signum)


def handle_sigterm() -> Any:
    """Turn SIGTERM into :class:`_Terminated` (a ``SystemExit``, status 143), so that clean-up
    (``new_folder``, ``new_run_or_nothing``) runs when the process is killed; returns the
    previous handler (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        return None


@contextmanager
def new_run_or_nothing(run: Run) -> Iterator[Run]:
    """Yield ``run``; if the body fails before a new run's first checkpoint, remove what it made.

    Failures are exceptions, Ctrl-C (KeyboardInterrupt) and SIGTERM (turned into SystemExit
    with status 143 while the body runs). For a run :func:`create_run` made in this process, the
    removal takes exactly the folders and files it made: a folder that existed (empty) stays. A
    resumed run, or one that has a checkpoint, is never removed: ``--resume`` continues it.
    """
    previous_handler = handle_sigterm()
    try:
        yield run
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt | _Terminated)
        has_checkpoint = run.latest_policy.is_file() or run.previous_policy.is_file()
        if run.new and not has_checkpoint:
            _remove_new_run(run)
            if interrupted:
                print(f"train.py: interrupted; removed the run {run.path} it had made", file=sys.stderr)
        elif interrupted:
            print(f"train.py: interrupted; continue with --resume {run.path}", file=sys.stderr)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def resume_point(run: Run, env_or_spaces: Any) -> tuple[Any, int]:
    """The policy to continue from and its step: ``latest.pt``, else ``previous.pt``, else none.

    A damaged ``latest.pt`` (truncated, garbage) falls back to ``previous.pt`` with a warning
    on stderr;
    when both exist and both are damaged, ValueError names them. The step is the one saved in
    the checkpoint (older files: state.json's ``num_timesteps``). Without a checkpoint the
    run starts over: ``(None, 0)``. Temporaries of atomic writes that a killed session left are
    removed. Validation rows after that step (written by a session killed
    before its next checkpoint) are dropped from validation.csv, so its steps keep increasing.
    """
    _remove_stale_temporaries(run)
    state = run.read_state()
    problems = []
    for path in (run.latest_policy, run.previous_policy):
        if not path.is_file():
            continue
        try:
            payload = read_checkpoint(path, "--resume")
            policy = load_policy(path, env_or_spaces)
        except ValueError as error:
            problems.append(str(error))
            continue
        if problems:
            print(f"train.py: warning: {problems[0]}; resuming from {path} instead", file=sys.stderr)
        steps = payload.get("num_timesteps")
        steps = int(state.get("num_timesteps", 0) if steps is None else steps)
        _drop_rows_after(run.path / "validation.csv", steps)
        return policy, steps
    if problems:
        raise ValueError(" and ".join(problems) + f"; run {run.path} has no usable checkpoint")
    _drop_rows_after(run.path / "validation.csv", 0)
    return None, 0


def _remove_stale_temporaries(run: Run) -> None:
    """Remove the hidden temporaries of atomic writes a killed session left in the run folder."""
    for folder in (run.path, run.checkpoints):
        for stale in folder.glob(".*.tmp-*") if folder.is_dir() else []:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of validation.csv up to ``step`` (atomically); later ones are of lost training."""
    if not path.is_file():
        return
    rows = list(csv.DictReader(text_io.StringIO(path.read_text())))
    kept = [row for row in rows if float(row.get("step") or "nan") <= step]
    if len(kept) == len(rows):
        return
    print(
        f"train.py: note: dropped {len(rows) - len(kept)} validation row(s) after step {step} "
        f"(training after the last checkpoint was lost)",
        file=sys.stderr,
    )
    if not kept:
        atomic_write_text(path, "")
        return
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buffer.getvalue())


def resume_model(model: Any, policy: Any, done_steps: int, learning_starts: int) -> None:
    """Load resumed weights (from :func:`resume_point`) into an SB3 model; continue its step count.

    The replay buffer, the optimizer's moments and the RNG states are not saved: the buffer
    fills again (``learning_starts`` steps) before the first update. Nothing happens when
    ``policy`` is None (the run had no checkpoint yet).
    """
    if policy is None:
        return
    model.policy.q_net.load_state_dict(policy.q_net.state_dict())
    model.policy.q_net_target.load_state_dict(policy.q_net.state_dict())
    model.num_timesteps = done_steps
    model.learning_starts = done_steps + learning_starts
