"""Supervised greedy Q-learning for registration (Liao et al., AAAI 2017).

In registration the ground truth is known at training time, so the reward of EVERY action
from a state is known, not only of the action taken: ``r(s, a) = (TRE(s) - TRE(s + a)) / step``.
Liao et al. regress the Q-network on these rewards directly (a DQN with ``gamma = 0`` whose
targets are exact and cover all actions), which needs far fewer samples than bootstrapped
DQN and gives greedy test-time behaviour that the oracle shows is near optimal (every
step that lowers the error is a step towards the truth).

States are drawn as the env's training resets draw them (a pair, a level, a misalignment
around the truth), rendered once and kept in a small replay of (observation, all-action
rewards), so each rendered sample serves several updates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from agents.greedy.regression import GreedyConfig, QRegression
from envs.tasks import AlignmentWorld

__all__ = ["GreedyTrainer"]


class GreedyTrainer(QRegression):
    """Fit Q(s, .) to the true all-action rewards of states drawn from ``world``.

    Args:
        policy: a DQN policy (:func:`agents.dqn.build_policy`); its optimizer is used.
        world: the training world (pairs, levels, rendering, errors).
        buffer_size: rendered samples kept (each is ``C S^3`` bytes plus rewards, ``C`` the
            world's observed channels).
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
        super().__init__(
            policy,
            buffer_size=buffer_size,
            batch_size=batch_size,
            new_per_update=new_per_update,
            max_grad_norm=max_grad_norm,
            seed=seed,
            on_policy_fraction=on_policy_fraction,
        )
        self.world = world
        size = world.obs_size
        self.patches = np.zeros((buffer_size, world.n_channels, size, size, size), np.uint8)
        self.levels = np.zeros(buffer_size, np.int64)
        self.rewards = np.zeros((buffer_size, world.n_actions), np.float32)
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
            q = self.q_values({"patch": observation["patch"][np.newaxis], "level": np.array([level])})[0]
            index, delta = world.action_delta(int(np.argmax(q)), level)
            moved = params.copy()
            moved[index] += delta
            if age < 30:
                self._walkers.append((pair_index, level, moved, age + 1))
            return pair_index, level, moved
        return self._draw_state()

    def add_samples(self, count: int) -> None:
        world = self.world
        for _ in range(count):
            pair_index, level, params = self._next_state()
            pair = world.pair(pair_index)
            row = self.next_row()
            world.observation_patch(pair, level, params, out=self.patches[row])
            self.levels[row] = level
            self.rewards[row] = world.candidate_rewards(pair, level, params)

    def batch(self, rows: NDArray[np.int64]) -> tuple[dict[str, NDArray], NDArray[np.float32]]:
        return {"patch": self.patches[rows], "level": self.levels[rows]}, self.rewards[rows]
