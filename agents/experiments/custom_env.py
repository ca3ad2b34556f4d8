"""Plug-in environments: the ``task: custom`` config, and the env factory it describes.

Any Gymnasium env trains like the medgym tasks: a registered id (``medgym/...-v0`` or any other,
its module listed in ``env.imports`` when importing it registers the id) or an entry point
``package.module:Name`` (a ``gymnasium.Env`` class or a factory returning one), built with
``env.kwargs``, then wrapped by ``env.wrappers`` in order (innermost first). Example::

    task: custom
    env:
      id: medgym/LandmarkDetection-v0
      kwargs: {patch_size: 25}
      wrappers:
        - entry_point: gymnasium.wrappers:ClipReward
          kwargs: {min_reward: -0.5, max_reward: 0.5}
    evaluate: {episodes: 20, val_kwargs: {split: val}, test_kwargs: {split: test}}

The network is the 3-D conv Q-network (:class:`agents.networks.VolumeFeatures`): the observation
must be a ``Dict`` with a uint8 ``"patch"`` Box (frames, D, H, W) and Discrete or 1-D Box keys
(the spaces a policy checkpoint records), and the action space ``Discrete``; other envs get an
ObservationWrapper that makes one (:func:`check_spaces` refuses the rest, naming the space).
:class:`EnvFactory` is picklable, so the same factory builds the envs of a ``SubprocVecEnv`` in
its worker processes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.dqn import AgentConfig
from agents.experiments.config import ConfigError, TrainConfig

__all__ = [
    "CustomEnvConfig",
    "CustomExperiment",
    "EnvFactory",
    "EvaluateConfig",
    "WrapperConfig",
    "check_spaces",
    "load_object",
]


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"config {key}: expected a mapping of keyword arguments, got {value!r}")
    return dict(value)


@dataclass(frozen=True)
class WrapperConfig:
    """One wrapper of the chain: a ``gymnasium.Wrapper`` subclass (or a factory ``f(env, **kwargs)``)."""

    entry_point: str
    """``package.module:Name`` of the wrapper"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments after the env"""


@dataclass(frozen=True)
class CustomEnvConfig:
    """Which Gymnasium env to train on, and how it is built, wrapped and vectorised."""

    id: str | None = None
    """a registered Gymnasium id (exclusive with ``entry_point``)"""
    entry_point: str | None = None
    """``package.module:Name`` of a gymnasium.Env class or a factory returning one (exclusive with ``id``)"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of ``gymnasium.make`` / the entry point"""
    imports: tuple[str, ...] = ()
    """modules imported first (e.g. the one that registers ``id``)"""
    max_episode_steps: int | None = None
    """time limit (steps; a TimeLimit wrapper); null: the registration's, or none for an entry point"""
    wrappers: tuple[WrapperConfig, ...] = ()
    """wrappers applied in order, innermost first"""
    n_envs: int = 1
    """envs stepped together"""
    vec_env: str = "dummy"
    """dummy (SB3 DummyVecEnv, this process) or subproc (SubprocVecEnv, one process per env)"""

    def __post_init__(self) -> None:
        if (self.id is None) == (self.entry_point is None):
            raise ConfigError(
                "config env: give exactly one of env.id (a registered Gymnasium id) or env.entry_point "
                f"(package.module:Name), got id={self.id!r} and entry_point={self.entry_point!r}"
            )
        object.__setattr__(self, "kwargs", _mapping(self.kwargs, "env.kwargs"))
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(
                f"config env.max_episode_steps: expected >= 1 or null, got {self.max_episode_steps}"
            )
        if self.n_envs < 1:
            raise ConfigError(f"config env.n_envs: expected >= 1, got {self.n_envs}")
        if self.vec_env not in ("dummy", "subproc"):
            raise ConfigError(f"config env.vec_env: expected dummy or subproc, got {self.vec_env!r}")
        for index, wrapper in enumerate(self.wrappers):
            object.__setattr__(wrapper, "kwargs", _mapping(wrapper.kwargs, f"env.wrappers[{index}].kwargs"))


@dataclass(frozen=True)
class EvaluateConfig:
    """Validation (during training) and evaluation (evaluate.py) episodes of the greedy policy."""

    episodes: int = 20
    """episodes per validation and per evaluation"""
    seed: int = 10_000
    """validation episode i resets with seed + i, evaluation episode i with seed + 100000 + i"""
    max_steps: int = 1000
    """steps after which an episode that has not ended is cut (counted as truncated)"""
    val_kwargs: dict[str, Any] = field(default_factory=dict)
    """env.kwargs overrides of the validation env (e.g. {split: val})"""
    test_kwargs: dict[str, Any] = field(default_factory=dict)
    """env.kwargs overrides of the evaluation env (e.g. {split: test})"""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.max_steps < 1:
            raise ConfigError("config evaluate.episodes and evaluate.max_steps: expected >= 1")
        for name in ("val_kwargs", "test_kwargs"):
            object.__setattr__(self, name, _mapping(getattr(self, name), f"evaluate.{name}"))


