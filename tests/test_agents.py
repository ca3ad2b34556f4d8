"""Tests for agents.networks, agents.dqn and agents.replay on a tiny in-memory pose env."""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.checkpoints import load_policy, save_policy
from agents.dqn import (
    AgentConfig,
    DoubleDQN,
    build_model,
    double_td_target,
    greedy_td_target,
    predict_q_values,
)
from agents.networks import DuelingDQNPolicy, DuelingQNetwork, VolumeFeatures, set_torch_threads
from agents.replay import PoseReplayBuffer

set_torch_threads(1)

# (dz, dy, dx) per action: an action table, as the landmark env has.
MOVES_ZYX = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int32)


class FakePoseEnv(gym.Env):
    """Landmark-env look-alike: random uint8 volumes, pose = [variant, landmark, level, (z, y, x) * frames].

    The positions are the current one first, then the history (most recent first). The patch of every
    frame is the P^3 crop centred on that position of the (zero-padded) volume of ``(variant, level)``.
    It terminates within one voxel of the target and truncates after ``max_steps`` steps.
    """

    def __init__(
        self,
        patch_size: int = 9,
        frames: int = 1,
        n_landmarks: int = 2,
        n_levels: int = 2,
        n_variants: int = 3,
        shape_zyx: tuple[int, int, int] = (7, 6, 5),
        max_steps: int = 6,
        volume_seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(volume_seed)
        self.patch_size, self.frames, self.max_steps = patch_size, frames, max_steps
        self.n_landmarks, self.n_levels, self.n_variants = n_landmarks, n_levels, n_variants
        self.shape_zyx = np.array(shape_zyx, dtype=np.int32)
        volumes = rng.integers(1, 256, (n_variants, n_levels, *shape_zyx), dtype=np.uint8)
        half = patch_size // 2
        self.padded = np.pad(volumes, ((0, 0), (0, 0), (half, half), (half, half), (half, half)))
        self.targets_zyx = rng.integers(0, self.shape_zyx, (n_variants, n_landmarks, 3)).astype(np.int32)
        self.observation_space = spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (frames, patch_size, patch_size, patch_size), np.uint8),
                "landmark": spaces.Discrete(n_landmarks),
                "level": spaces.Discrete(n_levels),
            }
        )
        self.action_space = spaces.Discrete(6)
        self.pose_dim = 3 + 3 * frames
        self._pose = np.zeros(self.pose_dim, dtype=np.int32)
        self._steps = 0

    def observations_from_poses(self, poses: np.ndarray) -> dict[str, np.ndarray]:
        poses = np.asarray(poses, dtype=np.int32).reshape(-1, self.pose_dim)
        size = self.patch_size
        patch = np.empty((len(poses), self.frames, size, size, size), dtype=np.uint8)
        for i, pose in enumerate(poses):
            variant, _, level = pose[:3]
            for frame, (z, y, x) in enumerate(pose[3:].reshape(self.frames, 3)):
                patch[i, frame] = self.padded[variant, level, z : z + size, y : y + size, x : x + size]
        return {
            "patch": patch,
            "landmark": poses[:, 1].astype(np.int64),
            "level": poses[:, 2].astype(np.int64),
        }

    def _observation(self) -> dict[str, Any]:
        obs = self.observations_from_poses(self._pose[None])
        return {"patch": obs["patch"][0], "landmark": int(obs["landmark"][0]), "level": int(obs["level"][0])}

    def _distance(self) -> float:
        target = self.targets_zyx[self._pose[0], self._pose[1]]
        return float(np.linalg.norm(self._pose[3:6] - target))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        start = self.np_random.integers(0, self.shape_zyx).astype(np.int32)
        head = [self.np_random.integers(self.n_variants), self.np_random.integers(self.n_landmarks)]
        head.append(self.np_random.integers(self.n_levels))
        self._pose = np.concatenate([np.array(head, dtype=np.int32), np.tile(start, self.frames)])
        self._steps = 0
        return self._observation(), {"pose": self._pose.copy()}

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        previous = self._pose.copy()
        before = self._distance()
        position = np.clip(self._pose[3:6] + MOVES_ZYX[int(action)], 0, self.shape_zyx - 1)
        self._pose = np.concatenate([self._pose[:3], position, self._pose[3:-3]]).astype(np.int32)
        self._steps += 1
        after = self._distance()
        terminated = bool(after <= 1.0)
        truncated = bool(self._steps >= self.max_steps)
        info = {"pose": self._pose.copy(), "previous_pose": previous}
        return self._observation(), before - after, terminated, truncated, info


