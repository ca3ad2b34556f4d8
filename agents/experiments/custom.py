"""``task: custom`` end to end: train a DQN on any Gymnasium env, validate and evaluate it by episodes.

``train.py`` and ``evaluate.py`` dispatch here. A run folder is the medgym one (config, meta,
state, validation.csv, checkpoints, resume, time limit). Validation runs ``evaluate.episodes``
seeded episodes of the greedy policy on a separate env (``evaluate.val_kwargs``); its score is,
lower being better, the mean final ``distance_mm`` of the episodes when the env's step info has
it, else the mean final ``tre_mm``, else minus the mean return. validation.csv names the one used
(column ``score_distance_mm``, ``score_tre_mm`` or ``score_neg_return``).

Replay: ``agent.replay: pose`` (or ``auto``, the default here) stores poses and rebuilds observations
through the env's observation wrappers (:func:`agents.replay.wrapped_renderer`). With
``env.vec_env: subproc`` the envs live in worker processes, so one more env is built here by the
same factory, only to render poses.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from agents.checkpoints import load_policy
from agents.dqn import build_model
from agents.experiments.custom_env import CustomExperiment, EnvFactory, check_spaces
from agents.experiments.monitor import training_callbacks, write_summary
from agents.experiments.reports import run_output_names, write_csv
from agents.experiments.runs import (
    Run,
    check_run_dir,
    create_run,
    json_text,
    new_run_or_nothing,
    resume_model,
    resume_point,
)
from agents.replay import PoseRenderer, ReplayRefused, renderer_for, wrapped_renderer
from envs.io.atomic import atomic_write_text, check_output_folder, new_folder

__all__ = ["custom_score", "episode_metrics", "evaluate_custom_runs", "run_episodes", "train_custom"]

EVALUATION_SEED_OFFSET = 100_000  # evaluation episodes never repeat a validation episode's seed
SCORE_KEYS = ("score_distance_mm", "score_tre_mm", "score_neg_return")


# ---------------------------------------------------------------------- episodes and metrics
def run_episodes(policy: Any, env: gym.Env, seeds: list[int], max_steps: int) -> list[dict[str, Any]]:
    """One row per seeded episode of ``policy.predict(obs, deterministic=True)`` on ``env``.

    Rows: ``seed``, ``return``, ``length``, ``terminated``, ``truncated`` (also when cut at
    ``max_steps``) and, when the last step's info has them, ``distance_mm``, ``tre_mm``, ``success``.
    """
    rows = []
    for seed in seeds:
        obs, info = env.reset(seed=int(seed))
        total, steps, terminated, truncated = 0.0, 0, False, False
        while not (terminated or truncated) and steps < max_steps:
            action, _ = policy.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(int(np.asarray(action).item()))
            total += float(reward)
            steps += 1
        row: dict[str, Any] = {
            "seed": int(seed),
            "return": total,
            "length": steps,
            "terminated": bool(terminated),
            "truncated": not terminated,
        }
        for key in ("distance_mm", "tre_mm"):
            if key in info:
                row[key] = float(info[key])
        success = info.get("success", info.get("is_success"))
        if success is not None:
            row["success"] = bool(success)
        rows.append(row)
    return rows


def episode_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Figures of a list of episode rows, all floats; the ``score_*`` one is what model selection minimises.

    ``median_mm`` is the median final distance (or TRE) in mm, NaN when the env reports neither.
    """
    returns = np.array([row["return"] for row in rows], dtype=np.float64)
    metrics = {
        "episodes": float(len(rows)),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_length": float(np.mean([row["length"] for row in rows])),
        "median_mm": float("nan"),
    }
    for key in ("distance_mm", "tre_mm"):
        if all(key in row for row in rows):
            values = np.array([row[key] for row in rows], dtype=np.float64)
            metrics[f"mean_{key}"] = float(values.mean())
            metrics["median_mm"] = float(np.median(values))
            metrics[f"p95_{key}"] = float(np.percentile(values, 95))
            metrics[f"score_{key}"] = float(values.mean())
            break
    else:
        metrics["score_neg_return"] = -float(returns.mean())
    if all("success" in row for row in rows):
        metrics["success_rate"] = float(np.mean([row["success"] for row in rows]))
    return metrics


