"""A tiny plug-in env and wrappers for tests/test_plugin.py, importable as ``plugin_envs:Name``.

Importing this module registers ``plugin/TinyPatch-v0`` (for ``env.imports``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register, registry

TINY_ID = "plugin/TinyPatch-v0"
MOVES_ZYX = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int32)


class TinyPatchEnv(gym.Env):
    """Walk to a target voxel of a random uint8 volume (shape (7, 6, 5), 2 mm voxels).

    Observation ``{"patch": (1, P, P, P) uint8 around the agent, "level": Discrete(2)}`` (level is
    0 far from the target, 1 within 2 voxels); pose ``[z, y, x]``; ``info["distance_mm"]``.
    Reward: the decrease of the distance in voxels. Terminates at the target.
    """

    def __init__(self, patch_size: int = 5, volume_seed: int = 0) -> None:
        rng = np.random.default_rng(volume_seed)
        self.patch_size = patch_size
        self.shape_zyx = np.array((7, 6, 5), dtype=np.int32)
        half = patch_size // 2
        self.padded = np.pad(rng.integers(1, 256, tuple(self.shape_zyx), dtype=np.uint8), half)
        self.target = rng.integers(0, self.shape_zyx).astype(np.int32)
        self.observation_space = spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (1, patch_size, patch_size, patch_size), np.uint8),
                "level": spaces.Discrete(2),
            }
        )
        self.action_space = spaces.Discrete(6)
        self._pose = np.zeros(3, dtype=np.int32)

    def observations_from_poses(self, poses: np.ndarray) -> dict[str, np.ndarray]:
        poses = np.asarray(poses, dtype=np.int32).reshape(-1, 3)
        size = self.patch_size
        patch = np.stack([self.padded[z : z + size, y : y + size, x : x + size] for z, y, x in poses])
        near = np.linalg.norm(poses - self.target, axis=1) <= 2.0
        return {"patch": patch[:, np.newaxis].copy(), "level": near.astype(np.int64)}

    def _observation(self) -> dict[str, Any]:
        batch = self.observations_from_poses(self._pose[np.newaxis])
        return {"patch": batch["patch"][0], "level": int(batch["level"][0])}

    def _distance(self) -> float:
        return float(np.linalg.norm(self._pose - self.target))

    def _info(self) -> dict[str, Any]:
        return {"pose": self._pose.copy(), "distance_mm": 2.0 * self._distance()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._pose = self.np_random.integers(0, self.shape_zyx).astype(np.int32)
        return self._observation(), self._info()

    def step(self, action: int):
        previous, before = self._pose.copy(), self._distance()
        self._pose = np.clip(self._pose + MOVES_ZYX[int(action)], 0, self.shape_zyx - 1).astype(np.int32)
        after = self._distance()
        info = {**self._info(), "previous_pose": previous}
        return self._observation(), before - after, bool(after == 0.0), False, info


def make_tiny_env(**kwargs: Any) -> gym.Env:
    """A factory entry point (not a class)."""
    return TinyPatchEnv(**kwargs)


class InvertPatch(gym.ObservationWrapper):
    """255 - patch: an observation wrapper the pose replay must apply."""

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, "patch": 255 - observation["patch"]}


class WidenPatch(gym.ObservationWrapper):
    """Returns an int16 patch but keeps the uint8 space: its output is not in its observation_space."""

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, "patch": observation["patch"].astype(np.int16) * 2}


class ScaleReward(gym.RewardWrapper):
    """Reward times ``factor``: leaves observations alone."""

    def __init__(self, env: gym.Env, factor: float = 2.0) -> None:
        super().__init__(env)
        self.factor = factor

    def reward(self, reward: float) -> float:
        return self.factor * float(reward)


class BlankPatchOnStep(gym.Wrapper):
    """Zeroes the patch in step() without being an ObservationWrapper: pose replay must refuse it."""

    def step(self, action: int):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return {**obs, "patch": np.zeros_like(obs["patch"])}, reward, terminated, truncated, info


class ShiftPerEpisode(gym.ObservationWrapper):
    """Adds an offset drawn at each reset: observation() alone cannot repeat it (refused statically)."""

    offset = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.offset = int(self.np_random.integers(1, 50)) if seed is None else seed % 50 + 1
        return super().reset(seed=seed, options=options)

    def observation(self, obs: dict) -> dict:
        return {**obs, "patch": (obs["patch"] + self.offset).astype(np.uint8)}


class NoisyPatch(gym.ObservationWrapper):
    """Adds fresh noise in observation(): looks pure, is not; only the replay probe can see it."""

    def observation(self, obs: dict) -> dict:
        noise = self.np_random.integers(0, 3, size=obs["patch"].shape, dtype=np.uint8)
        return {**obs, "patch": np.maximum(obs["patch"], noise)}


class RewardThatBlanks(ScaleReward):
    """A RewardWrapper whose own step() blanks the patch: not passive, whatever its base class."""

    def step(self, action: int):
        obs, reward, terminated, truncated, info = super().step(action)
        return {**obs, "patch": np.zeros_like(obs["patch"])}, reward, terminated, truncated, info


class NotAWrapper:
    """A class that is not a gymnasium.Wrapper."""

    def __init__(self, env: gym.Env) -> None:
        self.env = env


if TINY_ID not in registry:
    register(id=TINY_ID, entry_point="plugin_envs:TinyPatchEnv", max_episode_steps=20)
