"""Supervised greedy Q-learning (Liao et al., AAAI 2017): Q regressed on the known rewards of all actions.

Where the ground truth is known at training time (registration, landmark detection), the reward
of every action from a state is known; the learner regresses the Q-network on all of them
(targets = immediate rewards, ``gamma = 0``) instead of bootstrapping from the one action taken.

- :mod:`agents.greedy.regression`: the settings (:class:`GreedyConfig`), the regression step
  (:class:`QRegression`) and the training loop that drives SB3 callbacks
  (:func:`train_with_callbacks`);
- :mod:`agents.greedy.alignment`: :class:`GreedyTrainer`, states from registration worlds;
- :mod:`agents.greedy.landmark`: :class:`LandmarkGreedyTrainer`, states from landmark envs.

The network, checkpoints and test-time search are those of the DQN agents: the learners train
an SB3 ``DQNPolicy`` built by :func:`agents.dqn.build_policy`.

The learner's settings are a :class:`GreedyConfig`. An experiment's ``agent`` section is an
:class:`agents.dqn.AgentConfig` for every algorithm, so that existing configs keep loading.
With ``algorithm: greedy``: the network fields (``dueling``, ``channels``, ``kernel_sizes``,
``strides``, ``features_dim``, ``channels_last``, ``net_arch``), ``learning_rate``,
``torch_threads`` and ``device`` build the policy (:func:`agents.dqn.build_policy`);
:meth:`GreedyConfig.from_agent_config` takes ``buffer_size`` and ``batch_size``; the DQN-only
fields (``gamma``, ``learning_starts``, ``train_freq``, ``gradient_steps``,
``target_update_interval``, ``exploration_*``, ``replay``) are accepted and not used. The
landmark learner walks ``env.n_envs`` envs with the network (plus one env for fresh resets).
"""

from agents.greedy.alignment import GreedyTrainer
from agents.greedy.landmark import LandmarkGreedyTrainer
from agents.greedy.regression import (
    MAX_BUFFER_SIZE,
    GreedyConfig,
    GreedyModel,
    QRegression,
    train_with_callbacks,
)

__all__ = [
    "MAX_BUFFER_SIZE",
    "GreedyConfig",
    "GreedyModel",
    "GreedyTrainer",
    "LandmarkGreedyTrainer",
    "QRegression",
    "train_with_callbacks",
]
