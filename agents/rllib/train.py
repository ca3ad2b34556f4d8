"""``agent.backend: rllib``: RLlib's DQN on the landmark env, into an ordinary run folder.

:func:`train_rllib` is what :func:`agents.experiments.dispatch.train_experiment` calls for the
rllib backend. It builds the same worlds, run folder, validation and callbacks as the SB3 path
(:func:`agents.experiments.landmark.train_landmark`) and replaces ``model.learn`` by
``algo.train()`` iterations of RLlib's DQN (new API stack) with ``agent.rllib_env_runners`` env
runner processes. Before each validation or checkpoint the learner's RLModule weights are
converted to the project's policy (:func:`agents.rllib.module.policy_from_module_state`), so
``checkpoints/best.pt`` and ``latest.pt`` are ordinary policy files and ``evaluate.py`` scores the
run like any other.

Differences from the SB3 path: the replay stores patches (no pose replay); ``--resume`` is
refused (RLlib's replay and optimizer are not in the run folder); only the landmark task.

This package imports the submodules of :mod:`agents.experiments`, not the package: the package
imports :mod:`agents.experiments.dispatch`, which imports this module (an import cycle).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, LEARNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.dqn.policies import DQNPolicy

from agents.experiments.config import Experiment, LandmarkExperiment
from agents.experiments.data import make_world, validation_split
from agents.experiments.landmark import ACTIONS
from agents.experiments.monitor import training_callbacks, write_summary
from agents.experiments.runs import Run, check_run_dir, create_run, new_run_or_nothing
from agents.experiments.validation import landmark_score, validate
from agents.rllib.config import RLlibSettings, dqn_config
from agents.rllib.envs import env_config, register_landmark_env
from agents.rllib.module import policy_from_module_state
from envs.data import Dataset

__all__ = ["RLlibModel", "local_ray", "module_policy", "sampled_steps", "train_rllib"]

_ROOT = Path(__file__).resolve().parents[2]  # the checkout: runner processes import agents/envs from it
_PRINT_EVERY_S = 30.0


@contextmanager
def local_ray(num_cpus: int) -> Iterator[bool]:
    """A local Ray with ``num_cpus`` CPUs unless Ray is already initialised (e.g. a cluster).

    Yields whether this call started Ray; only then is it shut down on exit. Runner processes get
    this checkout on ``PYTHONPATH`` and one OpenMP thread.
    """
    if ray.is_initialized():
        yield False
        return
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )
    try:
        yield True
    finally:
        ray.shutdown()


def module_policy(algo: Algorithm, observation_space: Any) -> DQNPolicy:
    """The learner's current RLModule weights as the project's policy (CPU, eval mode)."""
    weights = algo.learner_group.get_weights(module_ids=[DEFAULT_MODULE_ID])[DEFAULT_MODULE_ID]
    model_config = algo.config.rl_module_spec.model_config
    return policy_from_module_state(weights, model_config, observation_space, ACTIONS)


def sampled_steps(result: dict[str, Any]) -> int:
    """Env steps sampled so far (all runners) from an ``algo.train()`` result."""
    return int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))


class RLlibModel:
    """The parts of an SB3 model the training callbacks read: ``policy``, ``logger``, ``num_timesteps``.

    ``policy`` converts the learner's weights on first access after each step count change, so
    iterations without validation or checkpoint cost no conversion.
    """

    def __init__(self, algo: Algorithm, observation_space: Any, logger: Any) -> None:
        self.algo = algo
        self.observation_space = observation_space
        self.logger = logger
        self.num_timesteps = 0
        self._policy: DQNPolicy | None = None
        self._policy_step = -1

    @property
    def policy(self) -> DQNPolicy:
        """The project policy with the learner's weights at ``num_timesteps``."""
        if self._policy is None or self._policy_step != self.num_timesteps:
            self._policy = module_policy(self.algo, self.observation_space)
            self._policy_step = self.num_timesteps
        return self._policy


