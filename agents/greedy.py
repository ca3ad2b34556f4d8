"""Supervised greedy Q-learning for registration (Liao et al., AAAI 2017).

In registration the ground truth is known at training time, so the reward of EVERY action
from a state is known, not only of the action taken: ``r(s, a) = (TRE(s) - TRE(s + a)) / step``.
Liao et al. regress the Q-network on these rewards directly (a DQN with ``gamma = 0`` whose
targets are exact and cover all actions), which needs far fewer samples than bootstrapped
DQN and gives greedy test-time behaviour that the oracle shows is near optimal (every
step that lowers the error is a step towards the truth).

The network, checkpoints and test-time search are those of the DQN agents: the learner
trains an SB3 ``DQNPolicy`` built by :func:`agents.dqn.build_policy`.

States are drawn as the env's training resets draw them (a pair, a level, a misalignment
around the truth), rendered once and kept in a small replay of (observation, all-action
rewards), so each rendered sample serves several updates.

The learner's settings are a :class:`GreedyConfig`. An experiment's ``agent`` section is an
:class:`agents.dqn.AgentConfig` for every algorithm, so that existing configs keep loading.
With ``algorithm: greedy``: the network fields (``dueling``, ``channels``, ``kernel_sizes``,
``strides``, ``features_dim``, ``channels_last``, ``net_arch``), ``learning_rate``,
``torch_threads`` and ``device`` build the policy (:func:`agents.dqn.build_policy`);
:meth:`GreedyConfig.from_agent_config` takes ``buffer_size`` and ``batch_size``; the DQN-only
fields (``gamma``, ``learning_starts``, ``train_freq``, ``gradient_steps``,
``target_update_interval``, ``exploration_*``, ``replay``) are accepted and not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from agents.dqn import AgentConfig
from envs.tasks import AlignmentWorld

__all__ = ["GreedyConfig", "GreedyTrainer"]

MAX_BUFFER_SIZE = 50_000
"""the most samples an experiment's ``agent.buffer_size`` gives the greedy learner"""


@dataclass(frozen=True)
class GreedyConfig:
    """The supervised greedy learner's settings (:class:`GreedyTrainer`)."""

    buffer_size: int = 20_000
    """rendered samples kept (each is ``2 S^3`` bytes plus rewards)"""
    batch_size: int = 32
    """samples per gradient update"""
    new_per_update: int = 8
    """freshly rendered samples added before each update"""
    max_grad_norm: float = 10.0
    """gradient clipping, as SB3's DQN"""
    on_policy_fraction: float = 0.25
    """share of fresh samples taken from the states the current network visits"""

    @classmethod
    def from_agent_config(cls, agent: AgentConfig) -> GreedyConfig:
        """The settings an experiment's ``agent`` section gives: ``buffer_size`` (at most
        ``MAX_BUFFER_SIZE``) and ``batch_size``; the rest keep their defaults."""
        return cls(buffer_size=min(agent.buffer_size, MAX_BUFFER_SIZE), batch_size=agent.batch_size)


