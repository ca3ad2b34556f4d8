"""The supervised greedy landmark learner: exact targets, a loss that falls, train.py and evaluate.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from scripts_support import LANDMARK_CONFIG, config_args, evaluate_main, tiny_landmark, train_main
from torch.nn import functional as F

import envs
from agents.dqn import AgentConfig, build_policy
from agents.greedy import GreedyConfig, LandmarkGreedyTrainer
from envs.data import Dataset
from envs.phantom import phantom_dataset

PATCH = 15
AGENT = AgentConfig(
    learning_rate=1e-3, channels=(4, 8), kernel_sizes=(5, 3), strides=(2, 2), features_dim=32, net_arch=(32,)
)


class Recorder(gym.Wrapper):
    """Remembers the info of every state it returns, keyed by what the learner stores of it."""

    def __init__(self, env: gym.Env, seen: dict[tuple, list[dict[str, Any]]]) -> None:
        super().__init__(env)
        self.seen = seen

    def _remember(self, observation: dict[str, Any], info: dict[str, Any]) -> None:
        key = (observation["patch"].tobytes(), int(observation["landmark"]), int(observation["level"]))
        self.seen.setdefault(key, []).append(info)

    def reset(self, **kwargs: Any):
        observation, info = self.env.reset(**kwargs)
        self._remember(observation, info)
        return observation, info

    def step(self, action: int):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._remember(observation, info)
        return observation, reward, terminated, truncated, info


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return phantom_dataset(1, 0, 0, seed=11)


def _make(dataset: Dataset, max_episode_steps: int = 5) -> gym.Env:
    return gym.make(
        envs.LANDMARK_ENV_ID, dataset=dataset, patch_size=PATCH, max_episode_steps=max_episode_steps
    )


def _trainer(dataset: Dataset, seen: dict | None = None, **kwargs: Any) -> LandmarkGreedyTrainer:
    probe = _make(dataset)
    policy = build_policy(AGENT, probe.observation_space, probe.action_space)
    settings = {"buffer_size": 400, "batch_size": 16, "n_walkers": 2, "seed": 3, **kwargs}
    if seen is None:
        return LandmarkGreedyTrainer(policy, lambda: _make(dataset), **settings)
    return LandmarkGreedyTrainer(policy, lambda: Recorder(_make(dataset), seen), **settings)


def _step_rewards(env: gym.Env, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The patch of the state ``info`` describes, and the reward ``step`` gives each action from it."""
    options = {
        "case_id": info["case_id"],
        "landmark": info["landmark"],
        "level": info["level"],
        "position_lps_mm": info["position_lps_mm"],
    }
    rewards = []
    for action in range(6):
        observation, _ = env.reset(options=options)
        rewards.append(env.step(action)[1])
    return observation["patch"], np.array(rewards)


def test_targets_are_the_step_rewards_of_the_stored_states(dataset: Dataset) -> None:
    seen: dict[tuple, list[dict[str, Any]]] = {}
    trainer = _trainer(dataset, seen, on_policy_fraction=0.5)
    for _ in range(6):
        trainer.update()
    assert trainer.count == 16 + 5 * 8
    checker = _make(dataset, max_episode_steps=50)
    levels = set()
    for row in range(trainer.count):
        key = (trainer.patches[row].tobytes(), int(trainer.landmarks[row]), int(trainer.levels[row]))
        assert key in seen, f"row {row}: the stored observation is not one the envs returned"
        matches = []
        for info in seen[key]:
            patch, rewards = _step_rewards(checker, info)
            matches.append(
                np.array_equal(patch, trainer.patches[row]) and np.allclose(rewards, trainer.rewards[row])
            )
        assert any(matches), f"row {row}: targets {trainer.rewards[row]} are not the step rewards"
        levels.add(int(trainer.levels[row]))
    assert levels == {0, 1, 2}
    _, targets = trainer.batch(np.arange(trainer.count))
    np.testing.assert_array_equal(targets, trainer.rewards[: trainer.count])
    assert np.all((targets >= -1.0) & (targets <= 1.0))


def test_on_policy_fraction_decides_how_many_samples_are_walker_steps(dataset: Dataset) -> None:
    for fraction, expected_steps in ((0.0, 0), (1.0, 4)):
        seen: dict[tuple, list[dict[str, Any]]] = {}
        trainer = _trainer(dataset, seen, on_policy_fraction=fraction)
        trainer.update()  # the first fill is fresh resets only: nothing walks yet
        assert trainer.walker_observations
        steps_before = _walker_steps(seen)
        assert steps_before == 0
        trainer.add_samples(4)
        assert _walker_steps(seen) == expected_steps