def tiny_config(**overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "channels": (4, 8),
        "kernel_sizes": (3, 3),
        "strides": (2, 1),
        "features_dim": 32,
        "net_arch": (16,),
        "buffer_size": 1000,
        "learning_starts": 100,
        "batch_size": 16,
        "target_update_interval": 50,
    }
    values.update(overrides)
    return AgentConfig(**values)


def patch_space(frames: int, size: int, n_landmarks: int = 4, n_levels: int = 3) -> spaces.Dict:
    return spaces.Dict(
        {
            "patch": spaces.Box(0, 255, (frames, size, size, size), np.uint8),
            "landmark": spaces.Discrete(n_landmarks),
            "level": spaces.Discrete(n_levels),
        }
    )


def one_hot_obs(space: spaces.Dict, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as SB3's preprocessing hands it to an extractor: float patch 0..255, one-hot keys."""
    generator = torch.Generator().manual_seed(seed)
    patch = torch.randint(0, 256, (batch, *space["patch"].shape), generator=generator).float()
    landmark = torch.randint(0, space["landmark"].n, (batch,), generator=generator)
    level = torch.randint(0, space["level"].n, (batch,), generator=generator)
    return {
        "patch": patch,
        "landmark": torch.nn.functional.one_hot(landmark, int(space["landmark"].n)).float(),
        "level": torch.nn.functional.one_hot(level, int(space["level"].n)).float(),
    }


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("size", [25, 45])
@pytest.mark.parametrize("frames", [1, 4])
def test_volume_features_shapes_follow_from_the_conv_arithmetic(size: int, frames: int) -> None:
    space = patch_space(frames, size)
    extractor = VolumeFeatures(space, features_dim=64)
    edge = size
    for kernel, stride in zip((5, 3, 3), (2, 2, 1), strict=True):
        edge = (edge - kernel) // stride + 1
    assert extractor.conv_flat_dim == 32 * edge**3
    assert extractor.head[0].in_features == 32 * edge**3 + 4 + 3
    assert extractor(one_hot_obs(space, batch=2)).shape == (2, 64)


def test_volume_features_rejects_a_patch_too_small_for_the_convs() -> None:
    with pytest.raises(ValueError, match="too small"):
        VolumeFeatures(patch_space(1, 5))


def test_volume_features_divides_the_patch_by_255() -> None:
    space = patch_space(2, 11)
    extractor = VolumeFeatures(space, features_dim=16, channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 1))
    obs = one_hot_obs(space, batch=3)
    with torch.no_grad():
        manual = extractor.head(
            torch.cat([extractor.conv(obs["patch"] / 255.0), obs["landmark"], obs["level"]], dim=1)
        )
        as_float = extractor(obs)
        as_uint8 = extractor({**obs, "patch": obs["patch"].to(torch.uint8)})
        unscaled = extractor.head(torch.cat([extractor.conv(obs["patch"]), obs["landmark"], obs["level"]], 1))
    torch.testing.assert_close(as_float, manual)
    torch.testing.assert_close(as_uint8, manual)
    assert not torch.allclose(unscaled, manual)  # so the comparison above can fail


def test_volume_features_depend_on_the_landmark_one_hot() -> None:
    space = patch_space(1, 11)
    extractor = VolumeFeatures(space, features_dim=16, channels=(4,), kernel_sizes=(3,), strides=(2,))
    obs = one_hot_obs(space, batch=1)
    other = {**obs, "landmark": torch.roll(obs["landmark"], 1, dims=1)}
    with torch.no_grad():
        assert not torch.allclose(extractor(obs), extractor(other))


def test_policy_convs_stay_channels_last_3d() -> None:
    model = build_model(tiny_config(), FakePoseEnv(), seed=0)
    for policy_net in (model.q_net, model.q_net_target):
        conv = policy_net.features_extractor.conv[0]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_dueling_head_identity() -> None:
    env = FakePoseEnv(patch_size=11, frames=2)
    policy = DuelingDQNPolicy(
        env.observation_space,
        env.action_space,
        lr_schedule=lambda _: 1e-3,
        net_arch=[16],
        features_extractor_kwargs={
            "features_dim": 32,
            "channels": (4,),
            "kernel_sizes": (3,),
            "strides": (2,),
        },
    )
    assert isinstance(policy.q_net, DuelingQNetwork)
    assert not hasattr(policy.q_net, "q_net")  # no unused single-stream head left behind
    batch = env.observations_from_poses(
        np.array([[0, 1, 0, 1, 2, 3, 0, 2, 3], [2, 0, 1, 6, 5, 4, 5, 5, 4]], dtype=np.int32)
    )
    obs, _ = policy.obs_to_tensor(batch)
    with torch.no_grad():
        q_values = policy.q_net(obs)
        value, advantage = policy.q_net.streams(obs)
    assert q_values.shape == (2, 6)
    assert advantage.abs().max() > 0  # a zero advantage would make the identity trivial
    torch.testing.assert_close(
        q_values - q_values.mean(dim=1, keepdim=True), advantage - advantage.mean(dim=1, keepdim=True)
    )
    torch.testing.assert_close(q_values.mean(dim=1, keepdim=True), value)


