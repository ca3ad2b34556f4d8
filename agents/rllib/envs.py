"""The landmark train env inside RLlib's env runners (other processes), built from the experiment.

:func:`env_config` packs what a runner needs as plain data (the resolved experiment from
:func:`agents.experiments.loading.to_mapping`, the landmark order); :func:`register_landmark_env`
registers :func:`make_landmark_env` with Ray Tune's registry under
:data:`agents.rllib.config.ENV_NAME`, which ships it to every runner. Each runner rebuilds the
experiment (:func:`agents.experiments.loading.experiment_from_mapping`) and the dataset
(phantoms already written by the driver are read from ``data.phantoms.cache_dir``), once per
process, and makes ``medgym/LandmarkDetection-v0`` with the keyword arguments the SB3 path uses
(:func:`landmark_env_kwargs`).

Seeds: RLlib resets runner ``w``'s vector env with ``seed + w`` (sub-env ``i``: ``seed + w + i``),
so two runners would replay each other's episodes shifted by one env. :class:`RunnerSeed` mixes
the runner index into the reset seed, so every (runner, env) pair draws its own episodes and a
run stays reproducible.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import gymnasium as gym
import numpy as np
from ray.tune.registry import register_env

import envs
from agents.experiments.config import LandmarkExperiment
from agents.experiments.data import prepare_dataset
from agents.experiments.loading import experiment_from_mapping, to_mapping
from agents.networks import set_torch_threads
from agents.rllib.config import ENV_NAME
from envs.data import Dataset

__all__ = ["RunnerSeed", "env_config", "landmark_env_kwargs", "make_landmark_env", "register_landmark_env"]

_DATASETS: dict[str, Dataset] = {}  # one dataset (and its cache) per runner process and experiment


def landmark_env_kwargs(experiment: LandmarkExperiment, dataset: Dataset, names: list[str]) -> dict[str, Any]:
    """Keyword arguments of ``medgym/LandmarkDetection-v0`` for the training split, as the SB3 path."""
    env = experiment.env
    return dict(
        dataset=dataset,
        split="train",
        landmarks=names,
        levels_mm=env.levels_mm,
        patch_size=env.patch_size,
        frames=env.frames,
        preset=env.preset,
        augment=experiment.augment,
        world_seed=experiment.seed,
        max_episode_steps=env.max_episode_steps,
    )


def env_config(experiment: LandmarkExperiment, names: list[str]) -> dict[str, Any]:
    """RLlib's ``env_config``: plain data that rebuilds the train env in a runner."""
    return {"experiment": to_mapping(experiment), "landmarks": list(names)}


class RunnerSeed(gym.Wrapper):
    """Mixes the env runner's index into ``reset(seed=...)`` (see the module docstring).

    Args:
        env: The env.
        worker_index: The runner's index (RLlib's ``EnvContext.worker_index``, 1-based for remote runners).
    """

    def __init__(self, env: gym.Env, worker_index: int) -> None:
        super().__init__(env)
        self.worker_index = int(worker_index)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        """Reset; a given seed becomes a seed of its own for this runner."""
        if seed is not None:
            seed = int(np.random.SeedSequence([seed, self.worker_index]).generate_state(1)[0])
        return self.env.reset(seed=seed, options=options)


def make_landmark_env(config: dict[str, Any]) -> gym.Env:
    """RLlib env creator: the landmark train env of ``config`` (an ``env_config`` / ``EnvContext``).

    Runs in the env runner's process: torch gets one thread, the dataset is loaded once per process.
    """
    set_torch_threads(1)
    key = json.dumps(config["experiment"], sort_keys=True)
    experiment = experiment_from_mapping(copy.deepcopy(config["experiment"]))
    if not isinstance(experiment, LandmarkExperiment):
        raise ValueError(f"agent.backend rllib: expected a landmark experiment, got task {experiment.task!r}")
    if key not in _DATASETS:
        _DATASETS[key] = prepare_dataset(experiment)
    kwargs = landmark_env_kwargs(experiment, _DATASETS[key], list(config["landmarks"]))
    env = gym.make(envs.LANDMARK_ENV_ID, **kwargs)
    return RunnerSeed(env, getattr(config, "worker_index", 0))


def register_landmark_env() -> str:
    """Register :func:`make_landmark_env` with Ray's registry (call after ``ray.init``); returns its name."""
    register_env(ENV_NAME, make_landmark_env)
    return ENV_NAME
