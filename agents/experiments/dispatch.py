"""One experiment, start to finish: seeding, data checks, then the task's (and backend's) training.

``train.py`` calls :func:`train_experiment` once per run; a seed list or a sweep calls it once per
trial (in this process, or as Ray Tune trials), so every trial is an ordinary run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stable_baselines3.common.utils import set_random_seed

from agents.experiments.config import Experiment, LandmarkExperiment
from agents.experiments.custom import train_custom
from agents.experiments.custom_env import CustomExperiment
from agents.experiments.data import check_cases, prepare_dataset
from agents.experiments.landmark import train_landmark
from agents.experiments.registration import train_registration
from agents.experiments.runs import Run
from agents.networks import set_torch_threads

__all__ = ["train_experiment"]


def train_experiment(
    experiment: Experiment,
    run: Run | None = None,
    state: dict[str, Any] | None = None,
    run_dir: Path | None = None,
) -> int:
    """Train ``experiment`` into a new run folder (``run_dir``; default ``runs/NAME-DATE``), or
    continue ``run`` from ``state``. Returns the process exit status (0).

    Every case of every split is checked before a run folder exists, so bad input costs seconds
    and leaves nothing behind. ``task: custom`` (any Gymnasium env) goes to
    :func:`agents.experiments.custom.train_custom`, which checks its env the same way.
    """
    state = {} if state is None else state
    # 1. seeding and threads (1 torch thread on a small CPU is the fastest)
    set_torch_threads(experiment.agent.torch_threads)
    set_random_seed(experiment.seed)
    if isinstance(experiment, CustomExperiment):  # a plug-in env brings its own data
        return train_custom(experiment, run, state, run_dir)
    # 2. data
    dataset = prepare_dataset(experiment)
    check_cases(experiment, dataset)
    # 3. worlds, envs, run folder, model, callbacks, learning and summary, per task and backend
    if getattr(experiment.agent, "backend", "sb3") == "rllib":
        try:
            from agents.rllib import train_rllib  # optional extra: medgym[ray]
        except ModuleNotFoundError as error:  # one line from train.py instead of a traceback
            raise ValueError(
                f"config agent.backend: rllib needs Ray RLlib ({error}); install the extra: "
                "pip install 'medgym[ray]', or use agent.backend: sb3"
            ) from None

        return train_rllib(experiment, dataset, run, state, run_dir)
    if isinstance(experiment, LandmarkExperiment):
        return train_landmark(experiment, dataset, run, state, run_dir)
    return train_registration(experiment, dataset, run, state, run_dir)
