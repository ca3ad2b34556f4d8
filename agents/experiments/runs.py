"""Run folders: self-describing results of one training run.

Layout::

    RUN/config.yaml        the resolved experiment (every default filled in)
    RUN/meta.json          package versions, seed, command line, start time
    RUN/state.json         steps done, best validation figure (updated during training)
    RUN/validation.csv     one row per validation
    RUN/checkpoints/latest.pt, best.pt   policy weights only (agents.dqn.save_policy)
    RUN/tb/                TensorBoard logs

Every file is written atomically (temp file in the same folder, then rename).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.experiments.config import Experiment, experiment_from_mapping, to_mapping

__all__ = [
    "Run",
    "atomic_write_text",
    "create_run",
    "open_run",
    "package_versions",
]


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def package_versions() -> dict[str, str]:
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

    def read_state(self) -> dict[str, Any]:
        path = self.path / "state.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.path / "state.json", json.dumps(state, indent=2) + "\n")


def create_run(experiment: Experiment, root: Path = Path("runs"), path: Path | None = None) -> Run:
    """Make a new run folder with the resolved config and meta data."""
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
