"""RLlib-only settings and the mapping of an experiment onto RLlib's ``DQNConfig`` (new API stack).

How :class:`agents.dqn.AgentConfig` maps onto RLlib (``ray.rllib.algorithms.dqn.DQNConfig``):

==============================  ==============================================  ============================
AgentConfig                     RLlib                                           note
==============================  ==============================================  ============================
``algorithm`` dqn / double      ``double_q`` False / True                       greedy is refused
``dueling``                     ``dueling`` (the project's streams)             see :mod:`.module`
``learning_rate``               ``lr`` (Adam)                                   constant, as SB3
``gamma``                       ``gamma``
``buffer_size``                 ``EpisodeReplayBuffer`` ``capacity``            uniform replay (RLlib's
                                                                                default is prioritized);
                                                                                it stores patches, the pose
                                                                                replay does not exist here
``batch_size``                  ``train_batch_size_per_learner``
``learning_starts``             ``num_steps_sampled_before_learning_starts``    env steps, as SB3
``target_update_interval``      ``target_network_update_freq``, ``tau=1``       both count sampled env
                                                                                steps: same unit
``train_freq``, ``gradient_     ``rollout_fragment_length`` (a multiple of      SB3: ``gradient_steps``
steps``                         ``train_freq``) and ``training_intensity``      updates per ``train_freq``
                                (see below)                                     vector steps of ``n_envs``
``exploration_fraction``,       ``epsilon`` = [(0, 1.0), (fraction x            piecewise linear in global
``exploration_final_eps``       total_timesteps, final_eps)]                    sampled env steps
(SB3's ``max_grad_norm`` 10)    ``grad_clip=10``, ``grad_clip_by=global_norm``  RLlib's default is 40
(SB3's Huber loss)              ``td_error_loss_fn="huber"``
``device``                      ``num_gpus_per_learner`` 1 when CUDA            one local learner
``torch_threads``               the learner's (this process); every env
                                runner runs torch on 1 thread
``replay``                      not used (RLlib's replay keeps patches)
==============================  ==============================================  ============================

Training intensity. One RLlib ``training_step`` samples ``rollout_fragment_length`` (``F``) steps
from each of the ``R x E`` envs (``R`` runners, ``E`` envs each), then updates. SB3 makes
``gradient_steps`` updates per ``train_freq x env.n_envs`` env steps; to keep that ratio the
updates per round are ``u = R x E x F x gradient_steps / (train_freq x env.n_envs)``. RLlib reads
``training_intensity`` relative to its "natural" ratio ``batch / (F x E x (R + 1))`` (it counts
the local runner, which does not sample when ``R >= 1``) and rounds the result to whole sample or
update rounds; :func:`training_intensity` inverts that so that ``u`` updates follow each round.
Each round has a fixed cost in RLlib (remote call, replay insert, weight sync, metrics), so ``F``
defaults to ``train_freq`` times about ``64 / (E x train_freq)`` (at least 1): rounds of about 64
steps per runner, with ``u`` updates each (``bench/bench_rllib_scaling.py`` measures the rates).
The acting policy then lags the learner by up to one round, as it would in SB3 with a larger
``train_freq``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from agents.dqn import AgentConfig
from agents.experiments.config import Experiment
from agents.rllib.module import VolumeDQNModule, module_model_config

__all__ = ["ENV_NAME", "RLlibSettings", "dqn_config", "epsilon_schedule", "training_intensity"]

ENV_NAME = "medgym-rllib-landmark"
"""The name the env creator is registered under with Ray Tune's registry (:mod:`.envs`)."""

# Sample rounds per algo.train() iteration are capped so that validation and checkpoints keep their step.
_MAX_STEPS_PER_ITERATION = 1000
# Env steps per runner and sample round that the automatic rollout_fragment_length aims at.
_STEPS_PER_ROUND = 64


