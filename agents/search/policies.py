"""What a search asks a policy, one protocol per task, and the policies that answer it.

A policy maps a batch of observations to Q-values ``(batch, n_actions)``; the search takes the
argmax of each row. Landmark search calls ``policy(observations, variant, state, active)``
(all active agents of one volume in one batch); alignment search calls
``policy(observations, pair, params, level)`` (a batch of one). :class:`QNetworkPolicy` reads
only the observations, so one instance serves both tasks; the oracles read the ground truth
instead and need no training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from envs.tasks import ACTIONS_ZYX, AlignmentPair, AlignmentWorld, Variant

__all__ = [
    "AgentState",
    "AlignmentOracle",
    "AlignmentPolicy",
    "LandmarkPolicy",
    "OraclePolicy",
    "QNetworkPolicy",
]


@dataclass
class AgentState:
    """The agents of one landmark search, as arrays over agents (B = landmarks x starts).

    Positions are voxel indices ``(z, y, x)`` at each agent's own pyramid level; the search
    (:func:`agents.search.detect_landmarks`) owns and updates it, a policy only reads it.
    """

    landmark: NDArray[np.int64]  # (B,)
    level: NDArray[np.int64]  # (B,)
    position_zyx: NDArray[np.int64]  # (B, 3) at the agent's level
    history_zyx: NDArray[np.int64]  # (B, frames, 3), most recent first
    done: NDArray[np.bool_]  # (B,)
    left_volume: NDArray[np.bool_]  # (B,)
    steps: NDArray[np.int64]  # (B,) total steps
    level_steps: NDArray[np.int64]  # (B,)
    blocked: NDArray[np.int64]  # (B,) blocked moves at the current level
    last_q_max: NDArray[np.float64]  # (B,)
    last_q: NDArray[np.float64]  # (B, 6) the Q-values of each agent's last step
    final_lps: NDArray[np.float64]  # (B, 3) sub-voxel answer (cycle_mean, q_subvoxel), NaN until set
    # (B,) True once an agent ended with ``q_subvoxel``: its offset is computed after the search,
    # for every such agent in one batch, from ``last_q`` at ``position_zyx``
    subvoxel_pending: NDArray[np.bool_]
    recent: list[list[tuple[int, ...]]] = field(default_factory=list)  # (z, y, x) per position
    # max Q when acting from each of ``recent``: the lowest marks where the agent expects no gain.
    recent_q: list[list[float]] = field(default_factory=list)
    # the 6 Q-values when acting from each of ``recent`` (``None`` until the agent acted there)
    recent_q_values: list[list[NDArray[np.float64] | None]] = field(default_factory=list)
    # (level, z, y, x) per visited voxel; LPS mm only when the search is summarised
    trajectories: list[list[tuple[int, ...]]] = field(default_factory=list)


class LandmarkPolicy(Protocol):
    """Q-values ``(len(active), 6)`` for the active agents of a landmark search.

    Args (positional):
        observations: ``"patch"`` ``(len(active), frames, P, P, P)`` uint8, ``"landmark"`` and
            ``"level"`` ``(len(active),)`` integers, as the landmark env observes.
        variant: the volume searched (its pyramid and, for an oracle, its true targets).
        state: the search's agents; row ``i`` of the answer is agent ``active[i]``.
        active: indices of the agents still searching.
    """

    def __call__(
        self,
        observations: dict[str, NDArray],
        variant: Variant,
        state: AgentState,
        active: NDArray[np.int64],
        /,
    ) -> NDArray: ...


class AlignmentPolicy(Protocol):
    """Q-values ``(1, n_actions)`` for one registration at transform ``params``.

    Args (positional):
        observations: ``"patch"`` ``(1, ...)`` uint8 and ``"level"`` ``(1,)``, as the
            registration env observes.
        pair: the fixed / moving pair (for an oracle, its ground truth).
        params: the current parameters in integer units (:data:`envs.tasks.UNIT` per mm,
            degree or standard deviation).
        level: the current pyramid level (0 is the coarsest).
    """

    def __call__(
        self, observations: dict[str, NDArray], pair: AlignmentPair, params: NDArray[np.int64], level: int, /
    ) -> NDArray: ...


class QNetworkPolicy:
    """Q-values from a stable-baselines3 DQN policy (one batched forward pass), or the mean
    Q-values of several (an ensemble: networks of other seeds or runs with the same
    observation and action spaces; one forward pass each).

    It reads only the observations, so it is both a :class:`LandmarkPolicy` and an
    :class:`AlignmentPolicy`.
    """

    def __init__(self, policy: Any) -> None:
        import torch

        self.policies = list(policy) if isinstance(policy, (list, tuple)) else [policy]
        if not self.policies:
            raise ValueError("QNetworkPolicy: expected a policy or a non-empty list of policies")
        self.policy = self.policies[0]
        self._torch = torch
        for member in self.policies:
            member.set_training_mode(False)

    def __call__(self, observations: dict[str, NDArray], *context: object) -> NDArray[np.float64]:
        with self._torch.no_grad():
            tensor, _ = self.policy.obs_to_tensor(observations)
            q = self.policy.q_net(tensor).cpu().numpy().astype(np.float64)
            for member in self.policies[1:]:
                q += member.q_net(tensor).cpu().numpy()
            return q / len(self.policies)  # exact for one network (x / 1.0 == x)


class OraclePolicy:
    """Landmark oracle: Q(a) = decrease of the distance (in voxels of the agent's level) after
    move a; -1 for a move off the grid. These are the env's rewards (``LandmarkEnv.action_rewards``).

    Needs no training; it tests the search logic (levels, oscillation, borders) on its own.
    With ``final_point: "min_q"`` its error is the floor that the finest step sets (half a voxel
    per axis at most); its Q-values are exact immediate rewards, so ``"q_subvoxel"`` recovers the
    offset below the grid from them (:func:`agents.search.subvoxel_offset`).
    """

    def __call__(
        self, observations: dict[str, NDArray], variant: Variant, state: AgentState, active: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        q = np.empty((len(active), len(ACTIONS_ZYX)))
        for row, agent in enumerate(active):
            target = variant.targets_zyx[state.level[agent]][state.landmark[agent]]
            if np.isnan(target[0]):
                # An absent landmark: walk out of the volume (inferior, through the bottom).
                q[row] = 0.0
                q[row, 1] = 1.0
                continue
            position = state.position_zyx[agent]
            candidates = position[np.newaxis] + ACTIONS_ZYX
            before = np.linalg.norm(position - target)
            after = np.linalg.norm(candidates - target, axis=1)
            # A move off the grid gets the env's reward for it (-1, as in action_rewards): else
            # the least bad move from a voxel on the border may point out, and three such
            # blocked moves would report a landmark on the border as outside the scan.
            inside = np.all(
                (candidates >= 0) & (candidates < variant.pyramid.levels[state.level[agent]].shape_zyx),
                axis=1,
            )
            q[row] = np.where(inside, before - after, -1.0)
        return q


class AlignmentOracle:
    """Alignment oracle: Q(a) = the reward of action a (needs the pair's ground truth)."""

    def __init__(self, world: AlignmentWorld) -> None:
        self.world = world

    def __call__(
        self, observations: dict[str, NDArray], pair: AlignmentPair, params: NDArray[np.int64], level: int
    ) -> NDArray:
        return self.world.candidate_rewards(pair, level, params)[np.newaxis]