def _walker_steps(seen: dict[tuple, list[dict[str, Any]]]) -> int:
    """States the envs reached by a step (a step's info names the pose it came from)."""
    return sum("previous_pose" in info for infos in seen.values() for info in infos)


def test_a_few_hundred_updates_lower_the_loss(dataset: Dataset) -> None:
    torch.manual_seed(0)
    trainer = _trainer(dataset, buffer_size=2000, batch_size=32, seed=0)
    trainer.add_samples(128)
    observations, targets = trainer.batch(np.arange(128))

    def loss() -> float:
        q_values = torch.as_tensor(trainer.q_values(observations))
        return float(F.smooth_l1_loss(q_values, torch.as_tensor(targets)))

    before = loss()
    for _ in range(300):
        trainer.update()
    assert trainer.updates == 300
    assert loss() < 0.8 * before


def test_refuses_an_env_without_action_rewards(dataset: Dataset) -> None:
    probe = _make(dataset)
    policy = build_policy(AGENT, probe.observation_space, probe.action_space)
    with pytest.raises(ValueError, match="action_rewards"):
        LandmarkGreedyTrainer(policy, lambda: gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="n_walkers"):
        LandmarkGreedyTrainer(policy, lambda: _make(dataset), n_walkers=0)


def test_replay_is_capped_in_bytes(dataset: Dataset) -> None:
    probe = _make(dataset)
    policy = build_policy(AGENT, probe.observation_space, probe.action_space)
    config = GreedyConfig(buffer_size=10**9, batch_size=8)
    trainer = LandmarkGreedyTrainer.from_config(policy, lambda: _make(dataset), config)
    assert trainer.patches.nbytes <= 2 << 30
    assert trainer.capacity == len(trainer.patches)


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("greedy_phantoms")
    run = cache.parent / "greedy_run"
    overrides = [*tiny_landmark(), f"data.phantoms.cache_dir={cache}", "agent.algorithm=greedy"]
    assert train_main([*config_args(LANDMARK_CONFIG, overrides), "--run-dir", str(run)]) == 0
    return run


def test_train_greedy_writes_a_run_that_evaluate_scores(greedy_run: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((greedy_run / "config.yaml").read_text())
    assert config["agent"]["algorithm"] == "greedy"
    rows = list(csv.DictReader((greedy_run / "validation.csv").open()))
    assert [int(float(row["step"])) for row in rows][-1] >= 400
    assert json.loads((greedy_run / "state.json").read_text())["num_timesteps"] >= 400
    assert (greedy_run / "checkpoints" / "best.pt").is_file()
    out = tmp_path / "eval"
    assert evaluate_main([str(greedy_run), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["agent"]["all"]["n"] == 10
    assert metrics["oracle"]["all"]["median_mm"] < 1.8  # the same world and search as for DQN runs
    rows = list(csv.DictReader((out / "errors.csv").open()))
    assert {row["method"] for row in rows} == {"agent", "oracle"}


def test_resume_continues_a_greedy_run(greedy_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "resumed"
    shutil.copytree(greedy_run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    done = json.loads((copy / "state.json").read_text())["num_timesteps"]
    config["train"]["total_timesteps"] = done + 200
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert train_main(["--resume", str(copy)]) == 0
    assert json.loads((copy / "state.json").read_text())["num_timesteps"] >= done + 200


def test_train_writes_the_shape_and_evaluate_takes_search_settings(
    greedy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shape = json.loads((greedy_run / "shape.json").read_text())
    assert shape["names"] == json.loads((greedy_run / "landmarks.json").read_text())["landmarks"]
    assert shape["cases"] >= 1
    config_before = (greedy_run / "config.yaml").read_text()
    out = tmp_path / "checked"
    argv = [str(greedy_run), "--search", "shape_check=true", "--search", "starts=1", "--out", str(out)]
    assert evaluate_main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["agent"]["all"]["n"] == 10
    assert (greedy_run / "config.yaml").read_text() == config_before  # the run is not changed
    older = tmp_path / "older"  # a run made before the check: its shape comes from its training data
    shutil.copytree(greedy_run, older)
    (older / "shape.json").unlink()
    again = [str(older), "--search", "shape_check=true", "--search", "starts=1", "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert evaluate_main(again) == 0
    assert "shape_check is skipped" not in capsys.readouterr().err  # fitted, not skipped

    def errors(folder: Path) -> list[str]:
        return [row["error_mm"] for row in csv.DictReader((folder / "errors.csv").open())]

    assert errors(tmp_path / "o") == errors(out)  # the same shape, so the same answers
    for bad in ("shape_tolerance_mm=0", "no_such_key=1"):
        assert evaluate_main([str(greedy_run), "--search", bad, "--out", str(tmp_path / "bad")]) == 2
        assert not (tmp_path / "bad").exists()
