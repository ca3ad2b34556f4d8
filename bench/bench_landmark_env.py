"""Benchmark the landmark env: steps/s, batched search landmark-steps/s, replay bytes and sampling.

Prints tables and writes ``bench/results/landmark_env.json``.
Run: ``.venv/bin/python bench/bench_landmark_env.py`` (``--quick`` for a smoke run).

Data: one case on disk, as a user's data would be: a (z, y, x) = (182, 218, 182) int16 CT volume at
1 mm (phantom seed 0 resampled to 1 mm plus 15 HU noise, see ``bench_foundation.ct_volume_1mm``) as
NIfTI, its 8 landmarks as a Slicer ``.fcsv`` and a ``manifest.csv``, read with
``Dataset.from_manifest``; levels (4, 2, 1) mm.

What is timed (``time.perf_counter``, warm-up first; median and p90 per call):

- ``env.step`` with uniformly random actions, 1 landmark, uint8 patches of 45^3 and 25^3, frames 1,
  reset excluded (episodes of 50 steps, reset untimed between them). Both the raw ``LandmarkEnv``
  and ``gymnasium.make`` with its default wrappers (TimeLimit(50) > OrderEnforcing >
  PassiveEnvChecker); through ``make`` episodes are truncated at 50 steps by the time limit.
  Target >= 25,000 steps/s (the published rl-medical envs do 2,000-3,300).
- ``agents.search.detect_landmarks`` stepping the 8 landmarks together (1 start each), network
  excluded: a constant-time policy returning random Q-values, and ``OraclePolicy``. Figure:
  landmark-steps/s = sum of ``Detection.steps`` / wall time of the call. Target >= 5,000.
- replay memory per transition: ``agents.replay.PoseReplayBuffer`` vs SB3's ``DictReplayBuffer``
  (bytes of their per-transition arrays; target <= 1 KB), and ``PoseReplayBuffer.sample(32)``
  rendered by the real ``env.unwrapped.observations_from_poses`` for P = 25 and 45.
- a cProfile of the raw env step (P = 45), top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.buffers import DictReplayBuffer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402 - after the sys.path lines, run as a script
from bench_foundation import (  # noqa: E402
    base_results,
    ct_volume_1mm,
    finish_results,
    print_table,
    summarise_ms,
    time_calls,
)

from agents.replay import PoseReplayBuffer  # noqa: E402
from agents.search import AgentState, OraclePolicy, detect_landmarks  # noqa: E402
from envs import LANDMARK_ENV_ID, io  # noqa: E402
from envs.data import Dataset  # noqa: E402
from envs.tasks import LandmarkEnv, Variant  # noqa: E402

LEVELS_MM = (4.0, 2.0, 1.0)
STEP_LANDMARK = "T12_body"
EPISODE_STEPS = 50  # the registration's max_episode_steps
STEP_TARGET_PER_S = 25_000
SEARCH_TARGET_PER_S = 5_000
BYTES_TARGET = 1024


class RandomQPolicy:
    """A constant-time stand-in for the network: uniform random Q-values for the whole batch."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, observations: dict[str, NDArray], variant: Variant, state: AgentState, active: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        return self.rng.random((len(active), 6))


def write_case(folder: Path) -> tuple[Path, list[str]]:
    """Write the 1 mm volume, its landmarks and a manifest to ``folder``; return manifest and names."""
    volume, landmarks = ct_volume_1mm(0)
    io.write_volume(volume, folder / "case0.nii.gz")
    io.write_landmarks(landmarks, folder / "case0.fcsv")
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "case_id,image,landmarks,split,modality\ncase0,case0.nii.gz,case0.fcsv,train,ct\n", encoding="utf-8"
    )
    return manifest, list(landmarks)


def make_env(dataset: Dataset, patch_size: int, wrapped: bool, landmarks: list[str] | None) -> gym.Env:
    """The landmark env on ``dataset``: raw, or through ``gymnasium.make`` with its default wrappers."""
    kwargs: dict[str, Any] = {
        "dataset": dataset,
        "landmarks": landmarks,
        "levels_mm": LEVELS_MM,
        "patch_size": patch_size,
        "frames": 1,
    }
    return gym.make(LANDMARK_ENV_ID, **kwargs) if wrapped else LandmarkEnv(**kwargs)


