"""Plug-in environments (``task: custom``): train.py / evaluate.py on any Gymnasium env, and the
pose replay through wrapper chains and vector envs (agents.replay, agents.dqn)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml
from plugin_envs import (
    BlankPatchOnStep,
    InvertPatch,
    NoisyPatch,
    RewardThatBlanks,
    ScaleReward,
    ShiftPerEpisode,
    TinyPatchEnv,
    WidenPatch,
)
from scripts_support import evaluate_main, train_main
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.dqn import AgentConfig, build_model
from agents.experiments import CustomEnvConfig, EnvFactory, WrapperConfig
from agents.experiments.custom import check_replay
from agents.experiments.sweep import plan_trials
from agents.experiments.sweep_tune import run_sweep
from agents.networks import set_torch_threads
from agents.replay import PoseReplayBuffer, ReplayRefused, WrappedRenderer, wrapped_renderer

set_torch_threads(1)

TINY_AGENT = {
    "channels": [4],
    "kernel_sizes": [3],
    "strides": [1],
    "features_dim": 16,
    "net_arch": [16],
    "buffer_size": 500,
    "learning_starts": 50,
    "batch_size": 8,
    "target_update_interval": 50,
}


def tiny_agent(**overrides: Any) -> AgentConfig:
    return AgentConfig.from_dict({**TINY_AGENT, **overrides})


def write_config(tmp_path: Path, env: dict[str, Any], **sections: Any) -> Path:
    config = {
        "task": "custom",
        "name": "tiny",
        "env": env,
        "agent": TINY_AGENT,
        "train": {
            "total_timesteps": 300,
            "eval_every_steps": 150,
            "checkpoint_every_steps": 150,
            "progress_bar": False,
        },
        "evaluate": {"episodes": 3, "max_steps": 30},
        **sections,
    }
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TINY_ENV = {
    "entry_point": "plugin_envs:TinyPatchEnv",
    "kwargs": {"patch_size": 5},
    "max_episode_steps": 15,
    "wrappers": [
        {"entry_point": "plugin_envs:InvertPatch"},
        {"entry_point": "plugin_envs:ScaleReward", "kwargs": {"factor": 0.5}},
    ],
}


# ---------------------------------------------------------------------- train.py / evaluate.py
def test_entry_point_env_trains_into_a_run_folder_and_evaluate_scores_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train_main([str(write_config(tmp_path, TINY_ENV)), "--run-dir", str(run)]) == 0
    assert (
        "replay pose" in capsys.readouterr().out
    )  # InvertPatch + ScaleReward: the pose replay looks through
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "custom"
    assert config["agent"]["replay"] == "auto"  # the custom task's default
    rows = list(csv.DictReader((run / "validation.csv").open()))
    assert [row["step"] for row in rows] == ["150", "300"]
    assert "score_distance_mm" in rows[0]  # validation.csv says what the score is
    assert (run / "checkpoints" / "best.pt").is_file()
    assert json.loads((run / "state.json").read_text())["num_timesteps"] == 300
    # --resume continues from latest.pt with the run's own config (here made longer by hand)
    config["train"]["total_timesteps"] = 600
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert train_main(["--resume", str(run)]) == 0
    rows = list(csv.DictReader((run / "validation.csv").open()))
    assert [row["step"] for row in rows] == ["150", "300", "450", "600"]

    assert evaluate_main([str(run), "--split", "val"]) == 2  # the medgym tasks' flags do not apply
    assert "--split does not apply to custom runs" in capsys.readouterr().err
    assert not (run / "eval").exists()
    assert evaluate_main([str(run), "--episodes", "4"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    episodes = list(csv.DictReader((run / "eval" / "episodes.csv").open()))
    assert metrics["episodes"] == 4
    assert len(episodes) == 4
    assert len({row["seed"] for row in episodes}) == 4
    distances = [float(row["distance_mm"]) for row in episodes]
    assert metrics["mean_distance_mm"] == pytest.approx(np.mean(distances), abs=1e-3)

    # Several runs (here a copy): mean +- std over runs, like the landmark runs.
    shutil.copytree(run, tmp_path / "run_copy", ignore=shutil.ignore_patterns("eval"))
    out = tmp_path / "over_runs"
    assert evaluate_main([str(run), str(tmp_path / "run_copy"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary_over_runs.json").read_text())
    assert summary["mean_distance_mm"]["runs"] == 2
    assert summary["mean_distance_mm"]["std"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"id": "plugin/NoSuchEnv-v0"}, "env.id"),
        ({"entry_point": "no_such_module:Env"}, "env.entry_point"),
        ({"entry_point": "plugin_envs:NoSuchEnv"}, "env.entry_point"),
        ({"entry_point": "plugin_envs:TinyPatchEnv", "id": "plugin/TinyPatch-v0"}, "env:"),
        (
            {
                "entry_point": "plugin_envs:TinyPatchEnv",
                "wrappers": [{"entry_point": "plugin_envs:NotAWrapper"}],
            },
            "env.wrappers[0].entry_point",
        ),
        ({"id": "CartPole-v1"}, "observation space"),
        ({"entry_point": "plugin_envs:TinyPatchEnv", "kwargs": {"colour": 1}}, "env.kwargs"),
    ],
)
def test_bad_env_configs_name_the_field_and_leave_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, Any], field: str
) -> None:
    run = tmp_path / "run"
    assert train_main([str(write_config(tmp_path, env)), "--run-dir", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train.py: error: config ")
    assert field in error
    assert "\n" not in error
    assert not run.exists()


def test_registered_id_from_imports_and_pose_refusal_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "id": "plugin/TinyPatch-v0",
        "imports": ["plugin_envs"],
        "wrappers": [{"entry_point": "plugin_envs:BlankPatchOnStep"}],
    }
    run = tmp_path / "run"
    config = write_config(tmp_path, env)
    assert train_main([str(config), "--run-dir", str(run), "--set", "agent.replay=pose"]) == 2
    error = capsys.readouterr().err.strip()
    assert "BlankPatchOnStep" in error
    assert "set agent.replay: sb3" in error
    assert "\n" not in error
    assert not run.exists()
    # auto (the default) trains with SB3's buffer and says why
    assert train_main([str(config), "--run-dir", str(run), "--set", "train.total_timesteps=150"]) == 0
    said = capsys.readouterr().err
    assert "agent.replay auto: using SB3's replay buffer" in said
    assert "BlankPatchOnStep" in said
    assert (run / "checkpoints" / "latest.pt").is_file()


# ---------------------------------------------------------------------- pose replay through wrappers
def _rollout(env: gym.Env, steps: int, seed: int = 0) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Observations the env returned and the poses behind them (reset and after each step)."""
    obs, info = env.reset(seed=seed)
    observations, poses = [obs], [info["pose"]]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(int(rng.integers(6)))
        observations.append(obs)
        poses.append(info["pose"])
        if terminated or truncated:
            break
    return observations, np.stack(poses)