# ------------------------------------------------------------------------------------------ targets
def test_double_target_differs_from_dqn_target_by_hand() -> None:
    online = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 2.0], [0.0, 0.0, 9.0]])
    target = torch.tensor([[5.0, 3.0, 1.0], [0.0, 4.0, 6.0], [1.0, 2.0, 7.0]])
    rewards = torch.tensor([[1.0], [0.5], [-1.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    # row 0: online picks action 1, valued 3 by the target (the plain max would take 5);
    # row 1: terminated, no bootstrap; row 2: both nets agree on action 2.
    expected_double = torch.tensor([[1.0 + 0.9 * 3.0], [0.5], [-1.0 + 0.9 * 7.0]])
    expected_greedy = torch.tensor([[1.0 + 0.9 * 5.0], [0.5], [-1.0 + 0.9 * 7.0]])
    torch.testing.assert_close(double_td_target(online, target, rewards, dones, 0.9), expected_double)
    torch.testing.assert_close(greedy_td_target(target, rewards, dones, 0.9), expected_greedy)


def test_double_dqn_train_uses_the_double_target() -> None:
    model = build_model(tiny_config(algorithm="double", learning_starts=10_000), FakePoseEnv(), seed=1)
    assert isinstance(model, DoubleDQN)
    model.learn(total_timesteps=64)  # fills the buffer only (learning_starts not reached)
    with torch.no_grad():  # make the target net disagree with the online net
        for parameter in model.q_net_target.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    np.random.seed(3)  # noqa: NPY002 - SB3's buffers sample from numpy's global RNG
    batch = model.replay_buffer.sample(32)
    with torch.no_grad():
        next_online = model.q_net(batch.next_observations)
        next_target = model.q_net_target(batch.next_observations)
        current = model.q_net(batch.observations).gather(1, batch.actions.long())
    assert (next_online.argmax(1) != next_target.argmax(1)).any()
    by_hand = batch.rewards + (1 - batch.dones) * 0.9 * next_target.gather(
        1, next_online.argmax(1, keepdim=True)
    )
    torch.testing.assert_close(model.compute_target_q(batch), by_hand)
    assert not torch.allclose(by_hand, greedy_td_target(next_target, batch.rewards, batch.dones, 0.9))

    # One update on the same batch logs the Huber loss against the double target.
    model.replay_buffer.sample = lambda *args, **kwargs: batch  # type: ignore[method-assign]
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.train(gradient_steps=1, batch_size=32)
    expected_loss = torch.nn.functional.smooth_l1_loss(current, by_hand).item()
    assert model.logger.name_to_value["train/loss"] == pytest.approx(expected_loss, rel=1e-5)


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("field", "value"),
    [("algorithm", "ddqn"), ("replay", "disk"), ("device", "tpu"), ("channels", ()), ("gamma", 1.5)],
)
def test_config_rejects_unknown_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"AgentConfig.{field}"):
        AgentConfig(**{field: value})


def test_config_from_dict_names_an_unknown_key_and_accepts_lists() -> None:
    with pytest.raises(ValueError, match="'gama'"):
        AgentConfig.from_dict({"gama": 0.9})
    config = AgentConfig.from_dict({"channels": [8, 16, 32], "net_arch": []})
    assert config.channels == (8, 16, 32)
    assert config.net_arch == ()
    assert AgentConfig.from_dict(config.to_dict()) == config


def test_build_model_needs_a_renderer_for_pose_replay() -> None:
    env = FakePoseEnv()
    plain = gym.Env()
    plain.observation_space, plain.action_space = env.observation_space, env.action_space
    with pytest.raises(ValueError, match="pose_renderer"):
        build_model(tiny_config(replay="pose"), plain)


def test_build_model_picks_classes_from_the_config() -> None:
    env = FakePoseEnv()
    dqn = build_model(tiny_config(algorithm="dqn", dueling=False, replay="sb3"), env)
    assert type(dqn) is DQN
    assert type(dqn.replay_buffer) is DictReplayBuffer
    assert dqn.replay_buffer.handle_timeout_termination
    assert not isinstance(dqn.q_net, DuelingQNetwork)
    double = build_model(tiny_config(algorithm="double", dueling=True), env)
    assert isinstance(double, DoubleDQN)
    assert isinstance(double.replay_buffer, PoseReplayBuffer)
    assert isinstance(double.q_net, DuelingQNetwork)


# ------------------------------------------------------------------------------------------ replay
def test_pose_buffer_rerenders_what_sb3_stored_with_two_envs_and_auto_reset() -> None:
    """Same seed, same random actions: SB3's DictReplayBuffer and the pose buffer must hold the same data."""

    def make_venv() -> DummyVecEnv:
        return DummyVecEnv([lambda: FakePoseEnv(max_steps=5), lambda: FakePoseEnv(max_steps=7)])

    config = tiny_config(learning_starts=10_000, buffer_size=1000)
    models = {}
    for replay in ("sb3", "pose"):
        model = build_model(dataclasses.replace(config, replay=replay), make_venv(), seed=5)
        model.learn(total_timesteps=400)
        models[replay] = model
    reference, pose_buffer = models["sb3"].replay_buffer, models["pose"].replay_buffer
    assert isinstance(pose_buffer, PoseReplayBuffer)
    assert pose_buffer.pos == reference.pos == 200

    rows = np.repeat(np.arange(200), 2)
    env_indices = np.tile([0, 1], 200)
    sample = pose_buffer.samples_at(rows, env_indices)
    for key in ("patch", "landmark", "level"):
        expected = reference.observations[key][rows, env_indices]
        expected_next = reference.next_observations[key][rows, env_indices]
        np.testing.assert_array_equal(sample.observations[key].cpu().numpy(), expected)
        np.testing.assert_array_equal(sample.next_observations[key].cpu().numpy(), expected_next)
    np.testing.assert_array_equal(sample.actions.cpu().numpy(), reference.actions[rows, env_indices])
    np.testing.assert_array_equal(sample.rewards.cpu().numpy().ravel(), reference.rewards[rows, env_indices])
    reference_dones = reference.dones[rows, env_indices] * (1 - reference.timeouts[rows, env_indices])
    np.testing.assert_array_equal(sample.dones.cpu().numpy().ravel(), reference_dones)

    # Both kinds of episode end happened, so auto-reset and the timeout rule were exercised.
    terminated = pose_buffer.dones[:200] & ~pose_buffer.timeouts[:200]
    assert terminated.sum() > 0
    assert pose_buffer.timeouts[:200].sum() > 0
    assert sample.dones.sum() == terminated.sum()


def test_pose_buffer_timeouts_bootstrap_and_wraps_around() -> None:
    env = FakePoseEnv()
    buffer = PoseReplayBuffer(4, env.observation_space, env.action_space, n_envs=2, renderer=None)
    pose = np.array([1, 1, 1, 3, 2, 0], dtype=np.int32)
    step_x = np.array([0, 0, 0, 0, 0, 1], dtype=np.int32)
    for step in range(3):  # capacity 4 // 2 envs = 2 rows: the third step overwrites row 0
        infos = [
            {"pose": pose + step * step_x, "previous_pose": pose, "TimeLimit.truncated": True},
            {"pose": pose + 2 * step * step_x, "previous_pose": pose},
        ]
        buffer.add({}, {}, np.array([step, 5 - step]), np.array([1.0, -1.0]), np.array([True, True]), infos)
    assert buffer.full
    assert buffer.pos == 1
    buffer.set_renderer(env.observations_from_poses)
    sample = buffer.samples_at(np.array([0, 0, 1]), np.array([0, 1, 1]))
    np.testing.assert_array_equal(sample.dones.cpu().numpy().ravel(), [0.0, 1.0, 1.0])  # env 0 timed out
    np.testing.assert_array_equal(sample.actions.cpu().numpy().ravel(), [2, 3, 4])
    assert sample.actions.dtype == torch.int64
    expected_next = env.observations_from_poses(
        np.stack([pose + 2 * step_x, pose + 4 * step_x, pose + 2 * step_x])
    )
    np.testing.assert_array_equal(sample.next_observations["patch"].cpu().numpy(), expected_next["patch"])
    assert sample.observations["landmark"].shape == (3, 1)  # like SB3's buffer, for preprocess_obs

    no_timeouts = PoseReplayBuffer(
        2, env.observation_space, env.action_space, handle_timeout_termination=False
    )
    info = {"pose": pose, "previous_pose": pose, "TimeLimit.truncated": True}
    no_timeouts.add({}, {}, np.array([0]), np.array([0.0]), np.array([True]), [info])
    no_timeouts.set_renderer(env.observations_from_poses)
    assert no_timeouts.samples_at(np.array([0]), np.array([0])).dones.item() == 1.0


def test_pose_buffer_is_small_and_never_pickles_its_renderer() -> None:
    env = FakePoseEnv(frames=4)
    buffer = PoseReplayBuffer(
        50_000, env.observation_space, env.action_space, renderer=env.observations_from_poses, pose_dim=15
    )
    assert buffer.nbytes_per_transition() < 1024
    assert buffer.nbytes_per_transition() == 2 * 15 * 4 + 2 + 4 + 1 + 1
    restored = pickle.loads(pickle.dumps(buffer))
    assert restored.renderer is None
    assert buffer.renderer is not None
    with pytest.raises(ValueError, match="'pose'"):
        buffer.add(
            {}, {}, np.array([0]), np.array([0.0]), np.array([False]), [{"previous_pose": np.zeros(15)}]
        )


# ------------------------------------------------------------------------------------------ smoke learn
@pytest.mark.parametrize(
    ("algorithm", "dueling"),
    [("dqn", False), ("double", False), ("dqn", True)],
    ids=["dqn", "double", "dueling"],
)
def test_smoke_learn_then_save_and_load_policy(algorithm: str, dueling: bool, tmp_path: Path) -> None:
    env = FakePoseEnv(frames=2)
    model = build_model(tiny_config(algorithm=algorithm, dueling=dueling), env, seed=0)
    before = [p.detach().clone() for p in model.q_net.parameters()]
    model.learn(total_timesteps=300)
    assert model._n_updates == (300 - 100) // 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))

    path = save_policy(model, tmp_path / "checkpoints" / "best.pt")
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left behind
    assert path.stat().st_size < 200_000
    loaded = load_policy(path, env)
    assert isinstance(loaded, DuelingDQNPolicy) == dueling
    rng = np.random.default_rng(0)
    poses = np.column_stack(
        [rng.integers(0, 3, 16), rng.integers(0, 2, 16), rng.integers(0, 2, 16), rng.integers(0, 5, (16, 6))]
    ).astype(np.int32)
    batch = env.observations_from_poses(poses)
    model.policy.set_training_mode(True)
    q_trained = predict_q_values(model.policy, batch)
    assert model.policy.training  # predict_q_values restored the mode it found
    q_loaded = predict_q_values(loaded, batch)
    assert q_trained.shape == (16, 6)
    np.testing.assert_array_equal(q_trained, q_loaded)
    actions_trained, _ = model.predict(batch, deterministic=True)
    actions_loaded, _ = loaded.predict(batch, deterministic=True)
    np.testing.assert_array_equal(actions_trained, actions_loaded)


def test_load_policy_checks_the_spaces(tmp_path: Path) -> None:
    model = build_model(tiny_config(), FakePoseEnv(), seed=0)
    path = save_policy(model, tmp_path / "policy.pt")
    with pytest.raises(ValueError, match="observation_space"):
        load_policy(path, FakePoseEnv(n_landmarks=3))
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "missing.pt", FakePoseEnv())


def test_sb3_save_holds_no_renderer_or_buffer_and_loads_dueling(tmp_path: Path) -> None:
    env = FakePoseEnv()
    model = build_model(tiny_config(dueling=True), env, seed=0)
    model.learn(total_timesteps=150)
    model.save(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        data = json.loads(archive.read("data"))
    assert data["replay_buffer_kwargs"] == {"handle_timeout_termination": True}
    assert "replay_buffer" not in data
    loaded = DoubleDQN.load(tmp_path / "model.zip", env=env)
    assert isinstance(loaded.policy, DuelingDQNPolicy)
    assert loaded.replay_buffer.renderer is None  # re-attach before training on
    batch = env.observations_from_poses(np.array([[0, 1, 1, 2, 3, 4], [2, 0, 0, 6, 0, 1]], dtype=np.int32))
    np.testing.assert_array_equal(
        predict_q_values(model.policy, batch), predict_q_values(loaded.policy, batch)
    )