def train_rllib(
    experiment: Experiment,
    dataset: Dataset,
    run: Run | None,
    state: dict[str, Any],
    run_dir: Path | None,
) -> int:
    """Train RLlib's (Double, dueling) DQN on the landmark env into a new run folder; returns 0.

    ``run`` (a run to resume) is refused. A failure or an interrupt before the first checkpoint
    removes only what this call made (:func:`agents.experiments.runs.new_run_or_nothing`).

    Raises:
        ValueError: ``--resume`` of an rllib run, a task other than landmark, ``agent.algorithm:
            greedy``, or bad RLlib settings (one line naming the field).
    """
    if run is not None:
        raise ValueError(
            f"--resume {run.path}: runs of agent.backend rllib cannot be resumed (RLlib's replay and "
            "optimizer are not kept in the run folder); start a new run"
        )
    if not isinstance(experiment, LandmarkExperiment):
        raise ValueError(
            f"config agent.backend: rllib trains task landmark only, got task {experiment.task!r}; "
            "use agent.backend: sb3"
        )
    settings = RLlibSettings.from_experiment(experiment)
    check_run_dir(run_dir)  # refused now, before the worlds are built
    train_world = make_world(experiment, dataset, "train", augment=True)
    names = list(train_world.landmark_names)
    val_split = validation_split(dataset)
    if val_split == "train":
        print("train.py: warning: no val split; validating on the training cases", file=sys.stderr)
    val_world = make_world(experiment, dataset, val_split, landmarks=names)
    val_world.variant(0)  # loads one case now: a level finer than the data fails here, not mid-run
    observation_space = train_world.observation_space()
    config = dqn_config(
        experiment, settings, env_config(experiment, names), experiment.agent.resolved_device()
    )
    run = create_run(experiment, path=run_dir)
    with new_run_or_nothing(run), local_ray(settings.env_runners + 1):
        run.write_landmark_names(names)
        register_landmark_env()
        algo = config.build_algo()
        try:
            print(
                f"train.py: run folder {run.path} ({len(names)} landmarks, {len(train_world.cases)} training "
                f"cases, RLlib DQN: {settings.env_runners} env runner(s) x "
                f"{config.num_envs_per_env_runner} envs, {experiment.agent.algorithm})"
            )
            num_timesteps, minutes, validation = _learn(
                algo, experiment, run, observation_space, val_world, state
            )
        finally:
            algo.stop()
        rate = write_summary(run, validation, num_timesteps, 0, minutes)
        print(
            f"train.py: {num_timesteps} steps in {minutes:.1f} min ({rate:.0f} steps/s); "
            f"best validation median {validation.best_mm:.2f} mm; saved {run.best_policy}"
        )
        return 0


def _learn(
    algo: Algorithm,
    experiment: LandmarkExperiment,
    run: Run,
    observation_space: Any,
    val_world: Any,
    state: dict[str, Any],
) -> tuple[int, float, Any]:
    """``algo.train()`` until ``train.total_timesteps`` sampled steps or a callback stops it.

    Drives the SB3 callbacks by hand, as the greedy learner does: validation (best policy,
    early stop), checkpoints and the time limit see the sampled env steps. Returns the steps,
    the minutes and the validation callback.
    """
    max_cases = experiment.train.eval_cases
    callbacks, validation = training_callbacks(
        run,
        lambda policy: validate(policy, val_world, experiment, max_cases),
        landmark_score,
        experiment,
        0,
        state,
    )
    logger = configure_logger(str(run.path / "tb"), ["tensorboard"])
    model = RLlibModel(algo, observation_space, logger)
    callbacks.init_callback(model)  # type: ignore[arg-type]
    began = last_print = time.perf_counter()
    total = experiment.train.total_timesteps
    while model.num_timesteps < total:
        result = algo.train()
        model.num_timesteps = sampled_steps(result)
        learner = result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})
        episode_return = result.get(ENV_RUNNER_RESULTS, {}).get("episode_return_mean")
        for key, value in (("train/loss", learner.get("qf_loss")), ("rollout/ep_rew_mean", episode_return)):
            if value is not None:
                logger.record(key, float(value))
        logger.dump(model.num_timesteps)
        now = time.perf_counter()
        if experiment.train.progress_bar or now - last_print >= _PRINT_EVERY_S:
            last_print = now
            rate = model.num_timesteps / max(now - began, 1e-9)
            print(f"train.py: rllib: {model.num_timesteps}/{total} steps ({rate:.0f} steps/s)", flush=True)
        if not callbacks.on_step():
            break
    callbacks.on_training_end()
    return model.num_timesteps, (time.perf_counter() - began) / 60.0, validation
