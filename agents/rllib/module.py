"""RLlib's DQN RLModule (new API stack) built from the project's Q-network, and the weight conversion.

:class:`VolumeDQNModule` is RLlib's ``DefaultDQNTorchRLModule`` whose three parts are the project's
own layers (:func:`agents.checkpoints.make_policy` builds them, so the initialisation is the SB3
path's too):

====================  ==================================================  ==========================
RLlib part            project layer                                       checkpoint key prefix
====================  ==================================================  ==========================
``encoder``           SB3 ``preprocess_obs`` (one-hot of the Discrete     ``features_extractor.``
                      keys) + :class:`agents.networks.VolumeFeatures`
``af`` (advantage)    ``DuelingQNetwork.advantage_stream``, or            ``advantage_stream.`` /
                      ``QNetwork.q_net`` without dueling                  ``q_net.``
``vf`` (value)        ``DuelingQNetwork.value_stream`` (dueling only)     ``value_stream.``
====================  ==================================================  ==========================

RLlib combines the dueling streams as ``V + (A - mean A)``, the project's
:class:`agents.networks.DuelingQNetwork` as ``V + A - mean A``: the same Q-values. The weights so
map 1:1 (:func:`q_net_state`) onto the project's checkpoint format, and :func:`policy_from_module_state`
gives the SB3 ``DQNPolicy`` that :func:`agents.checkpoints.save_policy` writes and ``evaluate.py``
loads. The model config keys are those of :func:`module_model_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.schedules.scheduler import Scheduler
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from agents.checkpoints import make_policy
from agents.dqn import AgentConfig

__all__ = [
    "VolumeDQNModule",
    "VolumeEncoder",
    "module_model_config",
    "policy_from_module_state",
    "q_net_state",
]

# RLModule attribute prefix -> project Q-network prefix (see the module docstring's table).
_EXTRACTOR = {"encoder.features_extractor.": "features_extractor."}
_DUELING_KEYS = {**_EXTRACTOR, "af.": "advantage_stream.", "vf.": "value_stream."}
_PLAIN_KEYS = {**_EXTRACTOR, "af.": "q_net."}


def module_model_config(agent: AgentConfig) -> dict[str, Any]:
    """The ``model_config`` of :class:`VolumeDQNModule` for an agent config (plain, picklable values).

    ``dueling`` and ``double_q`` are also read by RLlib's DQN learner; ``net_arch`` and
    ``features_extractor_kwargs`` build the project's layers.
    """
    extractor = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in agent.features_extractor_kwargs().items()
    }
    return {
        "dueling": agent.dueling,
        "double_q": agent.algorithm == "double",
        "net_arch": list(agent.net_arch),
        "features_extractor_kwargs": extractor,
    }


class VolumeEncoder(nn.Module):
    """RLlib encoder: the batch's Dict observation through SB3's preprocessing and :class:`VolumeFeatures`.

    Args:
        features_extractor: A :class:`agents.networks.VolumeFeatures` (taken from a project Q-network).
        observation_space: The env's Dict space (the Discrete keys are one-hot encoded from it).

    Shapes:
        forward input: ``{"obs": {"patch": (B, frames, P, P, P) uint8, key: (B,) int}}``;
        output: ``{"encoder_out": (B, features_dim)}``.
    """

    def __init__(self, features_extractor: nn.Module, observation_space: spaces.Dict) -> None:
        super().__init__()
        self.features_extractor = features_extractor
        self.observation_space = observation_space

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Features of the batch's observations, under RLlib's ``ENCODER_OUT`` key."""
        # The same preprocessing as SB3's QNetwork.extract_features: Q-values then match exactly.
        observations = preprocess_obs(batch[Columns.OBS], self.observation_space, normalize_images=False)
        return {ENCODER_OUT: self.features_extractor(observations)}


