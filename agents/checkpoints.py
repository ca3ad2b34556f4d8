"""Policy checkpoints: the online Q-network's weights and the few settings that rebuild it.

A checkpoint holds plain tensors, strings and numbers (no replay buffer, optimizer, schedule or
env: an SB3 ``model.save`` can pickle all of those), so it loads with
``torch.load(weights_only=True)``. :func:`save_policy` writes through :mod:`envs.io.atomic`
(temporary sibling, fsync, rename): a crash never leaves a half-written file.
:func:`load_policy` refuses a file of another format or version, and spaces other than the ones
the policy was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.dqn.policies import DQNPolicy

from agents.networks import DuelingDQNPolicy, VolumeDQNPolicy, VolumeFeatures
from envs.io.atomic import atomic_path

__all__ = ["POLICY_FORMAT", "POLICY_FORMAT_VERSION", "load_policy", "make_policy", "save_policy"]

POLICY_FORMAT = "medgym.policy"
POLICY_FORMAT_VERSION = 1


def _describe_space(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: _describe_space(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    raise ValueError(f"save_policy: unsupported space {space}")


def make_policy(
    dueling: bool,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    net_arch: list[int],
    extractor_kwargs: dict[str, Any],
    learning_rate: float = 0.0,
) -> DQNPolicy:
    """A fresh Q-network policy (online + target nets, Adam) from the settings a checkpoint stores.

    Args:
        dueling: a :class:`agents.networks.DuelingDQNPolicy` when true, else a
            :class:`agents.networks.VolumeDQNPolicy`.
        observation_space, action_space: the env's spaces.
        net_arch: hidden layers of the Q head.
        extractor_kwargs: keyword arguments of :class:`agents.networks.VolumeFeatures`.
        learning_rate: the optimizer's constant learning rate (0 for a policy that only acts).
    """
    policy_class = DuelingDQNPolicy if dueling else VolumeDQNPolicy
    return policy_class(
        observation_space,
        action_space,
        lr_schedule=lambda _: learning_rate,
        net_arch=net_arch,
        features_extractor_class=VolumeFeatures,
        features_extractor_kwargs=extractor_kwargs,
    )


def save_policy(model: DQN | DQNPolicy, path: str | os.PathLike[str]) -> Path:
    """Write the online Q-network weights and what rebuilds it to ``path``, atomically.

    No replay buffer, optimizer, schedule or env is written: the file holds plain tensors, strings and
    numbers, and loads with ``torch.load(weights_only=True)``.

    Args:
        model: A model from :func:`agents.dqn.build_model` or its ``policy``.
        path: Destination file (conventionally ``*.pt``); its folder is created if needed.

    Returns:
        The path written.

    Raises:
        ValueError: If the policy does not use :class:`agents.networks.VolumeFeatures`.
    """
    policy = model.policy if isinstance(model, DQN) else model
    if policy.features_extractor_class is not VolumeFeatures:
        raise ValueError(
            "save_policy: expected a policy with VolumeFeatures, "
            f"got {policy.features_extractor_class.__name__}"
        )
    extractor_kwargs = {
        key: list(value) if isinstance(value, tuple | list) else value
        for key, value in policy.features_extractor_kwargs.items()
    }
    payload = {
        "format": POLICY_FORMAT,
        "version": POLICY_FORMAT_VERSION,
        "dueling": isinstance(policy, DuelingDQNPolicy),
        "net_arch": list(policy.net_arch),
        "features_extractor_kwargs": extractor_kwargs,
        "observation_space": _describe_space(policy.observation_space),
        "action_space": _describe_space(policy.action_space),
        "q_net": {key: value.detach().cpu() for key, value in policy.q_net.state_dict().items()},
    }
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return path


def load_policy(
    path: str | os.PathLike[str],
    env_or_spaces: gym.Env | VecEnv | tuple[spaces.Space, spaces.Space],
    device: str = "auto",
) -> DQNPolicy:
    """Rebuild a policy written by :func:`save_policy`, in eval mode.

    Args:
        path: The file.
        env_or_spaces: An env (Gymnasium or VecEnv) or ``(observation_space, action_space)``; they must
            match the spaces the policy was trained on.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        A ``DQNPolicy`` (dueling or not) whose online and target networks hold the saved weights.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a medgym policy or the spaces differ from the saved ones.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_policy: no policy file at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise ValueError(
            f"load_policy: {path} is not a medgym policy file (one written by agents.checkpoints.save_policy)"
        )
    if payload.get("version") != POLICY_FORMAT_VERSION:
        raise ValueError(
            f"load_policy: {path} has format version {payload.get('version')}, "
            f"expected {POLICY_FORMAT_VERSION}"
        )
    if isinstance(env_or_spaces, tuple):
        observation_space, action_space = env_or_spaces
    else:
        observation_space, action_space = env_or_spaces.observation_space, env_or_spaces.action_space
    for name, space in (("observation_space", observation_space), ("action_space", action_space)):
        if _describe_space(space) != payload[name]:
            raise ValueError(
                f"load_policy: {path} was trained on {name} {payload[name]}, got {_describe_space(space)}; "
                "use the env the policy was trained for"
            )
    extractor_kwargs = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in payload["features_extractor_kwargs"].items()
    }
    policy = make_policy(
        payload["dueling"], observation_space, action_space, list(payload["net_arch"]), extractor_kwargs
    )
    policy.q_net.load_state_dict(payload["q_net"])
    policy.q_net_target.load_state_dict(payload["q_net"])
    policy.set_training_mode(False)
    device = (
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    return policy.to(device)