def step_times(env: gym.Env, n_steps: int, seed: int) -> tuple[list[float], int]:
    """Per-step wall times of ``n_steps`` random-action steps (episodes of <= 50 steps, resets untimed)."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 6, n_steps).tolist()
    times: list[float] = []
    episodes = 0
    clock = time.perf_counter
    while len(times) < n_steps:
        env.reset(seed=seed + episodes)
        episodes += 1
        for _ in range(EPISODE_STEPS):
            action = actions[len(times)]
            start = clock()
            _, _, terminated, truncated, _ = env.step(action)
            times.append(clock() - start)
            if terminated or truncated or len(times) == n_steps:
                break
    return times, episodes


def bench_steps(dataset: Dataset, n_steps: int) -> list[dict[str, Any]]:
    """Steps/s of the raw and the gymnasium.make env, P = 45 and 25."""
    rows = []
    for patch_size in (45, 25):
        for wrapped in (False, True):
            env = make_env(dataset, patch_size, wrapped, [STEP_LANDMARK])
            step_times(env, 500, seed=1)  # warm-up (also the passive checker's first-step checks)
            times, episodes = step_times(env, n_steps, seed=2)
            total = float(np.sum(times))
            rows.append(
                {
                    "env": repr(env) if wrapped else "LandmarkEnv (raw)",
                    "wrapped": wrapped,
                    "patch": patch_size,
                    "frames": 1,
                    "steps": len(times),
                    "episodes": episodes,
                    "steps_per_s": round(len(times) / total),
                    "step": summarise_ms(times),
                    "target_steps_per_s": STEP_TARGET_PER_S,
                }
            )
            env.close()
    return rows


def profile_steps(env: gym.Env, n_steps: int, top: int = 15) -> dict[str, Any]:
    """cProfile of ``n_steps`` random steps (50-step episodes); top functions by own time."""
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 6, n_steps).tolist()
    profile = cProfile.Profile()
    done = 0
    while done < n_steps:
        env.reset(seed=done)
        count = min(EPISODE_STEPS, n_steps - done)
        profile.enable()
        for action in actions[done : done + count]:
            env.step(action)
        profile.disable()
        done += count
    return profile_rows(profile, n_steps, top)


def profile_rows(profile: cProfile.Profile, per: int, top: int) -> dict[str, Any]:
    """Top ``top`` functions by own time, with calls and µs per ``per`` units (e.g. per step)."""
    stats = pstats.Stats(profile)
    entries = []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(ROOT) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        entries.append(
            {
                "function": f"{short}:{line}({name})",
                "ncalls": ncalls,
                "calls_per_unit": round(ncalls / per, 2),
                "tottime_us_per_unit": round(1e6 * tottime / per, 2),
                "cumtime_us_per_unit": round(1e6 * cumtime / per, 2),
            }
        )
    entries.sort(key=lambda entry: -entry["tottime_us_per_unit"])
    total_us = 1e6 * stats.total_tt / per  # type: ignore[attr-defined]
    return {"units": per, "total_us_per_unit": round(total_us, 2), "top": entries[:top]}


def bench_search(dataset: Dataset, names: list[str], calls: int) -> tuple[list[dict[str, Any]], dict]:
    """detect_landmarks over the 8 landmarks with random-Q and oracle policies, P = 45 and 25."""
    rows = []
    profile_random: dict[str, Any] = {}
    for patch_size in (45, 25):
        env = make_env(dataset, patch_size, False, names)
        env.reset(seed=0)  # builds (or finds) the variant
        world = env.unwrapped.world
        variant = world.variant(0)
        for label, policy in (("random Q", RandomQPolicy(0)), ("oracle", OraclePolicy())):
            detect_landmarks(world, variant, policy)  # warm-up
            times, steps = [], []
            for seed in range(calls):
                start = time.perf_counter()
                detections = detect_landmarks(world, variant, policy, seed=seed)
                times.append(time.perf_counter() - start)
                steps.append(sum(detection.steps for detection in detections.values()))
            rates = np.asarray(steps) / np.asarray(times)
            rows.append(
                {
                    "policy": label,
                    "patch": patch_size,
                    "landmarks": len(names),
                    "calls": calls,
                    "landmark_steps_per_call_mean": round(float(np.mean(steps)), 1),
                    "landmark_steps_per_s": round(float(np.sum(steps) / np.sum(times))),
                    "landmark_steps_per_s_median_call": round(float(np.median(rates))),
                    "landmark_steps_per_s_p10_call": round(float(np.percentile(rates, 10))),
                    "call": summarise_ms(times),
                    "us_per_landmark_step": round(1e6 * float(np.sum(times) / np.sum(steps)), 2),
                    "target_landmark_steps_per_s": SEARCH_TARGET_PER_S,
                }
            )
            if label == "random Q" and patch_size == 45:
                profile = cProfile.Profile()
                total_steps = 0
                profile.enable()
                for seed in range(max(5, calls // 4)):
                    found = detect_landmarks(world, variant, policy, seed=seed)
                    total_steps += sum(detection.steps for detection in found.values())
                profile.disable()
                profile_random = profile_rows(profile, total_steps, 12)
    return rows, profile_random


def sb3_bytes_per_transition(observation_space: spaces.Dict, action_space: spaces.Discrete) -> float:
    """Bytes of SB3 DictReplayBuffer's per-transition arrays (obs, next obs, action, reward, flags)."""
    buffer = DictReplayBuffer(64, observation_space, action_space, device="cpu")
    arrays = [*buffer.observations.values(), *buffer.next_observations.values()]
    arrays += [buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
    return sum(array.nbytes for array in arrays) / (buffer.buffer_size * buffer.n_envs)


def bench_replay(dataset: Dataset, fill: int, repeats: int) -> list[dict[str, Any]]:
    """Bytes per transition (frames 1 and 4) and sample(32) against the real renderer (frames 1)."""
    rows = []
    for patch_size in (25, 45):
        for frames in (1, 4):
            env = LandmarkEnv(
                dataset, landmarks=[STEP_LANDMARK], levels_mm=LEVELS_MM, patch_size=patch_size, frames=frames
            )
            world = env.unwrapped.world
            pose_buffer = PoseReplayBuffer(
                fill, env.observation_space, env.action_space, device="cpu", pose_dim=world.pose_dim
            )
            pose_bytes = pose_buffer.nbytes_per_transition()
            sb3_bytes = sb3_bytes_per_transition(env.observation_space, env.action_space)
            row: dict[str, Any] = {
                "patch": patch_size,
                "frames": frames,
                "pose_dim": world.pose_dim,
                "pose_buffer_bytes": pose_bytes,
                "sb3_dict_buffer_bytes": sb3_bytes,
                "ratio": round(sb3_bytes / pose_bytes),
                "pose_buffer_100k_MB": round(pose_bytes * 1e5 / 1e6, 2),
                "sb3_dict_buffer_100k_MB": round(sb3_bytes * 1e5 / 1e6, 1),
                "target_bytes": BYTES_TARGET,
            }
            if frames == 1:
                pose_buffer.set_renderer(env.unwrapped.observations_from_poses)
                rng = np.random.default_rng(4)
                env.reset(seed=0)
                for step in range(fill):
                    action = int(rng.integers(6))
                    _, reward, terminated, truncated, info = env.step(action)
                    done = terminated or truncated or (step + 1) % EPISODE_STEPS == 0
                    pose_buffer.add({}, {}, np.array([action]), np.array([reward]), np.array([done]), [info])
                    if done:
                        env.reset(seed=step)
                batch = pose_buffer.sample(32)
                assert batch.observations["patch"].shape == (32, 1, patch_size, patch_size, patch_size)
                poses = pose_buffer.poses[:64, 0]  # type: ignore[index]
                row["filled_transitions"] = fill
                row["sample_32"] = time_calls(lambda b=pose_buffer: b.sample(32), repeats, warmup=10)
                row["renderer_64_poses"] = time_calls(
                    lambda e=env, p=poses: e.unwrapped.observations_from_poses(p), repeats, warmup=10
                )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run (~15 s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "landmark_env.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(1)
    quick = args.quick
    results = base_results("landmark_env", quick)

    temp = tempfile.TemporaryDirectory(prefix="medgym-bench-")  # the case's files, for the whole run
    try:
        run(results, Path(temp.name), quick)
    finally:
        temp.cleanup()
    finish_results(results, began, args.out)
    return results


def run(results: dict[str, Any], folder: Path, quick: bool) -> None:
    """Write the case to ``folder``, run every figure, print the tables and fill ``results``."""
    start = time.perf_counter()
    manifest, names = write_case(folder)
    write_s = time.perf_counter() - start
    dataset = Dataset.from_manifest(manifest)
    probe = make_env(dataset, 45, False, [STEP_LANDMARK])
    start = time.perf_counter()
    probe.reset(seed=0)  # reads the NIfTI and builds the (4, 2, 1) mm pyramid once
    first_reset_s = time.perf_counter() - start
    variant = probe.unwrapped.world.variant(0)
    results["data"] = {
        "volume_shape_zyx": list(dataset.load("case0").volume.shape_zyx),
        "levels_mm": list(LEVELS_MM),
        "level_shapes_zyx": [list(level.shape_zyx) for level in variant.pyramid.levels],
        "landmarks": names,
        "write_case_s": round(write_s, 2),
        "first_reset_read_and_pyramid_s": round(first_reset_s, 2),
    }
    data = results["data"]
    print(
        f"case: {data['volume_shape_zyx']} int16 at 1 mm, levels {data['level_shapes_zyx']}, "
        f"{len(names)} landmarks; first reset (read + pyramid) {first_reset_s:.2f} s"
    )

    steps = bench_steps(dataset, 4_000 if quick else 60_000)
    results["env_step"] = steps
    print_table(
        f"env.step, random actions, 1 landmark, frames 1 (target >= {STEP_TARGET_PER_S:,} steps/s)",
        ["env", "patch", "steps", "steps/s", "median µs", "p90 µs", "mean µs"],
        [
            [
                "gymnasium.make (TimeLimit 50)" if row["wrapped"] else "LandmarkEnv (raw)",
                f"{row['patch']}^3",
                row["steps"],
                f"{row['steps_per_s']:,}",
                1000 * row["step"]["median_ms"],
                1000 * row["step"]["p90_ms"],
                1000 * row["step"]["mean_ms"],
            ]
            for row in steps
        ],
    )

    profile = profile_steps(probe, 2_000 if quick else 20_000)
    results["env_step_profile_raw_p45"] = profile
    print_table(
        f"cProfile of the raw env step, P=45 (profiled total {profile['total_us_per_unit']:.1f} µs/step)",
        ["function", "calls/step", "own µs/step", "cum µs/step"],
        [
            [e["function"], e["calls_per_unit"], e["tottime_us_per_unit"], e["cumtime_us_per_unit"]]
            for e in profile["top"]
        ],
    )

    search, search_profile = bench_search(dataset, names, 20 if quick else 150)
    results["search"] = search
    results["search_profile_random_q_p45"] = search_profile
    print_table(
        f"detect_landmarks, {len(names)} landmarks together, network excluded "
        f"(target >= {SEARCH_TARGET_PER_S:,} landmark-steps/s)",
        [
            "policy",
            "patch",
            "steps/call",
            "landmark-steps/s",
            "median call",
            "p10 call",
            "call ms median/p90",
        ],
        [
            [
                row["policy"],
                f"{row['patch']}^3",
                row["landmark_steps_per_call_mean"],
                f"{row['landmark_steps_per_s']:,}",
                f"{row['landmark_steps_per_s_median_call']:,}",
                f"{row['landmark_steps_per_s_p10_call']:,}",
                f"{row['call']['median_ms']:.2f} / {row['call']['p90_ms']:.2f}",
            ]
            for row in search
        ],
    )
    print_table(
        f"cProfile of detect_landmarks, random Q, P=45 ({search_profile['total_us_per_unit']:.1f} µs"
        " per landmark-step)",
        ["function", "calls/step", "own µs/step", "cum µs/step"],
        [
            [e["function"], e["calls_per_unit"], e["tottime_us_per_unit"], e["cumtime_us_per_unit"]]
            for e in search_profile["top"]
        ],
    )

    replay = bench_replay(dataset, 2_000 if quick else 10_000, 50 if quick else 400)
    results["replay"] = replay
    print_table(
        f"replay memory per transition (target <= {BYTES_TARGET} B) and PoseReplayBuffer.sample(32)",
        ["patch", "frames", "pose B", "SB3 dict B", "SB3/pose", "sample(32) ms med/p90", "render 64 ms"],
        [
            [
                f"{row['patch']}^3",
                row["frames"],
                row["pose_buffer_bytes"],
                f"{row['sb3_dict_buffer_bytes']:,.0f}",
                f"{row['ratio']:,}",
                f"{row['sample_32']['median_ms']:.3f} / {row['sample_32']['p90_ms']:.3f}"
                if "sample_32" in row
                else "-",
                f"{row['renderer_64_poses']['median_ms']:.3f}" if "renderer_64_poses" in row else "-",
            ]
            for row in replay
        ],
    )


if __name__ == "__main__":
    main()
