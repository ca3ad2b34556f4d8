"""Supervised greedy Q-learning for landmark detection (Liao et al.'s learner, on landmark envs).

In landmark training the target is known, so the reward of every action from a state is known
(:meth:`envs.tasks.LandmarkEnv.action_rewards`: the distance decrease in steps of the current
level, -1 for a move off the grid; the numbers ``step`` would give). The Q-network is regressed
on all six of them at once (targets = immediate rewards, ``gamma = 0``), as the registration
learner does (:mod:`agents.greedy.alignment`).

States come from training envs built as SB3's DQN gets them (same data, augmentation and
per-episode changes, since only the env's public API is used: ``reset``, ``step`` and
``action_rewards``):

- reset-distribution states: one env, reset for every sample;
- the network's own path (share ``on_policy_fraction`` of the fresh samples): walkers, envs
  stepped by the network's argmax from their resets until the env's time limit truncates
  the walk, so the regression also covers the states the test-time search visits (the
  neighbourhood of the landmark at every level included).

Each sample is stored once, as rendered: (patch uint8, landmark, level, the 6 rewards), and
serves several updates. The network, checkpoints and test-time search are those of the DQN
agents (an SB3 ``DQNPolicy`` from :func:`agents.dqn.build_policy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from agents.greedy.regression import GreedyConfig, QRegression

__all__ = ["MAX_REPLAY_BYTES", "LandmarkGreedyTrainer"]

MAX_REPLAY_BYTES = 2 << 30
"""the most bytes of patches the landmark replay holds (2 GiB: 130k 25^3 patches)"""

N_ACTIONS = 6


class LandmarkGreedyTrainer(QRegression):
    """Fit Q(s, .) to the exact rewards of all 6 actions of states from landmark envs.

    Args:
        policy: a DQN policy (:func:`agents.dqn.build_policy`) for the envs' observation space
            and ``Discrete(6)``; its optimizer is used.
        make_env: builds one training env (a :class:`envs.tasks.LandmarkEnv`, wrapped or not,
            e.g. by ``gym.make``; its time limit ends the walks). It is called
            ``1 + n_walkers`` times.
        n_walkers: envs that walk with the network's argmax (``env.n_envs`` of an experiment).
        buffer_size: samples kept (each ``frames * P^3`` bytes plus 6 rewards).
        batch_size: samples per gradient update.
        new_per_update: freshly rendered samples added before each update.
        max_grad_norm: gradient clipping, as SB3's DQN.
        seed: the sampler's seed; the envs are reset with ``seed``, ``seed + 1``, ...
        on_policy_fraction: expected share of fresh samples taken from the walkers (the rest
            are fresh resets).

    Raises:
        ValueError: if an env has no ``action_rewards`` (not a landmark env), has another
            number of actions than 6, or ``n_walkers < 1``.
    """

    def __init__(
        self,
        policy: Any,
        make_env: Callable[[], gym.Env],
        *,
        n_walkers: int = 1,
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
        if n_walkers < 1:
            raise ValueError(f"greedy trainer: n_walkers: expected >= 1 (env.n_envs), got {n_walkers}")
        self.sampler = _checked(make_env())
        self.walkers = [_checked(make_env()) for _ in range(n_walkers)]
        patch_shape = self.sampler.observation_space["patch"].shape
        self.patches = np.zeros((buffer_size, *patch_shape), np.uint8)
        self.landmarks = np.zeros(buffer_size, np.int64)
        self.levels = np.zeros(buffer_size, np.int64)
        self.rewards = np.zeros((buffer_size, N_ACTIONS), np.float32)
        self.sampler.reset(seed=seed)
        self.walker_observations = [
            walker.reset(seed=seed + 1 + index)[0] for index, walker in enumerate(self.walkers)
        ]
        self.next_walker = 0

    @classmethod
    def from_config(
        cls,
        policy: Any,
        make_env: Callable[[], gym.Env],
        config: GreedyConfig,
        *,
        n_walkers: int = 1,
        seed: int = 0,
    ) -> LandmarkGreedyTrainer:
        """A trainer with ``config``'s settings; the replay holds at most ``MAX_REPLAY_BYTES`` of patches."""
        patch_bytes = int(np.prod(policy.observation_space["patch"].shape))
        buffer_size = max(config.batch_size, min(config.buffer_size, MAX_REPLAY_BYTES // patch_bytes))
        return cls(
            policy,
            make_env,
            n_walkers=n_walkers,
            buffer_size=buffer_size,
            batch_size=config.batch_size,
            new_per_update=config.new_per_update,
            max_grad_norm=config.max_grad_norm,
            seed=seed,
            on_policy_fraction=config.on_policy_fraction,
        )

    def add_samples(self, count: int) -> None:
        """Store ``count`` fresh samples: walker steps (after the first update) and fresh resets."""
        walked = int(self.rng.binomial(count, self.on_policy_fraction)) if self.updates > 0 else 0
        for _ in range(count - walked):
            observation, _ = self.sampler.reset()
            self._store(observation, self.sampler.unwrapped.action_rewards())
        while walked > 0:
            chosen = [
                (self.next_walker + i) % len(self.walkers) for i in range(min(walked, len(self.walkers)))
            ]
            self.next_walker = (chosen[-1] + 1) % len(self.walkers)
            batch = [self.walker_observations[i] for i in chosen]
            q = self.q_values(
                {
                    "patch": np.stack([o["patch"] for o in batch]),
                    "landmark": np.array([o["landmark"] for o in batch]),
                    "level": np.array([o["level"] for o in batch]),
                }
            )
            for index, action in zip(chosen, np.argmax(q, axis=1), strict=True):
                walker = self.walkers[index]
                observation, _, terminated, truncated, _ = walker.step(int(action))
                if terminated or truncated:
                    observation, _ = walker.reset()
                self.walker_observations[index] = observation
                self._store(observation, walker.unwrapped.action_rewards())
            walked -= len(chosen)

    def _store(self, observation: dict[str, Any], rewards: NDArray[np.float64]) -> None:
        row = self.next_row()
        self.patches[row] = observation["patch"]
        self.landmarks[row] = observation["landmark"]
        self.levels[row] = observation["level"]
        self.rewards[row] = rewards

    def batch(self, rows: NDArray[np.int64]) -> tuple[dict[str, NDArray], NDArray[np.float32]]:
        observations = {
            "patch": self.patches[rows],
            "landmark": self.landmarks[rows],
            "level": self.levels[rows],
        }
        return observations, self.rewards[rows]

    def close(self) -> None:
        """Close the envs."""
        for env in (self.sampler, *self.walkers):
            env.close()


def _checked(env: gym.Env) -> gym.Env:
    """``env``, if it is a landmark env with known action rewards (else a ValueError that says so)."""
    if not callable(getattr(env.unwrapped, "action_rewards", None)):
        raise ValueError(
            f"greedy trainer: {type(env.unwrapped).__name__} has no action_rewards(); the landmark "
            "greedy learner needs envs.tasks.LandmarkEnv (gym.make(envs.LANDMARK_ENV_ID, ...))"
        )
    if not isinstance(env.action_space, gym.spaces.Discrete) or int(env.action_space.n) != N_ACTIONS:
        raise ValueError(
            f"greedy trainer: expected a Discrete({N_ACTIONS}) action space, got {env.action_space}"
        )
    return env
