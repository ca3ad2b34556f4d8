"""Running the scripts from tests, in-process or as a real process, with tiny landmark configs.

Nothing imports ``train.py`` or ``evaluate.py`` (tests/test_layout.py checks it): tests run them
as a user does, in-process through ``runpy`` (fast, exceptions visible) or as a subprocess
(when a test must kill it).
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANDMARK_CONFIG = str(ROOT / "configs" / "landmark_phantom.yaml")
# The environment of a script run as a process: this checkout first, one OpenMP thread.
PROCESS_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def tiny_landmark(
    total_timesteps: int = 400,
    eval_every_steps: int = 200,
    checkpoint_every_steps: int = 200,
    learning_starts: int = 100,
) -> list[str]:
    """``--set`` values that shrink the landmark phantom config to a run of a few seconds."""
    return [
        "data.phantoms.n_train=2",
        "data.phantoms.n_val=1",
        "data.phantoms.n_test=1",
        f"train.total_timesteps={total_timesteps}",
        f"train.eval_every_steps={eval_every_steps}",
        f"train.checkpoint_every_steps={checkpoint_every_steps}",
        "train.progress_bar=false",
        f"agent.learning_starts={learning_starts}",
        "agent.buffer_size=1000",
        "agent.channels=[4, 8]",
        "agent.kernel_sizes=[5, 3]",
        "agent.strides=[2, 2]",
        "agent.features_dim=32",
        "agent.net_arch=[32]",
        "augment.variants_per_case=1",
        "env.patch_size=15",
    ]


def config_args(config: str, overrides: Iterable[str]) -> list[str]:
    """``[CONFIG, "--set", A, "--set", B, ...]``."""
    return [config, *(item for value in overrides for item in ("--set", value))]


def run_script(name: str, argv: list[str]) -> int:
    """``python NAME ARGV...`` in-process; returns the exit status."""
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(ROOT / name), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def train_main(argv: list[str]) -> int:
    return run_script("train.py", argv)


def evaluate_main(argv: list[str]) -> int:
    return run_script("evaluate.py", argv)