@pytest.fixture(scope="module")
def landmark_env() -> gym.Env:
    """medgym/LandmarkDetection-v0 on one small phantom, with InvertPatch and a reward wrapper."""
    import envs
    from envs.phantom import PhantomConfig, phantom_dataset

    dataset = phantom_dataset(1, 0, 0, config=PhantomConfig(spacing_mm=6.0))
    env = gym.make(envs.LANDMARK_ENV_ID, dataset=dataset, patch_size=9, levels_mm=(12.0, 6.0))
    return InvertPatch(ScaleReward(env))


def test_replay_of_a_wrapped_medgym_env_equals_the_wrapper_observation(landmark_env: gym.Env) -> None:
    observations, poses = _rollout(landmark_env, 8)
    rendered = wrapped_renderer(landmark_env)(poses)
    patches = np.stack([obs["patch"] for obs in observations])
    np.testing.assert_array_equal(rendered["patch"], patches)
    np.testing.assert_array_equal(rendered["level"], [obs["level"] for obs in observations])
    unwrapped = landmark_env.unwrapped.observations_from_poses(poses)["patch"]
    assert not np.array_equal(unwrapped, patches)  # the old renderer gave the unwrapped patch
    model = build_model(tiny_agent(), DummyVecEnv([lambda: landmark_env]))
    assert isinstance(model.replay_buffer, PoseReplayBuffer)
    assert isinstance(model.replay_buffer.renderer, WrappedRenderer)


def test_wrappers_that_may_change_observations_are_refused_in_one_line() -> None:
    env = gym.wrappers.RecordEpisodeStatistics(gym.wrappers.TimeLimit(BlankPatchOnStep(TinyPatchEnv()), 5))
    with pytest.raises(ReplayRefused, match=r"wrapper BlankPatchOnStep .*set agent\.replay: sb3") as refusal:
        build_model(tiny_agent(replay="pose"), env)
    assert "\n" not in str(refusal.value)
    stateful = gym.wrappers.TimeAwareObservation(gym.wrappers.TimeLimit(TinyPatchEnv(), 5), flatten=False)
    with pytest.raises(ReplayRefused, match="TimeAwareObservation"):
        wrapped_renderer(stateful)
    widened = WidenPatch(TinyPatchEnv())
    _, poses = _rollout(widened, 2)
    with pytest.raises(ReplayRefused, match=r"WidenPatch \(the rebuilt observation is not in Dict"):
        wrapped_renderer(widened)(poses)
    model = build_model(tiny_agent(replay="auto"), env)
    assert type(model.replay_buffer) is DictReplayBuffer
    passive = gym.wrappers.RecordEpisodeStatistics(gym.wrappers.TimeLimit(ScaleReward(TinyPatchEnv()), 5))
    assert isinstance(build_model(tiny_agent(replay="auto"), passive).replay_buffer, PoseReplayBuffer)


