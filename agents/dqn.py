"""DQN / Double DQN agents for the 3-D patch envs, built from a typed config.

SB3 has neither Double DQN nor a dueling head: :class:`DoubleDQN` overrides ``DQN.train`` only to
swap the target (:func:`double_td_target`), and the dueling head lives in :mod:`agents.networks`.
:func:`build_model` builds an SB3 model for the envs; :func:`build_policy` a bare Q-network policy
for learners outside SB3 (:mod:`agents.greedy`). Saving and loading policies is
:mod:`agents.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.dqn.policies import DQNPolicy
from torch.nn import functional as F

from agents.checkpoints import make_policy
from agents.networks import DuelingDQNPolicy, VolumeDQNPolicy, VolumeFeatures, set_torch_threads
from agents.replay import PoseRenderer, PoseReplayBuffer, ReplayRefused, check_sb3_vec_env, renderer_for

__all__ = [
    "AgentConfig",
    "DoubleDQN",
    "build_model",
    "build_policy",
    "double_td_target",
    "greedy_td_target",
    "predict_q_values",
]

_ALGORITHMS = ("dqn", "double", "greedy")
_REPLAYS = ("pose", "sb3", "auto")
_BACKENDS = ("sb3", "rllib")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def greedy_td_target(
    next_q_target: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor, discounts: torch.Tensor | float
) -> torch.Tensor:
    """DQN's 1-step target ``r + (1 - done) * gamma * max_a Q_target(s', a)``.

    Args:
        next_q_target: (B, n_actions) target-network Q-values of the next observations.
        rewards: (B, 1) rewards.
        dones: (B, 1) 1.0 where the episode terminated (time-limit ends already count as 0).
        discounts: gamma, scalar or (B, 1).

    Returns:
        (B, 1) targets.
    """
    next_values = next_q_target.max(dim=1).values.reshape(-1, 1)
    return rewards + (1 - dones) * discounts * next_values


def double_td_target(
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    discounts: torch.Tensor | float,
) -> torch.Tensor:
    """Double DQN's target ``r + (1 - done) * gamma * Q_target(s', argmax_a Q_online(s', a))``.

    The online network picks the action and the target network values it (van Hasselt et al. 2016),
    which removes the upward bias of taking the max over the same noisy estimates.

    Args:
        next_q_online: (B, n_actions) online-network Q-values of the next observations.
        next_q_target: (B, n_actions) target-network Q-values of the next observations.
        rewards: (B, 1) rewards.
        dones: (B, 1) 1.0 where the episode terminated.
        discounts: gamma, scalar or (B, 1).

    Returns:
        (B, 1) targets.

    Example:
        >>> online = torch.tensor([[1.0, 2.0]])
        >>> target = torch.tensor([[5.0, 3.0]])
        >>> r, d = torch.zeros(1, 1), torch.zeros(1, 1)
        >>> double_td_target(online, target, r, d, 0.5).item(), greedy_td_target(target, r, d, 0.5).item()
        (1.5, 2.5)
    """
    next_actions = next_q_online.argmax(dim=1, keepdim=True)
    next_values = torch.gather(next_q_target, dim=1, index=next_actions)
    return rewards + (1 - dones) * discounts * next_values


class DoubleDQN(DQN):
    """SB3 ``DQN`` with the Double DQN target; everything else (logging, clipping, schedules) is SB3's."""

    def compute_target_q(self, replay_data: ReplayBufferSamples | DictReplayBufferSamples) -> torch.Tensor:
        """Double DQN targets (B, 1) for a sampled batch, without gradient."""
        # For n-step replay, the discount is gamma**n_steps (when no early termination), as in SB3.
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with torch.no_grad():
            next_q_online = self.q_net(replay_data.next_observations)
            next_q_target = self.q_net_target(replay_data.next_observations)
            return double_td_target(
                next_q_online, next_q_target, replay_data.rewards, replay_data.dones, discounts
            )

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """``DQN.train`` from SB3 2.9 with the target replaced by :meth:`compute_target_q`."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        losses = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            target_q_values = self.compute_target_q(replay_data)

            current_q_values = self.q_net(replay_data.observations)
            current_q_values = torch.gather(current_q_values, dim=1, index=replay_data.actions.long())

            # Huber loss, as SB3: less sensitive to outlier targets than MSE.
            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())

            self.policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))


def _positive_ints(name: str, values: Any, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(values, int | str) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"AgentConfig.{name}: expected a sequence of positive integers, got {values!r}")
    values = tuple(values)
    if (not values and not allow_empty) or any(v < 1 for v in values):
        raise ValueError(
            f"AgentConfig.{name}: expected a non-empty sequence of positive integers, got {values!r}"
        )
    return values


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything that defines a DQN agent for the 3-D patch envs.

    Attributes:
        algorithm: ``"dqn"`` (SB3's target), ``"double"`` (Double DQN target) or ``"greedy"``
            (Liao et al.'s supervised greedy Q-learning, for landmarks and registration: the known
            ground truth gives the reward of every action, see :mod:`agents.greedy`).
        dueling: Use the dueling head (V + A - mean A).
        channels: Conv channels of :class:`agents.networks.VolumeFeatures`.
        kernel_sizes: Conv kernel edges, one per layer.
        strides: Conv strides, one per layer.
        features_dim: Size of the features vector after the joint MLP.
        channels_last: Run the convs in ``channels_last_3d`` memory layout (off by default:
            the contiguous layout; which is faster depends on the device, see ``bench/``).
        net_arch: Hidden layers of the Q head (of each stream when dueling).
        learning_rate: Adam learning rate.
        buffer_size: Replay capacity in transitions.
        learning_starts: Env steps collected before the first update.
        batch_size: Transitions per gradient update.
        gamma: Discount factor.
        train_freq: Env steps (per env) between updates.
        gradient_steps: Updates per training round (-1: as many as env steps).
        target_update_interval: Env steps between target-network copies.
        exploration_fraction: Fraction of training over which epsilon decays from 1.
        exploration_final_eps: Final epsilon.
        replay: ``"pose"`` (store poses, re-render at sample time through the env's observation
            wrappers; refused, naming the wrapper, when that cannot give the agent's observation),
            ``"sb3"`` (SB3's buffer: store observations) or ``"auto"`` (pose when possible, else sb3,
            with one line on stderr saying why).
        torch_threads: torch intra-op threads (1 is fastest on a small CPU box).
        backend: ``"sb3"`` (stable-baselines3 in this process) or ``"rllib"`` (Ray RLlib's DQN with
            env runners; needs the ``medgym[ray]`` extra).
        rllib_env_runners: ``backend: rllib`` only: env runner processes that sample (1 CPU each).
        rllib_envs_per_env_runner: ``backend: rllib`` only: envs stepped together in each runner;
            0 means ``ceil(env.n_envs / rllib_env_runners)`` (about ``env.n_envs`` in all).
        rllib_rollout_fragment_length: ``backend: rllib`` only: env steps per env and sample round;
            0 means automatic (about 64 steps per runner; see :mod:`agents.rllib.config`).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    algorithm: Literal["dqn", "double", "greedy"] = "double"
    dueling: bool = True
    channels: tuple[int, ...] = (8, 16, 32)
    kernel_sizes: tuple[int, ...] = (5, 3, 3)
    strides: tuple[int, ...] = (3, 1, 1)
    features_dim: int = 256
    channels_last: bool = False
    net_arch: tuple[int, ...] = (128,)
    learning_rate: float = 3e-4
    buffer_size: int = 50_000
    learning_starts: int = 1000
    batch_size: int = 32
    gamma: float = 0.9
    train_freq: int = 4
    gradient_steps: int = 1
    target_update_interval: int = 2000
    exploration_fraction: float = 0.3
    exploration_final_eps: float = 0.05
    replay: Literal["pose", "sb3", "auto"] = "pose"
    torch_threads: int = 1
    backend: Literal["sb3", "rllib"] = "sb3"
    rllib_env_runners: int = 1
    rllib_envs_per_env_runner: int = 0
    rllib_rollout_fragment_length: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"AgentConfig.algorithm: expected one of {_ALGORITHMS}, got {self.algorithm!r}")
        if self.backend not in _BACKENDS:
            raise ValueError(f"AgentConfig.backend: expected one of {_BACKENDS}, got {self.backend!r}")
        if self.replay not in _REPLAYS:
            raise ValueError(f"AgentConfig.replay: expected one of {_REPLAYS}, got {self.replay!r}")
        if not isinstance(self.dueling, bool):
            raise ValueError(f"AgentConfig.dueling: expected true or false, got {self.dueling!r}")
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.match(self.device):
            raise ValueError(
                f"AgentConfig.device: expected one of 'auto', 'cpu', 'cuda', 'cuda:N', got {self.device!r}"
            )
        # YAML gives lists; the frozen dataclass keeps tuples so configs stay hashable and comparable.
        for name in ("channels", "kernel_sizes", "strides"):
            object.__setattr__(self, name, _positive_ints(name, getattr(self, name)))
        object.__setattr__(self, "net_arch", _positive_ints("net_arch", self.net_arch, allow_empty=True))
        if not len(self.channels) == len(self.kernel_sizes) == len(self.strides):
            raise ValueError(
                "AgentConfig.channels/kernel_sizes/strides: expected equal lengths, got "
                f"{len(self.channels)}, {len(self.kernel_sizes)}, {len(self.strides)}"
            )
        positive = ("features_dim", "buffer_size", "batch_size", "train_freq", "target_update_interval")
        for name in (*positive, "torch_threads", "rllib_env_runners"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AgentConfig.{name}: expected a positive integer, got {value!r}")
        for name in ("rllib_envs_per_env_runner", "rllib_rollout_fragment_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"AgentConfig.{name}: expected an integer >= 0 (0: automatic), got {value}")
        starts = self.learning_starts
        if isinstance(starts, bool) or not isinstance(starts, int) or starts < 0:
            raise ValueError(f"AgentConfig.learning_starts: expected an integer >= 0, got {starts!r}")
        if not isinstance(self.gradient_steps, int) or not (
            self.gradient_steps >= 1 or self.gradient_steps == -1
        ):
            raise ValueError(f"AgentConfig.gradient_steps: expected >= 1 or -1, got {self.gradient_steps!r}")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ValueError(
                f"AgentConfig.learning_rate: expected a positive number, got {self.learning_rate!r}"
            )
        for name in ("gamma", "exploration_fraction", "exploration_final_eps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"AgentConfig.{name}: expected a number in [0, 1], got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AgentConfig:
        """Build a config from a mapping (e.g. a YAML section); an unknown key is an error naming it.

        Example:
            >>> AgentConfig.from_dict({"algorithm": "dqn", "channels": [8, 16, 16]}).channels
            (8, 16, 16)
            >>> AgentConfig.from_dict({"gama": 0.9})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: AgentConfig: unknown key(s) ['gama']; allowed keys are [...]
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"AgentConfig: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (YAML/JSON-ready) form of the config."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def resolved_device(self) -> str:
        """``"cpu"`` or a CUDA device: ``"auto"`` means CUDA when it is available."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def features_extractor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`agents.networks.VolumeFeatures`."""
        return {
            "features_dim": self.features_dim,
            "channels": self.channels,
            "kernel_sizes": self.kernel_sizes,
            "strides": self.strides,
            "channels_last": self.channels_last,
        }


def build_model(
    config: AgentConfig,
    env: VecEnv | gym.Env,
    seed: int | None = None,
    tensorboard_log: str | None = None,
    pose_renderer: PoseRenderer | None = None,
) -> DQN:
    """Build an SB3 DQN (or :class:`DoubleDQN`) with the 3-D conv policy and the configured replay buffer.

    Also sets torch's (process-wide) thread count to ``config.torch_threads``.

    Args:
        config: The agent settings.
        env: A Gymnasium env or an SB3 VecEnv (DummyVecEnv or SubprocVecEnv, optionally under
            VecMonitor / VecNormalize; not a Gymnasium vector env) with the patch Dict space.
        seed: Seed for SB3 (torch, numpy, action space); None leaves them unseeded.
        tensorboard_log: Folder for tensorboard logs (needs the tensorboard package) or None.
        pose_renderer: ``renderer(poses (B, pose_dim)) -> dict obs`` for ``replay="pose"``/``"auto"``; when
            None, :func:`agents.replay.renderer_for` of the env is used if the env lives in this
            process (a plain env or a DummyVecEnv, whose first env must then be able to render every
            env's poses). A SubprocVecEnv needs one built here, e.g. ``wrapped_renderer(make_env())``
            with the factory of its envs.

    Returns:
        The model, not yet trained. Its ``replay_buffer_kwargs`` no longer name the renderer, so
        ``model.save`` cannot pickle an env; after ``DQN.load`` re-attach one with
        ``model.replay_buffer.set_renderer(...)``.

    Raises:
        ValueError: If ``env`` is a Gymnasium vector env, ``replay="pose"`` and no renderer is given or
            can be built (:class:`agents.replay.ReplayRefused`, one line naming the cause), or the
            spaces do not fit.
    """
    check_sb3_vec_env(env)
    if config.algorithm == "greedy":
        raise ValueError(
            "build_model: algorithm 'greedy' is trained by agents.greedy (LandmarkGreedyTrainer, "
            "GreedyTrainer), not by SB3's DQN; use algorithm 'dqn' or 'double' here"
        )
    set_torch_threads(config.torch_threads)
    replay_buffer_kwargs: dict[str, Any] = {"handle_timeout_termination": True}
    renderer = pose_renderer
    if config.replay != "sb3" and renderer is None:
        try:
            renderer = renderer_for(env)
        except ReplayRefused as refusal:
            if config.replay == "pose":
                raise
            print(f"build_model: replay auto: using SB3's replay buffer: {refusal}", file=sys.stderr)
    replay_buffer_class: type[DictReplayBuffer] = DictReplayBuffer
    if renderer is not None:
        replay_buffer_class = PoseReplayBuffer
        replay_buffer_kwargs["renderer"] = renderer

    algorithm_class = DoubleDQN if config.algorithm == "double" else DQN
    model = algorithm_class(
        DuelingDQNPolicy if config.dueling else VolumeDQNPolicy,
        env,
        learning_rate=config.learning_rate,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        gamma=config.gamma,
        train_freq=config.train_freq,
        gradient_steps=config.gradient_steps,
        target_update_interval=config.target_update_interval,
        exploration_fraction=config.exploration_fraction,
        exploration_final_eps=config.exploration_final_eps,
        replay_buffer_class=replay_buffer_class,
        replay_buffer_kwargs=replay_buffer_kwargs,
        policy_kwargs={
            "features_extractor_class": VolumeFeatures,
            "features_extractor_kwargs": config.features_extractor_kwargs(),
            "net_arch": list(config.net_arch),
        },
        tensorboard_log=tensorboard_log,
        seed=seed,
        device=config.resolved_device(),
        verbose=0,
    )
    # SB3 pickles replay_buffer_kwargs into model.save; the buffer already holds the renderer.
    model.replay_buffer_kwargs = {k: v for k, v in model.replay_buffer_kwargs.items() if k != "renderer"}
    return model


def build_policy(
    config: AgentConfig, observation_space: spaces.Space, action_space: spaces.Space
) -> DQNPolicy:
    """A fresh Q-network policy (online + target nets, Adam) for a learner outside SB3's ``DQN``.

    Its weights save and load with :func:`agents.checkpoints.save_policy` / ``load_policy`` like a DQN's.
    """
    set_torch_threads(config.torch_threads)
    policy = make_policy(
        config.dueling,
        observation_space,
        action_space,
        list(config.net_arch),
        config.features_extractor_kwargs(),
        config.learning_rate,
    )
    return policy.to(config.resolved_device())


def predict_q_values(policy: DQNPolicy, obs_batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Q-values of a batch of observations, for test-time search over many starts or landmarks.

    Args:
        policy: A DQN policy (``model.policy`` or from :func:`agents.checkpoints.load_policy`).
        obs_batch: ``"patch"`` (B, frames, P, P, P) uint8 and the Discrete keys as (B,) integers.

    Returns:
        (B, n_actions) float32 Q-values from the online network. The policy's train/eval mode is restored.
    """
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        obs_tensor, _ = policy.obs_to_tensor(dict(obs_batch))
        with torch.no_grad():
            q_values = policy.q_net(obs_tensor)
    finally:
        policy.set_training_mode(was_training)
    return q_values.cpu().numpy().astype(np.float32, copy=False)
