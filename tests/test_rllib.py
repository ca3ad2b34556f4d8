"""agent.backend: rllib: RLlib's DQN with the project's network, trained and scored like any run.

One local Ray (2 CPUs) serves the module; the smoke run trains RLlib's Double dueling DQN on
``medgym/LandmarkDetection-v0`` with one env runner through train.py, then evaluate.py scores it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.rllib")

import gymnasium as gym
import torch
import yaml
from gymnasium import spaces
from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights
from ray.rllib.core.columns import Columns
from scripts_support import LANDMARK_CONFIG, config_args, evaluate_main, tiny_landmark, train_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents import AgentConfig, load_policy, predict_q_values
from agents.experiments import load_experiment
from agents.rllib import (
    RLlibSettings,
    RunnerSeed,
    VolumeDQNModule,
    dqn_config,
    local_ray,
    module_model_config,
    policy_from_module_state,
)

ACTIONS = spaces.Discrete(6)


def _space(patch: int = 15) -> spaces.Dict:
    return spaces.Dict(
        {
            "patch": spaces.Box(0, 255, (1, patch, patch, patch), np.uint8),
            "landmark": spaces.Discrete(4),
            "level": spaces.Discrete(3),
        }
    )


@pytest.fixture(scope="module")
def ray_session() -> Iterator[bool]:
    """One local Ray for the module (train_rllib leaves a Ray it did not start running)."""
    with local_ray(2) as started:
        yield started


@pytest.fixture(scope="module")
def rllib_run(ray_session: bool, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("phantoms")
    run = cache.parent / "rllib_run"
    overrides = [
        *tiny_landmark(
            total_timesteps=240, eval_every_steps=120, checkpoint_every_steps=120, learning_starts=64
        ),
        f"data.phantoms.cache_dir={cache}",
        "agent.backend=rllib",
    ]
    assert train_main([*config_args(LANDMARK_CONFIG, overrides), "--run-dir", str(run)]) == 0
    return run


def test_rllib_smoke_run_is_an_ordinary_run_folder(rllib_run: Path) -> None:
    config = yaml.safe_load((rllib_run / "config.yaml").read_text())
    assert config["agent"]["backend"] == "rllib"
    rows = list(csv.DictReader((rllib_run / "validation.csv").open()))
    steps = [float(row["step"]) for row in rows]
    assert len(steps) >= 2
    assert steps[-1] >= 240
    assert steps == sorted(steps)
    assert list((rllib_run / "tb").rglob("events.out.tfevents.*"))  # loss and returns logged
    state = json.loads((rllib_run / "state.json").read_text())
    assert state["num_timesteps"] >= 240
    experiment = load_experiment(str(rllib_run / "config.yaml"))
    space = _space(experiment.env.patch_size)
    space = spaces.Dict({**space.spaces, "landmark": spaces.Discrete(10)})
    for name in ("best.pt", "latest.pt"):
        policy = load_policy(rllib_run / "checkpoints" / name, (space, ACTIONS))  # the project's format
        assert policy.net_arch == [32]
    # the learner did update (its loss is logged per iteration), so what was converted was trained
    losses = []
    for events in (rllib_run / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "train/loss" in accumulator.Tags()["scalars"]:
            losses += [event.value for event in accumulator.Scalars("train/loss")]
    assert losses
    assert np.isfinite(losses).all()


def test_evaluate_scores_an_rllib_run(rllib_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert evaluate_main([str(rllib_run), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"agent", "oracle"}
    assert metrics["agent"]["all"]["n"] == 10
    assert metrics["oracle"]["all"]["median_mm"] < 1.8
    assert len(list(csv.DictReader((out / "errors.csv").open()))) == 20


def test_resume_of_an_rllib_run_is_refused_in_one_line(
    rllib_run: Path, capsys: pytest.CaptureFixture
) -> None:
    before = (rllib_run / "state.json").read_text()
    assert train_main(["--resume", str(rllib_run)]) == 2
    assert "cannot be resumed" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (rllib_run / "state.json").read_text() == before


@pytest.mark.parametrize("dueling", [True, False])
def test_module_q_values_equal_the_converted_policy(dueling: bool) -> None:
    torch.manual_seed(0)
    agent = AgentConfig(
        dueling=dueling, channels=(4, 8), kernel_sizes=(5, 3), strides=(2, 2), features_dim=32, net_arch=(16,)
    )
    model_config = {**module_model_config(agent), "epsilon": 0.0}
    module = VolumeDQNModule(
        observation_space=_space(), action_space=ACTIONS, model_config=model_config, inference_only=False
    )
    rng = np.random.default_rng(0)
    obs = {
        "patch": rng.integers(0, 256, (5, 1, 15, 15, 15), dtype=np.uint8),
        "landmark": rng.integers(0, 4, 5),
        "level": rng.integers(0, 3, 5),
    }
    with torch.no_grad():
        batch = {Columns.OBS: {key: torch.as_tensor(value) for key, value in obs.items()}}
        module_q = module.compute_q_values(batch)["qf_preds"].numpy()
    policy = policy_from_module_state(module.get_state(), model_config, _space(), ACTIONS)
    policy_q = predict_q_values(policy, obs)
    assert module_q.shape == (5, 6)
    np.testing.assert_allclose(module_q, policy_q, rtol=1e-5, atol=1e-6)
    assert np.ptp(module_q) > 0  # not a degenerate constant network
    # Greedy actions agree: RLlib's inference action is the project's argmax.
    actions = module.forward_inference(batch)[Columns.ACTIONS].numpy()
    np.testing.assert_array_equal(actions, policy_q.argmax(axis=1))


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match=r"agent\.rllib_env_runners"):
        RLlibSettings(env_runners=0)
    with pytest.raises(ValueError, match=r"agent\.rllib_rollout_fragment_length"):
        RLlibSettings(rollout_fragment_length=-1)
    assert RLlibSettings(env_runners=3).envs_per_runner(8) == 3


def test_the_rllib_config_file_reads_the_runner_settings() -> None:
    path = str(Path(LANDMARK_CONFIG).with_name("landmark_rllib.yaml"))
    experiment = load_experiment(path, ["agent.rllib_env_runners=2", "agent.rllib_envs_per_env_runner=3"])
    assert experiment.agent.backend == "rllib"
    assert RLlibSettings.from_experiment(experiment) == RLlibSettings(2, 3, 0)
    with pytest.raises(ValueError, match="rllib_env_runners"):
        load_experiment(path, ["agent.rllib_env_runners=0"])


@pytest.mark.parametrize(("runners", "per_runner"), [(1, 0), (2, 4), (4, 8), (1, 1)])
def test_rllib_config_maps_the_agent_and_keeps_sb3s_updates_per_step(runners: int, per_runner: int) -> None:
    experiment = load_experiment(LANDMARK_CONFIG, ["agent.backend=rllib"])
    agent = experiment.agent
    config = dqn_config(experiment, RLlibSettings(runners, per_runner), {})
    assert (config.lr, config.gamma, config.train_batch_size_per_learner) == (
        agent.learning_rate,
        agent.gamma,
        agent.batch_size,
    )
    assert config.target_network_update_freq == agent.target_update_interval
    assert config.num_steps_sampled_before_learning_starts == agent.learning_starts
    assert config.replay_buffer_config == {"type": "EpisodeReplayBuffer", "capacity": agent.buffer_size}
    assert config.double_q is (agent.algorithm == "double")
    decay_end = int(agent.exploration_fraction * experiment.train.total_timesteps)
    assert config.epsilon == [(0, 1.0), (decay_end, agent.exploration_final_eps)]
    # RLlib's own round-robin weights: sample rounds and updates per cycle
    sample_rounds, updates = calculate_rr_weights(config)
    steps = sample_rounds * runners * config.num_envs_per_env_runner * config.rollout_fragment_length
    sb3_updates_per_step = agent.gradient_steps / (agent.train_freq * experiment.env.n_envs)
    assert updates / steps == pytest.approx(sb3_updates_per_step)


class _SeedEcho(gym.Env):
    """Reports the seed it was reset with as its observation."""

    observation_space = spaces.Discrete(1)
    action_space = spaces.Discrete(1)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int | None, dict]:
        super().reset(seed=seed)
        return seed, {}


def test_runner_seed_gives_each_runner_its_own_episodes() -> None:
    seeds = {worker: [RunnerSeed(_SeedEcho(), worker).reset(seed=s)[0] for s in (3, 4)] for worker in (1, 2)}
    # RLlib resets runner w's env i with seed + w + i: runner 1's env 1 and runner 2's env 0 get the same
    assert seeds[1][1] != seeds[2][0]
    assert len({*seeds[1], *seeds[2]}) == 4
    assert RunnerSeed(_SeedEcho(), 1).reset(seed=3)[0] == seeds[1][0]  # reproducible