def custom_score(metrics: dict[str, float]) -> tuple[float, ...]:
    """Lower is better: the ``score_*`` entry of :func:`episode_metrics`."""
    return tuple(metrics[key] for key in SCORE_KEYS if key in metrics)[:1]


# ---------------------------------------------------------------------- training
def _vec_env(experiment: CustomExperiment, factory: EnvFactory) -> VecEnv:
    env_config = experiment.env
    vec_class = SubprocVecEnv if env_config.vec_env == "subproc" else DummyVecEnv
    vec_env = VecMonitor(vec_class([factory] * env_config.n_envs))
    vec_env.seed(experiment.seed)
    return vec_env


def _pose_renderer(experiment: CustomExperiment, vec_env: VecEnv, factory: EnvFactory) -> PoseRenderer | None:
    """The pose renderer, or None for SB3's buffer (``replay: sb3``, or ``auto`` when pose is refused)."""
    replay = experiment.agent.replay
    if replay == "sb3":
        return None
    try:
        if experiment.env.vec_env == "subproc":
            probe = factory()  # the workers' envs cannot render in this process
            renderer: PoseRenderer = wrapped_renderer(probe)
            check_replay(probe, renderer, experiment.seed)
            return renderer
        renderer = renderer_for(vec_env)
        check_replay(vec_env.unwrapped.envs[0], renderer, experiment.seed)  # type: ignore[attr-defined]
        vec_env.seed(experiment.seed)  # the probe's steps leave the training envs as they were
        return renderer
    except ReplayRefused as refusal:
        if replay == "pose":
            raise
        print(
            f"train.py: agent.replay auto: using SB3's replay buffer (stores observations): {refusal}",
            file=sys.stderr,
        )
        return None


def check_replay(env: gym.Env, renderer: PoseRenderer, seed: int, steps: int = 6) -> None:
    """Play a few seeded random steps and check that ``renderer`` rebuilds each observation from its pose.

    The static checks of :func:`agents.replay.wrapped_renderer` cannot see a wrapper or env whose
    observation depends on more than the pose (noise drawn per step, a per-episode offset): this
    does. Raises :class:`agents.replay.ReplayRefused` (one line) when an observation differs.
    """
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    observed, poses = [], []
    for _ in range(steps):
        if "pose" not in info:
            raise ReplayRefused(
                f"agent.replay: pose needs info['pose'] from {type(env.unwrapped).__name__}'s reset and "
                "step; set agent.replay: sb3 (or auto)"
            )
        observed.append(obs)
        poses.append(np.array(info["pose"], copy=True))
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    rendered = renderer(np.stack(poses))
    for index, seen in enumerate(observed):
        for key, value in seen.items():
            again = np.asarray(rendered[key][index]).reshape(np.shape(value))
            if not np.array_equal(again, np.asarray(value)):
                raise ReplayRefused(
                    f"agent.replay: pose: the observation rebuilt from a pose differs from the env's "
                    f"({key!r}, step {index}): the env or a wrapper is not a function of the pose alone; "
                    "set agent.replay: sb3 (or auto)"
                )


