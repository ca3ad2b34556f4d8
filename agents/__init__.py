"""Agents that learn or decide: 3-D conv value networks, DQN / Double DQN builders, pose replay."""

from agents.dqn import AgentConfig, DoubleDQN, build_model, load_policy, predict_q_values, save_policy
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