@dataclass(frozen=True)
class CustomExperiment:
    """Everything one training run on a plug-in Gymnasium env needs."""

    task: str = "custom"
    """the task: custom"""
    name: str = "custom"
    """run name (the run folder is runs/NAME-DATE)"""
    seed: int = 0
    """seed of the envs (vec_env.seed) and the model"""
    env: CustomEnvConfig = field(default_factory=lambda: CustomEnvConfig(id="medgym/LandmarkDetection-v0"))
    """the env the agent trains in"""
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(replay="auto"))
    """the DQN agent (replay defaults to auto: pose replay when the wrappers allow it)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """training length, validation, checkpoints"""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """validation and evaluation episodes"""

    def __post_init__(self) -> None:
        if self.task != "custom":
            raise ConfigError(f"config task: expected 'custom', got {self.task!r}")
        if self.agent.algorithm == "greedy":
            raise ConfigError(
                "config agent.algorithm: greedy needs the medgym tasks' known rewards; use dqn or double"
            )
        if self.agent.backend != "sb3":
            raise ConfigError(
                f"config agent.backend: task custom trains with sb3, got {self.agent.backend!r}"
            )


def load_object(path: str, key: str) -> Any:
    """The object named ``package.module:Name`` (``Name`` may be dotted); ``key`` names the config field."""
    module_name, colon, attribute = str(path).partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"config {key}: expected 'package.module:Name', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # an import runs user code: any error means "cannot import"
        raise ConfigError(
            f"config {key}: cannot import module {module_name!r} ({type(error).__name__}: {error}); "
            "install it or put its folder on PYTHONPATH"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = [name for name in dir(target) if not name.startswith("_")]
            own = [n for n in public if getattr(getattr(target, n), "__module__", None) == module_name]
            found = (own or public)[:12]  # the classes and functions defined there, when there are any
            raise ConfigError(
                f"config {key}: {module_name!r} has no {attribute!r} (found {found}); fix the name after ':'"
            )
        target = getattr(target, part)
    return target


def _import_all(modules: tuple[str, ...]) -> None:
    for index, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as error:
            raise ConfigError(
                f"config env.imports[{index}]: cannot import {name!r} ({type(error).__name__}: {error}); "
                "install it or put its folder on PYTHONPATH"
            ) from None


class EnvFactory:
    """``factory() -> gymnasium.Env``: the configured env, time limit and wrappers (picklable).

    Args:
        config: The env section.
        overrides: ``kwargs`` entries that replace the config's (validation / evaluation envs).
    """

    def __init__(self, config: CustomEnvConfig, overrides: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.kwargs = {**config.kwargs, **(overrides or {})}

    def check(self) -> None:
        """Import and resolve every name of the config; ConfigError naming the field if one fails."""
        config = self.config
        _import_all(config.imports)
        if config.id is not None:
            try:
                gym.spec(config.id)
            except gym.error.Error as error:
                raise ConfigError(
                    f"config env.id: {config.id!r} is not a registered Gymnasium id ({error}); list the "
                    "module that registers it in env.imports, or give env.entry_point: package.module:Class"
                ) from None
        elif not callable(load_object(str(config.entry_point), "env.entry_point")):
            raise ConfigError(f"config env.entry_point: {config.entry_point!r} is not a class or function")
        for index, wrapper in enumerate(config.wrappers):
            key = f"env.wrappers[{index}].entry_point"
            target = load_object(wrapper.entry_point, key)
            if isinstance(target, type) and not issubclass(target, gym.Wrapper):
                raise ConfigError(
                    f"config {key}: {wrapper.entry_point!r} is not a gymnasium.Wrapper subclass; "
                    "wrappers take the env and return a gymnasium.Wrapper"
                )

    def __call__(self) -> gym.Env:
        config = self.config
        _import_all(config.imports)
        where = "env.id" if config.id is not None else "env.entry_point"
        try:
            if config.id is not None:
                limit = (
                    {}
                    if config.max_episode_steps is None
                    else {"max_episode_steps": config.max_episode_steps}
                )
                env = gym.make(config.id, **limit, **self.kwargs)
            else:
                env = load_object(str(config.entry_point), where)(**self.kwargs)
        except (TypeError, ValueError, gym.error.Error) as error:
            raise ConfigError(f"config env.kwargs: {where} failed to build the env: {error}") from None
        if not isinstance(env, gym.Env):
            raise ConfigError(f"config {where}: expected a gymnasium.Env, got {type(env).__name__}")
        if config.id is None and config.max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, config.max_episode_steps)
        for index, wrapper in enumerate(config.wrappers):
            key = f"env.wrappers[{index}]"
            try:
                env = load_object(wrapper.entry_point, f"{key}.entry_point")(env, **wrapper.kwargs)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"config {key}: {wrapper.entry_point} failed: {error}") from None
            if not isinstance(env, gym.Wrapper):
                raise ConfigError(
                    f"config {key}.entry_point: {wrapper.entry_point!r} returned {type(env).__name__}, "
                    "not a gymnasium.Wrapper"
                )
        return env


def check_spaces(env: gym.Env) -> None:
    """Refuse spaces the 3-D conv Q-network cannot take, before any run folder exists."""
    space, actions = env.observation_space, env.action_space
    patch = space.spaces.get("patch") if isinstance(space, spaces.Dict) else None
    others_ok = isinstance(space, spaces.Dict) and all(
        isinstance(sub, spaces.Discrete) or (isinstance(sub, spaces.Box) and len(sub.shape) == 1)
        for key, sub in space.spaces.items()
        if key != "patch"
    )
    if not (
        isinstance(patch, spaces.Box) and patch.dtype == np.uint8 and len(patch.shape) == 4 and others_ok
    ):
        raise ConfigError(
            f"config env: observation space {' '.join(str(space).split())} does not fit the 3-D conv "
            "Q-network, which takes a Dict with a uint8 'patch' Box (frames, D, H, W) and Discrete or "
            "1-D Box keys; add an ObservationWrapper to env.wrappers that gives one"
        )
    if not isinstance(actions, spaces.Discrete):
        raise ConfigError(f"config env: DQN needs a Discrete action space, got {actions}")