def test_wrappers_with_their_own_step_or_reset_and_impure_ones_are_caught() -> None:
    for wrapper in (ShiftPerEpisode, RewardThatBlanks):
        with pytest.raises(ReplayRefused, match=rf"wrapper {wrapper.__name__} .*set agent\.replay: sb3"):
            wrapped_renderer(wrapper(TinyPatchEnv()))
    noisy = NoisyPatch(TinyPatchEnv())
    renderer = wrapped_renderer(noisy)  # observation() looks pure: only playing it shows otherwise
    with pytest.raises(ReplayRefused, match="rebuilt from a pose differs"):
        check_replay(noisy, renderer, seed=0)
    clean = InvertPatch(TinyPatchEnv())
    check_replay(clean, wrapped_renderer(clean), seed=0)  # a pure wrapper passes


def test_auto_replay_falls_back_when_the_probe_sees_an_impure_wrapper(tmp_path: Path) -> None:
    env = {**TINY_ENV, "wrappers": [{"entry_point": "plugin_envs:NoisyPatch"}]}
    config = write_config(tmp_path, env, agent={**TINY_AGENT, "replay": "auto"})
    assert train_main([str(config), "--run-dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoints").is_dir()
    refused = write_config(tmp_path, env, agent={**TINY_AGENT, "replay": "pose"})
    assert train_main([str(refused), "--run-dir", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()


def test_custom_task_runs_as_a_seed_list(tmp_path: Path) -> None:
    config = write_config(tmp_path, TINY_ENV)
    sweep = tmp_path / "seeds"
    trials, experiments = plan_trials(str(config), [], [0, 1], None)
    assert run_sweep(str(config), [], trials, experiments, sweep, use_ray=False) == 0
    runs = sorted(path.name for path in sweep.iterdir() if (path / "config.yaml").is_file())
    assert runs == ["s0", "s1"]
    weights = [(sweep / name / "checkpoints" / "best.pt").read_bytes() for name in runs]
    assert weights[0] != weights[1]  # the seed changed the training


# ---------------------------------------------------------------------- vector envs
def test_subproc_vec_env_pose_buffer_samples_equal_the_envs_observations() -> None:
    factory = EnvFactory(
        CustomEnvConfig(
            entry_point="plugin_envs:TinyPatchEnv",
            max_episode_steps=4,
            wrappers=(WrapperConfig("plugin_envs:InvertPatch"),),
        )
    )
    venv = SubprocVecEnv([factory, factory])
    try:
        with pytest.raises(ReplayRefused, match=r"SubprocVecEnv.*pose_renderer"):
            build_model(tiny_agent(replay="pose"), venv)
        model = build_model(tiny_agent(replay="pose"), venv, pose_renderer=wrapped_renderer(factory()))
        buffer = model.replay_buffer
        assert isinstance(buffer, PoseReplayBuffer)
        venv.seed(3)
        obs = venv.reset()
        seen_next = []
        rng = np.random.default_rng(0)
        for _ in range(6):  # episodes of 4 steps: includes auto-resets
            actions = rng.integers(0, 6, size=2)
            next_obs, rewards, dones, infos = venv.step(actions)
            buffer.add(obs, next_obs, actions, rewards, dones, infos)
            final = [
                info["terminal_observation"] if done else {k: v[i] for k, v in next_obs.items()}
                for i, (done, info) in enumerate(zip(dones, infos, strict=True))
            ]
            seen_next.append(final)
            obs = next_obs
        rows, envs_index = np.repeat(np.arange(6), 2), np.tile([0, 1], 6)
        sample = buffer.samples_at(rows, envs_index)
        expected = np.stack([seen_next[row][env]["patch"] for row, env in zip(rows, envs_index, strict=True)])
        np.testing.assert_array_equal(sample.next_observations["patch"].cpu().numpy(), expected)
    finally:
        venv.close()


def test_gymnasium_vector_env_is_refused_with_what_sb3_takes() -> None:
    vector = gym.vector.SyncVectorEnv([TinyPatchEnv])
    with pytest.raises(
        ValueError, match=r"Gymnasium vector env \(SyncVectorEnv\).*DummyVecEnv.*SubprocVecEnv"
    ):
        build_model(tiny_agent(), vector)