class VolumeDQNModule(DefaultDQNTorchRLModule):
    """RLlib DQN RLModule (torch, new API stack) with the project's 3-D conv Q-network.

    Everything but :meth:`setup` is RLlib's: epsilon-greedy exploration, target networks, the
    Double-DQN forward pass of the learner. ``model_config`` holds :func:`module_model_config`
    plus RLlib's DQN keys (``epsilon`` schedule). Only the expectation head (``num_atoms == 1``) is
    supported, as in the project's agents.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Skip DefaultDQNTorchRLModule's default DQNCatalog: it cannot describe the Dict space (it
        # logs a warning in every runner) and setup() builds the layers without it.
        kwargs.pop("catalog_class", None)
        TorchRLModule.__init__(self, *args, **kwargs)

    def setup(self) -> None:
        """Build encoder and heads from a fresh project Q-network (no RLlib catalog is used)."""
        config = self.model_config
        if config.get("num_atoms", 1) != 1:
            raise ValueError(
                f"VolumeDQNModule: num_atoms must be 1 (no distributional head), got {config['num_atoms']}"
            )
        self.uses_dueling = bool(config["dueling"])
        self.uses_double_q = bool(config.get("double_q", True))
        self.num_atoms = 1
        self.epsilon_schedule = Scheduler(
            fixed_value_or_schedule=config.get("epsilon", 0.0), framework=self.framework
        )
        extractor_kwargs = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in config["features_extractor_kwargs"].items()
        }
        policy = make_policy(
            self.uses_dueling,
            self.observation_space,
            self.action_space,
            list(config["net_arch"]),
            extractor_kwargs,
        )
        q_net = policy.q_net
        self.encoder = VolumeEncoder(q_net.features_extractor, self.observation_space)
        if self.uses_dueling:
            self.af = q_net.advantage_stream
            self.vf = q_net.value_stream
        else:
            self.af = q_net.q_net


def q_net_state(module_state: Mapping[str, Any], dueling: bool) -> dict[str, torch.Tensor]:
    """The project Q-network's ``state_dict`` from a :class:`VolumeDQNModule` state (online net only).

    Args:
        module_state: ``module.get_state()`` or the learner group's weights of the module
            (tensors or numpy arrays); the target networks' keys are ignored.
        dueling: Whether the module is dueling (decides the head's key prefix).

    Returns:
        ``{key: tensor}`` that loads into ``DuelingQNetwork`` / ``QNetwork`` with ``strict=True``.

    Raises:
        ValueError: If a key of the online network has no counterpart (not a VolumeDQNModule state).
    """
    prefixes = _DUELING_KEYS if dueling else _PLAIN_KEYS
    state = {}
    for key, value in module_state.items():
        if key.startswith("_target_"):
            continue
        for rllib_prefix, project_prefix in prefixes.items():
            if key.startswith(rllib_prefix):
                name = project_prefix + key[len(rllib_prefix) :]
                tensor = torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value
                state[name] = tensor.detach().cpu().clone()
                break
        else:
            raise ValueError(f"q_net_state: unexpected key {key!r} in the RLModule state")
    return state


def policy_from_module_state(
    module_state: Mapping[str, Any],
    model_config: Mapping[str, Any],
    observation_space: spaces.Dict,
    action_space: spaces.Discrete,
) -> DQNPolicy:
    """The project policy (eval mode, CPU) holding a :class:`VolumeDQNModule`'s online weights.

    Its online and target Q-networks both get the module's online weights, as
    :func:`agents.checkpoints.load_policy` does; save it with :func:`agents.checkpoints.save_policy`.
    """
    extractor_kwargs = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in model_config["features_extractor_kwargs"].items()
    }
    dueling = bool(model_config["dueling"])
    policy = make_policy(
        dueling, observation_space, action_space, list(model_config["net_arch"]), extractor_kwargs
    )
    state = q_net_state(module_state, dueling)
    policy.q_net.load_state_dict(state)
    policy.q_net_target.load_state_dict(state)
    policy.set_training_mode(False)
    return policy
