"""Agents that learn or decide: 3-D conv value networks, DQN / Double DQN builders, pose replay.

Layers inside ``agents`` (each imports only from the ones above it): ``networks``, ``replay``;
``dqn``, ``checkpoints`` (policy files), ``baselines``; ``greedy``, ``search`` (test-time
search); ``experiments`` (configs, runs, training and evaluation pipelines).
"""

from agents.checkpoints import load_policy, save_policy
from agents.dqn import AgentConfig, DoubleDQN, build_model, predict_q_values
from agents.networks import (
    DuelingDQNPolicy,
    DuelingQNetwork,
    VolumeDQNPolicy,
    VolumeFeatures,
    set_torch_threads,
)
from agents.replay import PoseReplayBuffer

__all__ = [
    "AgentConfig",
    "DoubleDQN",
    "DuelingDQNPolicy",
    "DuelingQNetwork",
    "PoseReplayBuffer",
    "VolumeDQNPolicy",
    "VolumeFeatures",
    "build_model",
    "load_policy",
    "predict_q_values",
    "save_policy",
    "set_torch_threads",
]