def train_custom(
    experiment: CustomExperiment, run: Run | None, state: dict[str, Any], run_dir: Path | None
) -> int:
    """Train a DQN on the configured env into a new run folder, or continue ``run`` (``--resume``).

    Everything that can be refused (names that do not import, spaces the network cannot take,
    a wrapper the pose replay cannot look through) is refused before the run folder exists.
    """
    if run is None:
        check_run_dir(run_dir)
    factory = EnvFactory(experiment.env)
    factory.check()
    val_env = EnvFactory(experiment.env, experiment.evaluate.val_kwargs)()
    check_spaces(val_env)
    vec_env = _vec_env(experiment, factory)
    try:
        renderer = _pose_renderer(experiment, vec_env, factory)
        agent = (
            experiment.agent if renderer is not None else dataclasses.replace(experiment.agent, replay="sb3")
        )
        resuming = run is not None
        if run is None:
            run = create_run(experiment, path=run_dir)
        with new_run_or_nothing(run):
            resumed, done_steps = resume_point(run, vec_env) if resuming else (None, 0)
            model = build_model(
                agent,
                vec_env,
                seed=experiment.seed,
                tensorboard_log=str(run.path / "tb"),
                pose_renderer=renderer,
            )
            if resuming:
                resume_model(model, resumed, done_steps, agent.learning_starts)
            remaining = experiment.train.total_timesteps - done_steps
            if remaining <= 0:
                print(f"train.py: {run.path} already trained {done_steps} steps; nothing to do")
                return 0
            evaluate = experiment.evaluate
            seeds = [evaluate.seed + i for i in range(evaluate.episodes)]
            callbacks, validation = training_callbacks(
                run,
                lambda policy: episode_metrics(run_episodes(policy, val_env, seeds, evaluate.max_steps)),
                custom_score,
                experiment,
                done_steps,
                state,
            )
            name = experiment.env.id or experiment.env.entry_point
            print(
                f"train.py: run folder {run.path} ({name}, {experiment.env.n_envs} {experiment.env.vec_env} "
                f"env(s), replay {'pose' if renderer is not None else 'sb3'})"
            )
            began = time.perf_counter()
            model.learn(
                remaining,
                callback=callbacks,
                progress_bar=experiment.train.progress_bar,
                reset_num_timesteps=not resuming,
                tb_log_name="dqn",
            )
            minutes = (time.perf_counter() - began) / 60.0
            rate = write_summary(run, validation, int(model.num_timesteps), done_steps, minutes)
            best = validation.best_score[0] if validation.best_score else float("nan")
            key = next((k for k in SCORE_KEYS if validation.history and k in validation.history[-1]), "score")
            print(
                f"train.py: {model.num_timesteps} steps in {minutes:.1f} min ({rate:.0f} steps/s); "
                f"best validation {key} {best:.3f}; saved {run.best_policy}"
            )
            return 0
    finally:
        vec_env.close()
        val_env.close()


# ---------------------------------------------------------------------- evaluation
def _markdown(metrics: dict[str, float], title: str) -> str:
    lines = [f"### {title}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4g} |" for key, value in metrics.items()]
    return "\n".join(lines) + "\n"


def evaluate_custom_runs(runs: list[Run], *, episodes: int | None, out: Path | None) -> int:
    """evaluate.py for custom runs: episodes.csv, metrics.json and metrics.md per run, printed tables.

    Episode i resets with seed ``evaluate.seed + 100000 + i`` on an env built with
    ``evaluate.test_kwargs``; several runs (training seeds) are also summarised as mean +- std of
    every figure in summary_over_runs.json.
    """
    if episodes is not None and episodes < 1:
        raise ValueError(f"--episodes: expected >= 1, got {episodes}")
    names = run_output_names([run.path for run in runs])
    folders = [
        out / name if out and len(runs) > 1 else (out or run.path / "eval")
        for run, name in zip(runs, names, strict=True)
    ]
    for folder in folders:
        check_output_folder(folder)
    per_run: dict[str, dict[str, float]] = {}
    for run, folder in zip(runs, folders, strict=True):
        experiment = run.experiment
        assert isinstance(experiment, CustomExperiment)
        config = experiment.evaluate
        count = config.episodes if episodes is None else episodes
        env = EnvFactory(experiment.env, config.test_kwargs)()
        try:
            policy = load_policy(run.policy_path(), env)
            seeds = [config.seed + EVALUATION_SEED_OFFSET + i for i in range(count)]
            with new_folder(folder):  # a failure here removes the folder if this call made it
                rows = run_episodes(policy, env, seeds, config.max_steps)
                metrics = episode_metrics(rows)
                write_csv(folder / "episodes.csv", rows)
                atomic_write_text(folder / "metrics.json", json_text(metrics))
                table = _markdown(metrics, f"{run.path.name}: {count} episodes")
                atomic_write_text(folder / "metrics.md", table)
        finally:
            env.close()
        per_run[str(run.path)] = metrics
        print(table)
        print(f"evaluate.py: wrote {folder}/episodes.csv, metrics.json, metrics.md")
    if len(runs) > 1:
        keys = [key for key in per_run[str(runs[0].path)] if all(key in m for m in per_run.values())]
        summary = {
            key: {
                "mean": float(np.mean([m[key] for m in per_run.values()])),
                "std": float(np.std([m[key] for m in per_run.values()])),
                "runs": len(runs),
            }
            for key in keys
        }
        target = out or runs[0].path.parent
        atomic_write_text(Path(target) / "summary_over_runs.json", json_text(summary))
        print(f"### mean ± std over {len(runs)} runs")
        for key, figures in summary.items():
            print(f"{key}: {figures['mean']:.4g} ± {figures['std']:.4g}")
    return 0
