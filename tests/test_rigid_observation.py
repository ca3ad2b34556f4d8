"""The rigid env's observation channels: intensity (unchanged), gradient (edge maps) and both."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from agents.dqn import AgentConfig, build_policy
from agents.experiments.config import ConfigError, RigidEnvConfig
from agents.greedy import GreedyTrainer
from agents.networks import VolumeFeatures
from envs.core import build_pyramid
from envs.core.pyramid import edge_map
from envs.data import Dataset, multimodal_lut
from envs.phantom import phantom_dataset
from envs.tasks import RigidRegistrationEnv, RigidWorld

SMALL = {"obs_size": 17, "misalignment_mm": 20, "misalignment_deg": 20}
ACTIONS = [0, 3, 7, 11, 4]
# sha256 of the observations below, computed with the code before observation channels existed.
HEAD_DIGEST = "bfc164f6f62e9ef4dd72d3f27f5115394f3341f6da1c87a29ccda1dcb3377bf2"


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return phantom_dataset(2, 0, 0, seed=3)


def _episode(env: RigidRegistrationEnv) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Observations and poses of a fixed reset/step sequence (the one ``HEAD_DIGEST`` hashes)."""
    obs, info = env.reset(seed=5)
    observations, poses = [obs["patch"]], [info["pose"]]
    for action in ACTIONS:
        obs, _, _, _, info = env.step(action)
        observations.append(obs["patch"])
        poses.append(info["pose"])
    obs, info = env.reset(seed=6, options={"level": 2})
    observations.append(obs["patch"])
    poses.append(info["pose"])
    return observations, poses


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_default_observation_is_unchanged(dataset: Dataset) -> None:
    env = RigidRegistrationEnv(dataset, "train", contrast="mixed", variants_per_case=2, **SMALL)
    assert env.observation_space["patch"].shape == (2, 17, 17, 17)
    observations, poses = _episode(env)
    digest = hashlib.sha256()
    for patch in observations:
        digest.update(patch.tobytes())
    assert digest.hexdigest() == HEAD_DIGEST
    world = env.world
    for patch, pose in zip(observations, poses, strict=True):  # the old path: fixed crop + resampled moving
        pair, level = world.pair(int(pose[0])), int(pose[1])
        assert np.array_equal(patch[0], pair.fixed_patches[level])
        assert np.array_equal(patch[1], world.render_moving(pair, level, pose[2:].astype(np.int64)))


def test_edge_map_survives_monotonic_and_multimodal_remaps(dataset: Dataset) -> None:
    volume = dataset.load(dataset.split("train")[0]).volume
    level = build_pyramid(volume, (4.0,), "ct").levels[0].voxels
    gamma = np.where(level > 0, np.clip(np.rint(255 * (level / 255.0) ** 0.6), 1, 255), 0).astype(np.uint8)
    remapped = multimodal_lut()[level]
    edges = edge_map(level)
    assert edges.dtype == np.uint8
    assert edges.shape == level.shape
    assert edges.max() > 200
    assert _correlation(edges, edge_map(gamma)) > 0.9
    assert _correlation(edges, edge_map(remapped)) > 0.8
    assert not edge_map(np.zeros((9, 9, 9), np.uint8)).any()


def test_gradient_channels_agree_across_contrasts(dataset: Dataset) -> None:
    """Variant 0 (unmoved, no noise): the edge channels barely change when the moving side is
    re-contrasted by the non-monotonic LUT, while the moving intensities change a lot."""
    worlds = {
        contrast: RigidWorld(dataset, "train", contrast=contrast, observation="both", **SMALL)
        for contrast in ("same", "multimodal")
    }
    for level in range(3):
        obs = {}
        for contrast, world in worlds.items():
            pair = world.pair(world.pair_index(dataset.split("train")[0].case_id, 0))
            obs[contrast] = world.observation(pair, level, np.zeros(6, np.int64))["patch"]
        same, multi = obs["same"], obs["multimodal"]
        assert same.shape == (4, 17, 17, 17)
        assert np.array_equal(same[0], multi[0])
        assert np.array_equal(same[2], multi[2])
        edges, intensities = _correlation(same[3], multi[3]), _correlation(same[1], multi[1])
        assert edges > 0.7, (level, edges)
        assert edges > intensities + 0.1, (level, edges, intensities)
        # unmoved and same contrast: the moving edge channel lies on the fixed one
        assert np.abs(same[3].astype(int) - same[2].astype(int)).max() <= 1


@pytest.mark.parametrize("observation", ["gradient", "both"])
def test_replayed_observations_equal_stepped_ones(dataset: Dataset, observation: str) -> None:
    env = RigidRegistrationEnv(
        dataset,
        "train",
        contrast="mixed",
        variants_per_case=2,
        partial_fov=0.5,
        observation=observation,
        **SMALL,
    )
    channels = 2 if observation == "gradient" else 4
    assert env.observation_space["patch"].shape == (channels, 17, 17, 17)
    observations, poses = _episode(env)
    rebuilt = env.world.observations_from_poses(np.stack(poses))
    assert rebuilt["patch"].shape == (len(poses), channels, 17, 17, 17)
    for row, patch in enumerate(observations):
        assert env.observation_space.contains({"patch": patch, "level": int(poses[row][1])})
        assert np.array_equal(rebuilt["patch"][row], patch)
    if observation == "gradient":  # edges, not intensities
        pair = env.world.pair(int(poses[0][0]))
        assert np.array_equal(observations[0][0], pair.fixed_edges[int(poses[0][1])])
    features = VolumeFeatures(env.observation_space, features_dim=8)
    batch = {"patch": torch.as_tensor(rebuilt["patch"][:2]).float(), "level": torch.eye(3)[[0, 1]]}
    assert features(batch).shape == (2, 8)


def test_bad_observation_is_refused(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match=r"observation.*'edges'"):
        RigidWorld(dataset, "train", observation="edges", **SMALL)
    with pytest.raises(ConfigError, match=r"env\.observation.*'edges'"):
        RigidEnvConfig(observation="edges")
    assert RigidEnvConfig(observation="gradient").world_kwargs()["observation"] == "gradient"


@pytest.mark.parametrize("observation", ["gradient", "both"])
def test_the_greedy_learner_samples_what_the_env_observes(dataset: Dataset, observation: str) -> None:
    env = RigidRegistrationEnv(dataset, "train", variants_per_case=1, observation=observation, **SMALL)
    config = AgentConfig(channels=(4,), kernel_sizes=(3,), strides=(2,), features_dim=8, net_arch=(8,))
    policy = build_policy(config, env.observation_space, env.action_space)
    trainer = GreedyTrainer(policy, env.world, buffer_size=8, batch_size=4, new_per_update=4, seed=0)
    trainer.add_samples(4)
    channels = env.observation_space["patch"].shape[0]
    assert trainer.patches.shape[1] == channels
    fixed_edges = trainer.patches[:4, 0] if observation == "gradient" else trainer.patches[:4, 2]
    assert fixed_edges.any()  # edge channels were filled, not left empty
    for row in range(4):  # the fixed edge channel is the pair's edge map at the sample's level
        level = int(trainer.levels[row])
        assert any(
            np.array_equal(fixed_edges[row], env.world.pair(index).fixed_edges[level])
            for index in range(env.world.n_variants)
        )
