"""What every supervised greedy learner shares: settings, the Q regression step, the training loop.

A greedy learner (Liao et al., AAAI 2017) knows the reward of EVERY action from each state it
stores, so it regresses the Q-network on all of them at once (targets = immediate rewards,
``gamma = 0``). The task-specific part is where states come from and how they are rendered:
:class:`agents.greedy.alignment.GreedyTrainer` (registration worlds) and
:class:`agents.greedy.landmark.LandmarkGreedyTrainer` (landmark envs) subclass
:class:`QRegression` and fill its replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from stable_baselines3.common.callbacks import CallbackList
from torch.nn import functional as F
from tqdm import tqdm

from agents.dqn import AgentConfig

__all__ = ["MAX_BUFFER_SIZE", "GreedyConfig", "GreedyModel", "QRegression", "train_with_callbacks"]

MAX_BUFFER_SIZE = 50_000
"""the most samples an experiment's ``agent.buffer_size`` gives the greedy learner"""


@dataclass(frozen=True)
class GreedyConfig:
    """A supervised greedy learner's settings (:class:`QRegression` and its subclasses)."""

    buffer_size: int = 20_000
    """rendered samples kept (each is one observation's uint8 patch plus the rewards)"""
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


class QRegression:
    """Regress a DQN policy's Q(s, .) on stored all-action rewards (Huber loss, Adam, clipping).

    Subclasses own the replay: :meth:`add_samples` renders ``count`` new samples into it and
    :meth:`batch` returns the observations and the reward targets of some of its rows.

    Args:
        policy: a DQN policy (:func:`agents.dqn.build_policy`); its optimizer is used.
        buffer_size: samples the replay keeps.
        batch_size: samples per gradient update.
        new_per_update: freshly rendered samples added before each update.
        max_grad_norm: gradient clipping, as SB3's DQN.
        seed: the sampler's seed.
        on_policy_fraction: share of fresh samples taken from the states the current network
            visits, so the regression also covers the network's own path.
    """

    def __init__(
        self,
        policy: Any,
        *,
        buffer_size: int,
        batch_size: int,
        new_per_update: int,
        max_grad_norm: float,
        seed: int,
        on_policy_fraction: float,
    ) -> None:
        if buffer_size < batch_size:
            raise ValueError(
                f"greedy trainer: buffer_size ({buffer_size}) must be >= batch_size ({batch_size})"
            )
        if not 0.0 <= on_policy_fraction <= 1.0:
            raise ValueError(
                f"greedy trainer: on_policy_fraction: expected a share in [0, 1], got {on_policy_fraction}"
            )
        self.policy = policy
        self.capacity = int(buffer_size)
        self.batch_size = int(batch_size)
        self.new_per_update = max(1, int(new_per_update))
        self.max_grad_norm = float(max_grad_norm)
        self.on_policy_fraction = float(on_policy_fraction)
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.cursor = 0
        self.updates = 0
        self.samples = 0
        self.losses: list[float] = []

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def add_samples(self, count: int) -> None:
        """Render ``count`` new samples into the replay (advancing ``cursor``, ``count``, ``samples``)."""
        raise NotImplementedError

    def batch(self, rows: NDArray[np.int64]) -> tuple[dict[str, NDArray], NDArray[np.float32]]:
        """The observations (as the policy's observation space) and reward targets of replay ``rows``."""
        raise NotImplementedError

    def next_row(self) -> int:
        """The replay row the next sample goes to (a ring); counts the sample."""
        row = self.cursor
        self.cursor = (self.cursor + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)
        self.samples += 1
        return row

    def q_values(self, observations: dict[str, NDArray]) -> NDArray[np.float32]:
        """Q-values of a batch of observations, in evaluation mode: (batch, n_actions)."""
        was_training = self.policy.training
        self.policy.set_training_mode(False)
        with torch.no_grad():
            tensor, _ = self.policy.obs_to_tensor(observations)
            q = self.policy.q_net(tensor).cpu().numpy()
        self.policy.set_training_mode(was_training)
        return q

    def update(self) -> float:
        """Render ``new_per_update`` samples, then one gradient step on a replay batch; returns the loss."""
        self.add_samples(self.new_per_update if self.count >= self.batch_size else self.batch_size)
        rows = self.rng.integers(self.count, size=self.batch_size)
        observations, rewards = self.batch(rows)
        tensor, _ = self.policy.obs_to_tensor(observations)
        targets = torch.as_tensor(rewards, device=self.device)
        self.policy.set_training_mode(True)
        q_values = self.policy.q_net(tensor)
        loss = F.smooth_l1_loss(q_values, targets)
        self.policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        self.updates += 1
        value = float(loss.item())
        self.losses.append(value)
        return value


class GreedyModel:
    """The parts of an SB3 model that the training callbacks read (policy, logger, step count)."""

    def __init__(self, policy: Any, logger: Any) -> None:
        self.policy = policy
        self.logger = logger
        self.num_timesteps = 0


def train_with_callbacks(
    trainer: QRegression,
    callbacks: CallbackList,
    logger: Any,
    total_samples: int,
    done_samples: int = 0,
    progress_bar: bool = True,
) -> int:
    """Update ``trainer`` until ``total_samples`` rendered samples or a callback stops it.

    Drives SB3 callbacks by hand (``init_callback``, ``on_step`` after every update,
    ``on_training_end``), so validation, best-model saving, early stop, checkpoints and the
    time limit work as for SB3's DQN, with samples in the place of env steps. Logs
    ``train/loss`` (mean of the last 100 updates) every 100 updates. Returns the samples done
    (``done_samples`` included: those of an earlier session being resumed).
    """
    model = GreedyModel(trainer.policy, logger)
    model.num_timesteps = done_samples
    callbacks.init_callback(model)  # type: ignore[arg-type]
    steps = done_samples
    with tqdm(total=total_samples - done_samples, unit="sample", disable=not progress_bar) as bar:
        while steps < total_samples:
            before = trainer.samples
            loss = trainer.update()
            steps += trainer.samples - before
            bar.update(trainer.samples - before)
            if trainer.updates % 100 == 0:
                logger.record("train/loss", float(np.mean(trainer.losses[-100:])))
                logger.dump(steps)
                bar.set_postfix(loss=f"{loss:.4f}")
            model.num_timesteps = steps
            if not callbacks.on_step():
                break
    callbacks.on_training_end()
    return steps
