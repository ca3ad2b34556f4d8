"""Policy checkpoints: the online Q-network's weights and the few settings that rebuild it.

A checkpoint holds plain tensors, strings and numbers (no replay buffer, optimizer, schedule or
env: an SB3 ``model.save`` can pickle all of those), so it loads with
``torch.load(weights_only=True)``. :func:`save_policy` writes through :mod:`envs.io.atomic`
(temporary sibling, fsync, rename): a crash never leaves a half-written file, and
:func:`keep_previous` copies a good checkpoint aside before it is replaced, so that a file
damaged later (disk, copy, hand edit) still has a fallback. :func:`read_checkpoint` and
:func:`load_policy` refuse a truncated or garbage file, a file of another format or version,
and spaces other than the ones the policy was trained on, with a ValueError naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.dqn.policies import DQNPolicy

from agents.networks import DuelingDQNPolicy, VolumeDQNPolicy, VolumeFeatures
from envs.io.atomic import atomic_path, atomic_write_bytes

__all__ = [
    "POLICY_FORMAT",
    "POLICY_FORMAT_VERSION",
    "keep_previous",
    "load_policy",
    "make_policy",
    "read_checkpoint",
    "save_policy",
]

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


def save_policy(
    model: DQN | DQNPolicy, path: str | os.PathLike[str], *, num_timesteps: int | None = None
) -> Path:
    """Write the online Q-network weights and what rebuilds it to ``path``, atomically.

    No replay buffer, optimizer, schedule or env is written: the file holds plain tensors, strings and
    numbers, and loads with ``torch.load(weights_only=True)``.

    Args:
        model: A model from :func:`agents.dqn.build_model` or its ``policy``.
        path: Destination file (conventionally ``*.pt``); its folder is created if needed.
        num_timesteps: the training steps behind these weights, stored when given (training
            checkpoints record it so that a fallback to an older file knows its step).

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
    if num_timesteps is not None:
        payload["num_timesteps"] = int(num_timesteps)
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
        ValueError: If the file is truncated or not a medgym policy, or the spaces differ from the
            saved ones (the message names the file and the problem).
    """
    path = Path(path)
    payload = read_checkpoint(path, "load_policy")
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
    try:
        policy = make_policy(
            payload["dueling"], observation_space, action_space, list(payload["net_arch"]), extractor_kwargs
        )
        policy.q_net.load_state_dict(payload["q_net"])
        policy.q_net_target.load_state_dict(payload["q_net"])
    except (RuntimeError, TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"load_policy: {path}: the weights do not fit the network the file describes "
            f"({_first_line(error)}); the file is damaged, use another checkpoint"
        ) from None
    policy.set_training_mode(False)
    device = (
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    return policy.to(device)


# ---------------------------------------------------------------------- checked reading
_REQUIRED = {
    "dueling": bool,
    "net_arch": list,
    "features_extractor_kwargs": dict,
    "observation_space": dict,
    "action_space": dict,
    "q_net": dict,
}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _damage(data: bytes, error: BaseException) -> str:
    """What is wrong with a file ``torch.load`` could not read, in a few words."""
    if not data:
        return "the file is empty"
    if not data.startswith(b"PK\x03\x04"):
        return "no PyTorch (zip) header: garbage or another format"
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return "truncated: the zip archive ends early"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain values (refused by weights_only)"
    return f"{type(error).__name__}: {_first_line(error)}"


def _load_payload(data: bytes, path: Path, caller: str) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the checks below decide
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch, pickle and zip raise many types for a damaged file
        raise ValueError(
            f"{caller}: {path} is truncated or not a policy file ({_damage(data, error)}); "
            "use another checkpoint (e.g. checkpoints/previous.pt)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise ValueError(
            f"{caller}: {path} is not a medgym policy file (one written by agents.checkpoints.save_policy)"
        )
    if payload.get("version") != POLICY_FORMAT_VERSION:
        raise ValueError(
            f"{caller}: {path} has format version {payload.get('version')}, expected {POLICY_FORMAT_VERSION}"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            raise ValueError(
                f"{caller}: {path} is damaged: field {key!r} is missing or not a {kind.__name__}"
            )
    if not all(isinstance(value, torch.Tensor) for value in payload["q_net"].values()):
        raise ValueError(f"{caller}: {path} is damaged: 'q_net' holds something other than tensors")
    return payload


def read_checkpoint(path: str | os.PathLike[str], caller: str = "read_checkpoint") -> dict[str, Any]:
    """The checked contents of a policy file: plain tensors, strings and numbers.

    ``payload.get("num_timesteps")`` is the training step it was saved at (None for files
    saved without one).

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If the file is truncated, garbage, of another format or version, or lacks a
            field (the message names the file and what is wrong; never a torch traceback).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{caller}: no policy file at {path}")
    return _load_payload(path.read_bytes(), path, caller)


def keep_previous(path: str | os.PathLike[str], previous: str | os.PathLike[str]) -> bool:
    """Copy the checkpoint at ``path`` to ``previous`` (atomically) if it is a readable policy.

    Call it before replacing ``path``: ``previous`` then always holds the last good checkpoint,
    the fallback when ``path`` is found damaged. A missing or damaged ``path`` is not copied (a
    good ``previous`` is never replaced by a bad file). Returns whether it copied.
    """
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    try:
        _load_payload(data, path, "keep_previous")
    except ValueError:
        return False
    atomic_write_bytes(previous, data)
    return True
