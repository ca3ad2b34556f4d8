"""A replay buffer that stores poses instead of patches and re-renders observations when sampled.

A buffer that stores every patch grows with the patch volume, and SB3's ``DictReplayBuffer``
stores next observations separately on top. An env state is fully described by a small integer
pose, and the env rebuilds the observation of any pose deterministically, so this buffer keeps
two poses per transition and asks a ``renderer`` for the patches of the sampled batch only
(``bench/bench_landmark_env.py`` measures the memory per transition of both).

Wrapped envs: :func:`wrapped_renderer` renders poses with the unwrapped env, then applies the chain's
observation wrappers, innermost first; a wrapper that may change observations otherwise is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium import wrappers as gym_wrappers
from stable_baselines3.common import vec_env as sb3_vec
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

__all__ = [
    "PoseRenderer",
    "PoseReplayBuffer",
    "ReplayRefused",
    "WrappedRenderer",
    "check_sb3_vec_env",
    "renderer_for",
    "wrapped_renderer",
]

#: ``renderer(poses (B, pose_dim) int32) -> {"patch": (B, frames, P, P, P) uint8, key: (B,) int64, ...}``
PoseRenderer = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class PoseReplayBuffer(DictReplayBuffer):
    """SB3 replay buffer for Dict observations that stores poses and re-renders observations.

    Per transition it keeps ``info["previous_pose"]`` and ``info["pose"]`` (int32, ``pose_dim`` each), the
    action, the reward, the done flag and the time-limit flag. At sample time the poses of the batch
    (observations and next observations together, one call) go through ``renderer``.

    It subclasses ``DictReplayBuffer`` only so SB3's type checks accept it (no patch arrays). After an
    auto-reset the final state is still ``infos[i]["pose"]``. With ``n_envs > 1`` the renderer must
    render the poses of every env (e.g. the pose names the case).

    The renderer is not pickled (``__getstate__`` drops it): a renderer is usually a bound method of an env
    that holds whole volumes. After ``load_replay_buffer``, attach one with :meth:`set_renderer`.

    Args:
        buffer_size: Maximum number of transitions (over all envs, as in SB3).
        observation_space: The env's ``spaces.Dict`` observation space (used to check rendered batches).
        action_space: ``spaces.Discrete`` action space.
        device: Torch device of the sampled tensors.
        n_envs: Number of parallel envs.
        optimize_memory_usage: Must be False (poses are already tiny); accepted because SB3 passes it.
        handle_timeout_termination: If True, a transition whose info has ``"TimeLimit.truncated"`` True is
            bootstrapped (done treated as not done), as in SB3.
        renderer: ``renderer(poses) -> dict obs``; may be None until :meth:`set_renderer` is called.
        pose_dim: Length of a pose; if None it is taken from the first added transition.

    Raises:
        ValueError: On an unsupported action space or ``optimize_memory_usage=True``.
    """

    poses: np.ndarray | None
    next_poses: np.ndarray | None

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        renderer: PoseRenderer | None = None,
        pose_dim: int | None = None,
    ) -> None:
        # Skip DictReplayBuffer/ReplayBuffer.__init__: they allocate the patch arrays this buffer avoids.
        super(ReplayBuffer, self).__init__(
            buffer_size, observation_space, action_space, device, n_envs=n_envs
        )
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(
                f"PoseReplayBuffer: observation_space must be a spaces.Dict, got {observation_space}"
            )
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"PoseReplayBuffer: action_space must be spaces.Discrete, got {action_space}")
        if optimize_memory_usage:
            raise ValueError(
                "PoseReplayBuffer: optimize_memory_usage must be False (poses are already small)"
            )
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.renderer = renderer
        self.buffer_size = max(buffer_size // n_envs, 1)

        action_dtype = np.int16 if action_space.n <= np.iinfo(np.int16).max else np.int64
        self.actions = np.zeros((self.buffer_size, self.n_envs, 1), dtype=action_dtype)
        self.rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        # SB3 writes ``dones[pos] = True`` when it truncates a trajectory, so keep the name and a 2-D layout.
        self.dones = np.zeros((self.buffer_size, self.n_envs), dtype=np.bool_)
        self.timeouts = np.zeros((self.buffer_size, self.n_envs), dtype=np.bool_)
        self.poses = None
        self.next_poses = None
        if pose_dim is not None:
            self._allocate_poses(pose_dim)

    def _allocate_poses(self, pose_dim: int) -> None:
        shape = (self.buffer_size, self.n_envs, pose_dim)
        self.poses = np.zeros(shape, dtype=np.int32)
        self.next_poses = np.zeros(shape, dtype=np.int32)

    @property
    def pose_dim(self) -> int | None:
        """Length of a stored pose, or None before the first transition."""
        return None if self.poses is None else int(self.poses.shape[-1])

    def set_renderer(self, renderer: PoseRenderer) -> None:
        """Attach the callable that turns poses (B, pose_dim) into a batch of observations."""
        self.renderer = renderer

    def nbytes_per_transition(self) -> float:
        """Bytes of storage per transition (poses, action, reward, done, timeout), measured on the arrays.

        Returns:
            Total bytes of all per-transition arrays divided by their capacity in transitions.

        Raises:
            RuntimeError: Before the pose arrays exist (no transition added and no ``pose_dim`` given).
        """
        if self.poses is None or self.next_poses is None:
            raise RuntimeError("PoseReplayBuffer: pose_dim is unknown until the first add(); pass pose_dim=")
        arrays = (self.poses, self.next_poses, self.actions, self.rewards, self.dones, self.timeouts)
        return sum(array.nbytes for array in arrays) / (self.buffer_size * self.n_envs)

    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store one vectorised env step; ``obs``/``next_obs`` are ignored in favour of the infos' poses.

        Args:
            obs: Observations before the step (unused; they are re-rendered from ``previous_pose``).
            next_obs: Observations after the step (unused; re-rendered from ``pose``).
            action: (n_envs,) or (n_envs, 1) actions.
            reward: (n_envs,) rewards.
            done: (n_envs,) episode-end flags (terminated or truncated).
            infos: n_envs info dicts, each with ``"previous_pose"`` and ``"pose"`` int arrays (pose_dim,).

        Raises:
            ValueError: If an info lacks ``"pose"`` or ``"previous_pose"``, or a pose has the wrong length.
        """
        if len(infos) != self.n_envs:
            raise ValueError(f"PoseReplayBuffer.add: expected {self.n_envs} infos, got {len(infos)}")
        try:
            previous = np.stack([np.asarray(info["previous_pose"]) for info in infos])
            current = np.stack([np.asarray(info["pose"]) for info in infos])
        except KeyError as error:
            raise ValueError(
                f"PoseReplayBuffer.add: every step info needs 'previous_pose' and 'pose', missing {error}; "
                "use the sb3 replay buffer for envs without poses"
            ) from error
        if self.poses is None:
            self._allocate_poses(previous.shape[-1])
        if previous.shape != (self.n_envs, self.pose_dim) or current.shape != previous.shape:
            raise ValueError(
                f"PoseReplayBuffer.add: expected poses of shape ({self.n_envs}, {self.pose_dim}), "
                f"got previous_pose {previous.shape} and pose {current.shape}"
            )
        assert self.poses is not None
        assert self.next_poses is not None
        self.poses[self.pos] = previous
        self.next_poses[self.pos] = current
        self.actions[self.pos] = np.asarray(action).reshape(self.n_envs, 1)
        self.rewards[self.pos] = np.asarray(reward).reshape(self.n_envs)
        self.dones[self.pos] = np.asarray(done).reshape(self.n_envs)
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = [bool(info.get("TimeLimit.truncated", False)) for info in infos]

        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def sample(  # type: ignore[override]
        self, batch_size: int, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        """Sample ``batch_size`` transitions uniformly (with replacement), rendering their observations.

        Returns:
            ``DictReplayBufferSamples`` with observations/next_observations as dicts of (B, ...) tensors
            (Discrete keys as (B, 1) like SB3's buffer), actions (B, 1) int64, rewards (B, 1) and
            dones (B, 1) float32 where time-limit ends count as not done.
        """
        if self.size() == 0:
            raise RuntimeError("PoseReplayBuffer.sample: the buffer is empty")
        return super(ReplayBuffer, self).sample(batch_size=batch_size, env=env)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        # The global numpy RNG, as SB3's own sample(): SB3 seeds it in set_random_seed.
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))  # noqa: NPY002
        return self.samples_at(batch_inds, env_indices, env)

    def samples_at(
        self, batch_inds: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        """The transitions stored at buffer rows ``batch_inds`` of envs ``env_indices``, rendered.

        Args:
            batch_inds: (B,) row indices in [0, size()).
            env_indices: (B,) env indices in [0, n_envs).
            env: Optional VecNormalize whose statistics normalise observations and rewards, as in SB3.

        Returns:
            The batch as described in :meth:`sample`.
        """
        if self.renderer is None:
            raise RuntimeError(
                "PoseReplayBuffer: no renderer attached; call set_renderer(env.observations_from_poses)"
            )
        assert self.poses is not None
        assert self.next_poses is not None
        batch_inds, env_indices = np.asarray(batch_inds), np.asarray(env_indices)
        batch = len(batch_inds)
        # One renderer call for both halves: batched rendering amortises its per-call overhead.
        poses = np.concatenate(
            [self.poses[batch_inds, env_indices], self.next_poses[batch_inds, env_indices]]
        )
        rendered = self._check_rendered(self.renderer(poses), 2 * batch)
        obs = self._normalize_obs({key: value[:batch] for key, value in rendered.items()}, env)
        next_obs = self._normalize_obs({key: value[batch:] for key, value in rendered.items()}, env)
        assert isinstance(obs, dict)
        assert isinstance(next_obs, dict)

        timeouts = self.timeouts[batch_inds, env_indices]
        dones = self.dones[batch_inds, env_indices] & ~timeouts
        rewards = self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env)
        return DictReplayBufferSamples(
            observations={key: self.to_torch(value) for key, value in obs.items()},
            actions=self.to_torch(self.actions[batch_inds, env_indices].astype(np.int64)),
            next_observations={key: self.to_torch(value) for key, value in next_obs.items()},
            dones=self.to_torch(dones.astype(np.float32).reshape(-1, 1)),
            rewards=self.to_torch(np.asarray(rewards, dtype=np.float32)),
        )

    def _check_rendered(self, rendered: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """Check the renderer's batch against the observation space and reshape it like SB3's buffer."""
        missing = set(self.obs_shape) - set(rendered)
        if missing:
            raise ValueError(f"PoseReplayBuffer: the renderer's output lacks keys {sorted(missing)}")
        out = {}
        for key, shape in self.obs_shape.items():
            value = np.asarray(rendered[key])
            if value.size != batch * int(np.prod(shape)):
                raise ValueError(
                    f"PoseReplayBuffer: renderer key {key!r} has shape {value.shape}, "
                    f"expected ({batch}, *{shape})"
                )
            # Discrete keys come as (B,); SB3's buffer hands them out as (B, 1), which preprocess_obs expects.
            out[key] = value.reshape(batch, *shape)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # The renderer is typically an env's bound method: pickling it would pickle whole volumes.
        state = self.__dict__.copy()
        state["renderer"] = None
        return state


# ---------------------------------------------------------------------- replay through wrappers
class ReplayRefused(ValueError):
    """Pose replay cannot rebuild this env's observations; the message names why, on one line."""


# Wrappers that never change observations (the pose replay looks through them), and observation
# wrappers whose output depends on more than the current observation (running statistics, the step
# count, past observations, the rendered frame), so that a pose cannot rebuild it.
_PASSIVE = "TimeLimit OrderEnforcing PassiveEnvChecker RecordEpisodeStatistics RecordVideo RenderCollection"
_PASSIVE_WRAPPERS: tuple[type, ...] = (
    gym.RewardWrapper,
    gym.ActionWrapper,
    Monitor,
    *(getattr(gym_wrappers, name) for name in f"{_PASSIVE} HumanRendering Autoreset NormalizeReward".split()),
)
_STATEFUL = "NormalizeObservation DelayObservation TimeAwareObservation AddRenderObservation"
_STATEFUL_OBSERVATION_WRAPPERS = tuple(getattr(gym_wrappers, name) for name in _STATEFUL.split())


def _refuse(wrapper: gym.Env, why: str) -> ReplayRefused:
    return ReplayRefused(
        f"agent.replay: pose cannot replay through wrapper {type(wrapper).__name__} "
        f"({' '.join(why.split())}); set agent.replay: sb3 (or auto)"
    )


def _own_step(wrapper: gym.Env) -> bool:
    """Whether ``step`` or ``reset`` is written outside Gymnasium / SB3 (it may change observations)."""
    known = ("gymnasium.", "stable_baselines3.")
    return any(not getattr(type(wrapper), name).__module__.startswith(known) for name in ("step", "reset"))


def _observation_wrappers(env: gym.Env) -> list[gym.ObservationWrapper]:
    """The chain's observation wrappers, innermost first; refuses a wrapper that may change observations."""
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    applied = []
    for wrapper in reversed(chain):
        if isinstance(wrapper, _STATEFUL_OBSERVATION_WRAPPERS):
            raise _refuse(wrapper, "its observation depends on state, not on the current observation only")
        if isinstance(wrapper, gym.ObservationWrapper):
            if _own_step(wrapper):  # e.g. a draw per reset: observation() alone cannot repeat it
                raise _refuse(wrapper, "it overrides step/reset, so its observations may depend on state")
            applied.append(wrapper)
            continue
        same_space = wrapper.observation_space == wrapper.env.observation_space
        if isinstance(wrapper, _PASSIVE_WRAPPERS) and same_space and not _own_step(wrapper):
            continue
        own_step = type(wrapper).step is not gym.Wrapper.step or type(wrapper).reset is not gym.Wrapper.reset
        if own_step or not same_space:
            raise _refuse(wrapper, "it overrides step/reset and is not a gymnasium.ObservationWrapper")
    return applied


class WrappedRenderer:
    """``renderer(poses)``: the unwrapped env's ``observations_from_poses``, then the observation wrappers.

    Each wrapper's ``observation()`` is applied per sample, innermost first, as in ``env.step``; the
    first batch is checked against the outermost ``observation_space`` (:class:`ReplayRefused`).

    Args:
        base: The unwrapped env's ``observations_from_poses``.
        wrappers: The ``gymnasium.ObservationWrapper`` s of the chain, innermost first.
        space: The outermost env's observation space (a ``spaces.Dict``).
    """

    def __init__(
        self, base: PoseRenderer, wrappers: list[gym.ObservationWrapper], space: spaces.Space
    ) -> None:
        self.base, self.wrappers, self.observation_space = base, wrappers, space
        self.checked = False

    def __call__(self, poses: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.base(poses)
        if not self.wrappers:
            return dict(batch)
        inner = self.wrappers[0].env.observation_space
        rebuilt = []
        for index in range(len(np.asarray(poses))):
            obs: Any = _sample(batch, index, inner)
            for wrapper in self.wrappers:
                obs = wrapper.observation(obs)
            rebuilt.append(obs)
        if not self.checked and not self.observation_space.contains(rebuilt[0]):
            raise _refuse(self.wrappers[-1], f"the rebuilt observation is not in {self.observation_space}")
        self.checked = True
        return {key: np.stack([np.asarray(obs[key]) for obs in rebuilt]) for key in rebuilt[0]}


def _sample(batch: Mapping[str, np.ndarray], index: int, space: spaces.Space) -> dict[str, Any]:
    """Observation ``index`` of a rendered batch, as the env hands it out (Discrete keys as ints)."""
    sample = {}
    for key, values in batch.items():
        value = np.asarray(values)[index]
        sub = space[key] if isinstance(space, spaces.Dict) and key in space.spaces else None
        sample[key] = int(value) if isinstance(sub, spaces.Discrete) else value
    return sample


def wrapped_renderer(env: gym.Env) -> WrappedRenderer:
    """A pose renderer (:class:`WrappedRenderer`) for ``env`` that honours its wrapper chain.

    Args:
        env: A Gymnasium env, wrapped or not, whose unwrapped env has ``observations_from_poses``.

    Raises:
        ReplayRefused: If the unwrapped env has no ``observations_from_poses``, the observation space is
            not a ``spaces.Dict``, or a wrapper may change observations in a way the replay cannot
            repeat (one line naming the wrapper and saying ``set agent.replay: sb3``).
    """
    base = getattr(env.unwrapped, "observations_from_poses", None)
    if base is None:
        raise ReplayRefused(
            f"agent.replay: pose needs the env to rebuild observations from poses: "
            f"{type(env.unwrapped).__name__} has no observations_from_poses and no pose_renderer was given; "
            "set agent.replay: sb3 (or auto)"
        )
    if not isinstance(env.observation_space, spaces.Dict):
        raise ReplayRefused(
            f"agent.replay: pose stores Dict observations, got {type(env.observation_space).__name__}; "
            "set agent.replay: sb3 (or auto)"
        )
    return WrappedRenderer(base, _observation_wrappers(env), env.observation_space)


# VecEnv wrappers that leave observations as the envs return them (VecNormalize's statistics are
# applied by the buffer at sample time, as in SB3).
_PASSIVE_VEC_WRAPPERS = (sb3_vec.VecMonitor, VecNormalize, sb3_vec.VecCheckNan)


def check_sb3_vec_env(env: Any) -> None:
    """Refuse a Gymnasium vector env where SB3 needs its own VecEnv (the message says how to make one)."""
    if isinstance(env, gym.vector.VectorEnv):
        raise ValueError(
            f"got a Gymnasium vector env ({type(env).__name__}); SB3 takes its own vector "
            "envs: stable_baselines3.common.vec_env.DummyVecEnv([make_env] * n) (same process) or "
            "SubprocVecEnv([make_env] * n) (one process per env), e.g. via make_vec_env"
        )


def renderer_for(env: VecEnv | gym.Env) -> PoseRenderer:
    """A renderer for the env's poses that honours its wrappers, when the env lives in this process.

    Raises:
        ReplayRefused: One line saying why not (envs in other processes, a wrapper that changes
            observations, no ``observations_from_poses``) and what to do.
    """
    if isinstance(env, VecEnv):
        while isinstance(env, sb3_vec.VecEnvWrapper):
            if not isinstance(env, _PASSIVE_VEC_WRAPPERS):
                raise ReplayRefused(
                    f"agent.replay: pose cannot replay through {type(env).__name__} (it changes the "
                    "observations); set agent.replay: sb3 (or auto)"
                )
            env = env.venv
        if not isinstance(env, sb3_vec.DummyVecEnv):
            raise ReplayRefused(
                f"agent.replay: pose with {type(env).__name__} (envs in other processes): pass build_model("
                "pose_renderer=wrapped_renderer(make_env())), use DummyVecEnv, or set agent.replay: sb3"
            )
        env = env.envs[0]
    return wrapped_renderer(env)