class GreedyTrainer:
    """Fit Q(s, .) to the true all-action rewards of states drawn from ``world``.

    Args:
        policy: a DQN policy (:func:`agents.dqn.build_policy`); its optimizer is used.
        world: the training world (pairs, levels, rendering, errors).
        buffer_size: rendered samples kept (each is ``2 S^3`` bytes plus rewards).
        batch_size: samples per gradient update.
        new_per_update: freshly rendered samples added before each update.
        max_grad_norm: gradient clipping, as SB3's DQN.
        seed: the sampler's seed.
        on_policy_fraction: share of fresh samples taken from the states the current network
            visits (greedy rollouts from training starts), so the regression also covers the
            network's own path, not only the reset distribution.
    """

    def __init__(
        self,
        policy: Any,
        world: AlignmentWorld,
        *,
        buffer_size: int = 20_000,
        batch_size: int = 32,
        new_per_update: int = 8,
        max_grad_norm: float = 10.0,
        seed: int = 0,
        on_policy_fraction: float = 0.25,
    ) -> None:
        if buffer_size < batch_size:
            raise ValueError(
                f"greedy trainer: buffer_size ({buffer_size}) must be >= batch_size ({batch_size})"
            )
        self.policy = policy
        self.world = world
        self.batch_size = int(batch_size)
        self.new_per_update = max(1, int(new_per_update))
        self.max_grad_norm = float(max_grad_norm)
        self.on_policy_fraction = float(on_policy_fraction)
        self.rng = np.random.default_rng(seed)
        size = world.obs_size
        self.patches = np.zeros((buffer_size, 2, size, size, size), np.uint8)
        self.levels = np.zeros(buffer_size, np.int64)
        self.rewards = np.zeros((buffer_size, world.n_actions), np.float32)
        self.count = 0
        self.cursor = 0
        self.updates = 0
        self.samples = 0
        self.losses: list[float] = []
        self._walkers: list[tuple[int, int, NDArray[np.int64], int]] = []

    @classmethod
    def from_config(
        cls, policy: Any, world: AlignmentWorld, config: GreedyConfig, seed: int = 0
    ) -> GreedyTrainer:
        """A trainer with ``config``'s settings."""
        return cls(
            policy,
            world,
            buffer_size=config.buffer_size,
            batch_size=config.batch_size,
            new_per_update=config.new_per_update,
            max_grad_norm=config.max_grad_norm,
            seed=seed,
            on_policy_fraction=config.on_policy_fraction,
        )

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def _draw_state(self) -> tuple[int, int, NDArray[np.int64]]:
        world = self.world
        pair_index = int(self.rng.integers(world.n_variants))
        level = int(self.rng.integers(world.n_levels))
        params = world.start_params(world.pair(pair_index), level, self.rng)
        return pair_index, level, params

    def _next_state(self) -> tuple[int, int, NDArray[np.int64]]:
        """A reset-distribution state, or the next state of a greedy walker (network's own path)."""
        if self.updates > 0 and self.rng.random() < self.on_policy_fraction:
            if not self._walkers:
                pair_index, level, params = self._draw_state()
                self._walkers.append((pair_index, level, params, 0))
            pair_index, level, params, age = self._walkers.pop()
            world = self.world
            observation = world.observation(world.pair(pair_index), level, params)
            q = self._q_values(observation["patch"][np.newaxis], np.array([level]))[0]
            index, delta = world.action_delta(int(np.argmax(q)), level)
            moved = params.copy()
            moved[index] += delta
            if age < 30:
                self._walkers.append((pair_index, level, moved, age + 1))
            return pair_index, level, moved
        return self._draw_state()

    def add_samples(self, count: int) -> None:
        world = self.world
        capacity = len(self.levels)
        for _ in range(count):
            pair_index, level, params = self._next_state()
            pair = world.pair(pair_index)
            row = self.cursor
            self.patches[row, 0] = pair.fixed_patches[level]
            self.patches[row, 1] = world.render_moving(pair, level, params)
            self.levels[row] = level
            self.rewards[row] = world.candidate_rewards(pair, level, params)
            self.cursor = (self.cursor + 1) % capacity
            self.count = min(self.count + 1, capacity)
            self.samples += 1

    def _q_values(self, patch: NDArray, level: NDArray) -> NDArray:
        was_training = self.policy.training
        self.policy.set_training_mode(False)
        with torch.no_grad():
            tensor, _ = self.policy.obs_to_tensor({"patch": patch, "level": level})
            q = self.policy.q_net(tensor).cpu().numpy()
        self.policy.set_training_mode(was_training)
        return q

    def update(self) -> float:
        """Render ``new_per_update`` samples, then one gradient step on a replay batch; returns the loss."""
        self.add_samples(self.new_per_update if self.count >= self.batch_size else self.batch_size)
        rows = self.rng.integers(self.count, size=self.batch_size)
        observations, _ = self.policy.obs_to_tensor({"patch": self.patches[rows], "level": self.levels[rows]})
        targets = torch.as_tensor(self.rewards[rows], device=self.device)
        self.policy.set_training_mode(True)
        q_values = self.policy.q_net(observations)
        loss = F.smooth_l1_loss(q_values, targets)
        self.policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        self.updates += 1
        value = float(loss.item())
        self.losses.append(value)
        return value
