"""RLlib's DQN (new API stack) as a training backend: ``agent.backend: rllib`` (extra ``medgym[ray]``).

- :mod:`agents.rllib.module`: :class:`VolumeDQNModule`, RLlib's DQN RLModule built from the
  project's 3-D conv Q-network, and the 1:1 weight conversion to the project's policy files;
- :mod:`agents.rllib.config`: :class:`RLlibSettings` (env runners, envs per runner) and the
  mapping of :class:`agents.dqn.AgentConfig` onto RLlib's ``DQNConfig``;
- :mod:`agents.rllib.envs`: the landmark train env built from the experiment inside each env runner;
- :mod:`agents.rllib.train`: :func:`train_rllib`, ``algo.train()`` iterations with the project's
  validation, best policy and checkpoints in an ordinary run folder.
"""

from agents.rllib.config import ENV_NAME, RLlibSettings, dqn_config, epsilon_schedule, training_intensity
from agents.rllib.envs import (
    RunnerSeed,
    env_config,
    landmark_env_kwargs,
    make_landmark_env,
    register_landmark_env,
)
from agents.rllib.module import (
    VolumeDQNModule,
    VolumeEncoder,
    module_model_config,
    policy_from_module_state,
    q_net_state,
)
from agents.rllib.train import RLlibModel, local_ray, module_policy, sampled_steps, train_rllib

__all__ = [
    "ENV_NAME",
    "RLlibModel",
    "RLlibSettings",
    "RunnerSeed",
    "VolumeDQNModule",
    "VolumeEncoder",
    "dqn_config",
    "env_config",
    "epsilon_schedule",
    "landmark_env_kwargs",
    "local_ray",
    "make_landmark_env",
    "module_model_config",
    "module_policy",
    "policy_from_module_state",
    "q_net_state",
    "register_landmark_env",
    "sampled_steps",
    "train_rllib",
    "training_intensity",
]
