"""Run folders: the self-describing results of one training run, and their life cycle.

Layout::

    RUN/config.yaml        the resolved experiment (every default filled in)
    RUN/meta.json          package versions, seed, command line, start time
    RUN/landmarks.json     landmark task: the model's output order
    RUN/state.json         steps done, best validation score, patience (updated during training)
    RUN/validation.csv     one row per validation
    RUN/summary.json       the last training session: steps, speed, best figure, validations
    RUN/checkpoints/latest.pt, best.pt   policy weights only (agents.checkpoints)
    RUN/tb/                TensorBoard logs

Every file is written through :mod:`envs.io.atomic` (never half-written).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.checkpoints import load_policy
from agents.experiments.config import Experiment
from agents.experiments.loading import experiment_from_mapping, to_mapping
from envs.io.atomic import atomic_write_text

__all__ = [
    "Run",
    "create_run",
    "new_run_or_nothing",
    "open_run",
    "package_versions",
    "resume_model",
]


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

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_policy(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def latest_policy(self) -> Path:
        return self.checkpoints / "latest.pt"

    def policy_path(self) -> Path:
        """The best checkpoint when there is one, else the latest."""
        for path in (self.best_policy, self.latest_policy):
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"run {self.path}: no checkpoint in {self.checkpoints} (best.pt or latest.pt); "
            "the run stopped before its first checkpoint; train longer or resume it"
        )

    def landmark_names(self) -> list[str]:
        """The landmarks the run's model was trained on, in its output order."""
        path = self.path / "landmarks.json"
        if not path.is_file():
            raise ValueError(f"run folder {self.path}: no landmarks.json; it was not made by train.py")
        return list(json.loads(path.read_text())["landmarks"])

    def write_landmark_names(self, names: list[str]) -> None:
        """Record the model's landmark order (evaluate.py reads it back)."""
        atomic_write_text(self.path / "landmarks.json", json.dumps({"landmarks": names}, indent=2) + "\n")

    def read_state(self) -> dict[str, Any]:
        path = self.path / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.path / "state.json", json.dumps(state, indent=2) + "\n")

    def update_state(self, **fields: Any) -> None:
        """Merge ``fields`` into state.json (keys keep their first position)."""
        state = self.read_state()
        state.update(fields)
        self.write_state(state)


def create_run(experiment: Experiment, root: Path = Path("runs"), path: Path | None = None) -> Run:
    """Make a new run folder (default ``root/NAME-DATE``) with the resolved config and meta data."""
    if path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{experiment.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(root) / f"{experiment.name}-{stamp}-{suffix}"
    path = Path(path)
    if (path / "config.yaml").exists():
        raise ValueError(
            f"run folder {path} already holds a run; pick a new --run-dir or use --resume {path}"
        )
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.yaml", yaml.safe_dump(to_mapping(experiment), sort_keys=False))
    meta = {
        "versions": package_versions(),
        "seed": experiment.seed,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(path / "meta.json", json.dumps(meta, indent=2) + "\n")
    return Run(path, experiment)


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


@contextmanager
def new_run_or_nothing(run: Run, created: bool) -> Iterator[Run]:
    """Yield ``run``; if the body fails before the first checkpoint of a run it ``created``, remove it.

    Bad input found only once learning started leaves no half-made run folder behind; a
    resumed run (``created`` False) is never removed.
    """
    try:
        yield run
    except BaseException:
        if created and not run.latest_policy.is_file():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def resume_model(model: Any, run: Run, env: Any, done_steps: int, learning_starts: int) -> None:
    """Load the run's latest weights into an SB3 model and continue its step count.

    The replay buffer is not saved: it fills again (``learning_starts`` steps) before the
    first update. Nothing happens when the run has no latest checkpoint yet.
    """
    if not run.latest_policy.is_file():
        return
    loaded = load_policy(run.latest_policy, env)
    model.policy.q_net.load_state_dict(loaded.q_net.state_dict())
    model.policy.q_net_target.load_state_dict(loaded.q_net.state_dict())
    model.num_timesteps = done_steps
    model.learning_starts = done_steps + learning_starts
