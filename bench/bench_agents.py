"""Benchmark the agent side: gradient-update time, pose-buffer sampling, replay bytes per transition.

Prints a table and writes ``bench/results/agents.json``. Run: ``.venv/bin/python bench/bench_agents.py``.

What is timed:
- one ``DoubleDQN.train`` gradient step (dueling head, default :class:`agents.dqn.AgentConfig` network,
  batch 32) on a fixed, pre-rendered batch, so only the network work counts; P = 25 and 45, one frame,
  with the convs in ``channels_last_3d`` and in contiguous memory format, at 1 torch thread;
- ``PoseReplayBuffer.sample(32)`` against a numpy-slicing renderer of a 128^3 uint8 volume
  (and the renderer alone);
- bytes per transition of the pose buffer vs SB3's DictReplayBuffer, which stores obs and next obs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3.common.logger import Logger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.dqn import AgentConfig, DoubleDQN  # noqa: E402 - after the sys.path line, run as a script
from agents.networks import DuelingDQNPolicy, VolumeFeatures, set_torch_threads  # noqa: E402
from agents.replay import PoseReplayBuffer  # noqa: E402
from envs.io.atomic import atomic_write_text  # noqa: E402

VOLUME_EDGE = 128
N_LANDMARKS, N_LEVELS = 4, 3


class SliceWorld(gym.Env):
    """Spaces of the landmark env plus a renderer that slices one random 128^3 volume per level.

    pose = [variant, landmark, level, (z, y, x) * frames]; positions are patch corners.
    """

    def __init__(self, patch_size: int, frames: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.patch_size, self.frames = patch_size, frames
        self.volumes = rng.integers(0, 256, (N_LEVELS, VOLUME_EDGE, VOLUME_EDGE, VOLUME_EDGE), dtype=np.uint8)
        self.observation_space = spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (frames, patch_size, patch_size, patch_size), np.uint8),
                "landmark": spaces.Discrete(N_LANDMARKS),
                "level": spaces.Discrete(N_LEVELS),
            }
        )
        self.action_space = spaces.Discrete(6)
        self.pose_dim = 3 + 3 * frames

    def random_poses(self, count: int, rng: np.random.Generator) -> np.ndarray:
        head = np.column_stack(
            [np.zeros(count), rng.integers(0, N_LANDMARKS, count), rng.integers(0, N_LEVELS, count)]
        )
        corners = rng.integers(0, VOLUME_EDGE - self.patch_size, (count, 3 * self.frames))
        return np.column_stack([head, corners]).astype(np.int32)

    def observations_from_poses(self, poses: np.ndarray) -> dict[str, np.ndarray]:
        size = self.patch_size
        patch = np.empty((len(poses), self.frames, size, size, size), dtype=np.uint8)
        for i, pose in enumerate(poses):
            for frame, (z, y, x) in enumerate(pose[3:].reshape(self.frames, 3)):
                patch[i, frame] = self.volumes[pose[2], z : z + size, y : y + size, x : x + size]
        return {
            "patch": patch,
            "landmark": poses[:, 1].astype(np.int64),
            "level": poses[:, 2].astype(np.int64),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        pose = self.random_poses(1, self.np_random)
        obs = self.observations_from_poses(pose)
        return {"patch": obs["patch"][0], "landmark": 0, "level": 0}, {"pose": pose[0]}

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        raise NotImplementedError("the benchmark never steps the env")


def filled_buffer(world: SliceWorld, size: int, rng: np.random.Generator) -> PoseReplayBuffer:
    buffer = PoseReplayBuffer(size, world.observation_space, world.action_space, device="cpu")
    buffer.set_renderer(world.observations_from_poses)
    poses, next_poses = world.random_poses(size, rng), world.random_poses(size, rng)
    for index in range(size):
        infos = [{"pose": next_poses[index], "previous_pose": poses[index]}]
        buffer.add({}, {}, rng.integers(0, 6, 1), rng.normal(size=1), np.array([False]), infos)
    return buffer


def time_calls(function: Any, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        function()
    times_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times_ms.append(1000 * (time.perf_counter() - start))
    return {
        "median_ms": round(statistics.median(times_ms), 3),
        "min_ms": round(min(times_ms), 3),
        "repeats": repeats,
    }


def bench_update(patch_size: int, channels_last: bool, repeats: int) -> dict[str, Any]:
    """Median time of one DoubleDQN gradient step on a fixed batch of 32."""
    config = AgentConfig()
    world = SliceWorld(patch_size, frames=1)
    rng = np.random.default_rng(0)
    model = DoubleDQN(
        DuelingDQNPolicy,
        world,
        learning_rate=config.learning_rate,
        buffer_size=1000,
        learning_starts=0,
        batch_size=32,
        gamma=config.gamma,
        replay_buffer_class=PoseReplayBuffer,
        replay_buffer_kwargs={"renderer": world.observations_from_poses},
        policy_kwargs={
            "features_extractor_class": VolumeFeatures,
            "features_extractor_kwargs": {
                **config.features_extractor_kwargs(),
                "channels_last": channels_last,
            },
            "net_arch": list(config.net_arch),
        },
        seed=0,
        device="cpu",
    )
    buffer = filled_buffer(world, 256, rng)
    batch = buffer.sample(32)
    model.replay_buffer.sample = lambda *args, **kwargs: batch  # network work only, no rendering
    model.set_logger(Logger(folder=None, output_formats=[]))
    n_parameters = sum(p.numel() for p in model.q_net.parameters())
    timing = time_calls(lambda: model.train(gradient_steps=1, batch_size=32), repeats, warmup=3)
    return {
        "patch_size": patch_size,
        "frames": 1,
        "channels_last_3d": channels_last,
        "q_net_parameters": n_parameters,
        "conv_flat_dim": model.q_net.features_extractor.conv_flat_dim,
        **timing,
    }


def bench_sampling(patch_size: int, frames: int, repeats: int) -> dict[str, Any]:
    world = SliceWorld(patch_size, frames)
    rng = np.random.default_rng(1)
    buffer = filled_buffer(world, 10_000, rng)
    poses = world.random_poses(64, rng)
    return {
        "patch_size": patch_size,
        "frames": frames,
        "sample_32": time_calls(lambda: buffer.sample(32), repeats, warmup=5),
        "renderer_64_poses": time_calls(lambda: world.observations_from_poses(poses), repeats, warmup=5),
    }


def bytes_per_transition(patch_size: int, frames: int) -> dict[str, Any]:
    world = SliceWorld(patch_size, frames)
    buffer = PoseReplayBuffer(
        50_000, world.observation_space, world.action_space, pose_dim=world.pose_dim, device="cpu"
    )
    # SB3's DictReplayBuffer: patch + one int64 per Discrete key, for obs and next obs, plus
    # action (int64), reward, done, timeout (float32 each).
    sb3_bytes = 2 * (frames * patch_size**3 + 2 * 8) + 8 + 3 * 4
    return {
        "patch_size": patch_size,
        "frames": frames,
        "pose_dim": world.pose_dim,
        "pose_buffer_bytes": buffer.nbytes_per_transition(),
        "sb3_dict_buffer_bytes": sb3_bytes,
        "pose_buffer_50k_MB": round(buffer.nbytes_per_transition() * 50_000 / 1e6, 2),
        "sb3_dict_buffer_50k_MB": round(sb3_bytes * 50_000 / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per figure (default 20)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "agents.json")
    args = parser.parse_args(argv)
    threads = set_torch_threads(1)

    updates = []
    for patch_size in (25, 45):
        for channels_last in (True, False):
            # Contiguous 45^3 backward is slow; fewer repeats keep the whole run to a few minutes.
            repeats = args.repeats if (patch_size == 25 or channels_last) else max(3, args.repeats // 4)
            row = bench_update(patch_size, channels_last, repeats)
            updates.append(row)
            print(
                f"update  P={patch_size} frames=1 channels_last_3d={channels_last!s:5}  "
                f"median {row['median_ms']:8.2f} ms  (min {row['min_ms']:.2f}, "
                f"{row['q_net_parameters']} params)"
            )
    sampling = [bench_sampling(25, 1, 200), bench_sampling(25, 4, 100), bench_sampling(45, 1, 100)]
    for row in sampling:
        print(
            f"sample  P={row['patch_size']} frames={row['frames']}  "
            f"sample(32) {row['sample_32']['median_ms']:.3f} ms"
            f"  (renderer on 64 poses {row['renderer_64_poses']['median_ms']:.3f} ms)"
        )
    sizes = [bytes_per_transition(25, 1), bytes_per_transition(25, 4), bytes_per_transition(45, 4)]
    for row in sizes:
        print(
            f"bytes   P={row['patch_size']} frames={row['frames']}  "
            f"pose buffer {row['pose_buffer_bytes']:.0f} B"
            f" vs SB3 dict buffer {row['sb3_dict_buffer_bytes']} B per transition"
        )

    results = {
        "torch_threads": threads,
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "gradient_update_batch32": updates,
        "pose_buffer_sampling": sampling,
        "bytes_per_transition": sizes,
    }
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