@dataclass(frozen=True)
class RLlibSettings:
    """RLlib-only knobs (read from ``agent.rllib_env_runners`` / ``agent.rllib_envs_per_env_runner``).

    Attributes:
        env_runners: Env runner processes (Ray actors) that sample, 1 CPU each.
        envs_per_env_runner: Envs stepped together in each runner (one batched forward pass);
            0 means ``ceil(env.n_envs / env_runners)``, so that the total is about ``env.n_envs``.
        rollout_fragment_length: Steps per env and sample round (``F``); 0 means automatic
            (rounds of about 64 steps per runner, a multiple of ``agent.train_freq``).
    """

    env_runners: int = 1
    envs_per_env_runner: int = 0
    rollout_fragment_length: int = 0

    def __post_init__(self) -> None:
        for name, low in (("env_runners", 1), ("envs_per_env_runner", 0), ("rollout_fragment_length", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"config agent.rllib_{name}: expected an integer >= {low}, got {value!r}")

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> RLlibSettings:
        """The settings of ``experiment.agent`` (the defaults where the fields are absent)."""
        agent = experiment.agent
        return cls(
            env_runners=getattr(agent, "rllib_env_runners", cls.env_runners),
            envs_per_env_runner=getattr(agent, "rllib_envs_per_env_runner", cls.envs_per_env_runner),
            rollout_fragment_length=getattr(
                agent, "rllib_rollout_fragment_length", cls.rollout_fragment_length
            ),
        )

    def envs_per_runner(self, n_envs: int) -> int:
        """Envs per runner for an experiment of ``env.n_envs`` envs."""
        return self.envs_per_env_runner or max(1, math.ceil(n_envs / self.env_runners))

    def fragment_length(self, train_freq: int, envs_per_runner: int) -> int:
        """Steps per env and sample round: the setting, or a multiple of ``train_freq`` near 64 / E."""
        if self.rollout_fragment_length:
            return self.rollout_fragment_length
        return train_freq * max(1, round(_STEPS_PER_ROUND / (envs_per_runner * train_freq)))


def epsilon_schedule(agent: AgentConfig, total_timesteps: int) -> list[tuple[int, float]]:
    """RLlib's epsilon schedule for SB3's linear decay over ``exploration_fraction`` of the steps."""
    end = max(1, int(agent.exploration_fraction * total_timesteps))
    return [(0, 1.0), (end, float(agent.exploration_final_eps))]


def training_intensity(
    agent: AgentConfig, n_envs: int, runners: int, envs_per_runner: int, fragment: int
) -> float | None:
    """``training_intensity`` that gives SB3's updates per env step (None: RLlib's 1 update per round).

    Args:
        agent: The agent settings (``batch_size``, ``train_freq``, ``gradient_steps``).
        n_envs: ``env.n_envs`` of the SB3 path the ratio is taken from.
        runners, envs_per_runner, fragment: RLlib's ``R``, ``E`` and ``F``.
    """
    gradient_steps = agent.train_freq * n_envs if agent.gradient_steps == -1 else agent.gradient_steps
    updates_per_round = runners * envs_per_runner * fragment * gradient_steps / (agent.train_freq * n_envs)
    if math.isclose(updates_per_round, 1.0):
        return None
    natural = agent.batch_size / (fragment * envs_per_runner * (runners + 1))
    return updates_per_round * natural


def dqn_config(
    experiment: Experiment, settings: RLlibSettings, env_config: dict[str, Any], device: str = "cpu"
) -> DQNConfig:
    """RLlib's DQN config (new API stack, torch) for ``experiment`` (mapping: module docstring).

    Args:
        experiment: A landmark experiment with ``agent.algorithm`` dqn or double.
        settings: Runners and envs per runner.
        env_config: What the env creator of :mod:`agents.rllib.envs` reads in each runner.
        device: ``"cpu"`` or a CUDA device for the (single, local) learner.

    Raises:
        ValueError: For ``agent.algorithm: greedy`` (a supervised learner, not DQN).
    """
    agent, train = experiment.agent, experiment.train
    if agent.algorithm not in ("dqn", "double"):
        raise ValueError(
            f"config agent.algorithm: backend rllib trains dqn or double, got {agent.algorithm!r}; "
            "use agent.backend: sb3 for the greedy learner"
        )
    envs_per_runner = settings.envs_per_runner(experiment.env.n_envs)
    fragment = settings.fragment_length(agent.train_freq, envs_per_runner)
    round_steps = settings.env_runners * envs_per_runner * fragment
    per_iteration = min(_MAX_STEPS_PER_ITERATION, train.eval_every_steps, train.checkpoint_every_steps)
    model_config = {**module_model_config(agent), "epsilon": epsilon_schedule(agent, train.total_timesteps)}
    config = (
        DQNConfig()
        .framework("torch")
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=settings.env_runners,
            num_envs_per_env_runner=envs_per_runner,
            rollout_fragment_length=fragment,
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0, num_gpus_per_learner=1 if device.startswith("cuda") else 0)
        .training(
            lr=agent.learning_rate,
            gamma=agent.gamma,
            train_batch_size_per_learner=agent.batch_size,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": agent.buffer_size},
            num_steps_sampled_before_learning_starts=agent.learning_starts,
            target_network_update_freq=agent.target_update_interval,
            tau=1.0,
            double_q=agent.algorithm == "double",
            dueling=agent.dueling,
            n_step=1,
            epsilon=model_config["epsilon"],
            grad_clip=10.0,
            grad_clip_by="global_norm",
            td_error_loss_fn="huber",
            training_intensity=training_intensity(
                agent, experiment.env.n_envs, settings.env_runners, envs_per_runner, fragment
            ),
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=VolumeDQNModule, model_config=model_config))
        .reporting(min_sample_timesteps_per_iteration=max(per_iteration, round_steps))
        .debugging(seed=experiment.seed, log_level="ERROR")
    )
    return config
