"""The landmark task end to end: train an agent, evaluate runs in mm.

``train.py`` and ``evaluate.py`` dispatch here for ``task: landmark``. Points are LPS
millimetres; the model's output order is the run's ``landmarks.json``. Prediction on new
volumes is :mod:`agents.experiments.predict`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

import envs
from agents.dqn import build_model, build_policy
from agents.experiments.config import LandmarkExperiment
from agents.experiments.data import evaluation_dataset, make_world, validation_split
from agents.experiments.ensemble import describe
from agents.experiments.landmark_eval import evaluate_run, training_shape
from agents.experiments.metrics import summarise_runs
from agents.experiments.monitor import training_callbacks, write_summary
from agents.experiments.reports import (
    landmark_markdown,
    plot_errors,
    run_output_names,
    write_csv,
)
from agents.experiments.runs import (
    Run,
    check_run_dir,
    create_run,
    json_text,
    new_run_or_nothing,
    resume_model,
    resume_point,
)
from agents.experiments.validation import landmark_score, validate
from agents.greedy import GreedyConfig, LandmarkGreedyTrainer, train_with_callbacks
from envs.data import Dataset
from envs.io.atomic import atomic_write_text, check_output_folder, new_folder

__all__ = ["evaluate_landmark_runs", "evaluate_run", "train_landmark"]

ACTIONS = gym.spaces.Discrete(6)  # one step along +-x, +-y, +-z


# ---------------------------------------------------------------------- training
def train_landmark(
    experiment: LandmarkExperiment,
    dataset: Dataset,
    run: Run | None,
    state: dict[str, Any],
    run_dir: Path | None,
) -> int:
    """Train a landmark agent; ``run`` is the run to resume (None: create one at ``run_dir``).

    ``agent.algorithm`` ``dqn`` / ``double`` train SB3's (Double) DQN on ``env.n_envs`` envs;
    ``greedy`` regresses the same network on the known rewards of all 6 actions of states from
    the same envs (:class:`agents.greedy.LandmarkGreedyTrainer`), counting rendered samples as
    steps. Both share validation, best-model saving, early stop, checkpoints, ``max_minutes``
    and ``--resume``. A failure or an interrupt before the first checkpoint removes only what
    this call made (:func:`agents.experiments.runs.new_run_or_nothing`).
    """
    if run is None:
        check_run_dir(run_dir)  # refused now, before the worlds are built
    # worlds: a resumed run keeps its own landmark order (the network's output is tied to it);
    # a run killed before it wrote landmarks.json has no checkpoint yet and takes the data's order
    has_names = run is not None and (run.path / "landmarks.json").is_file()
    resumed_names = run.landmark_names() if has_names else None
    train_world = make_world(experiment, dataset, "train", augment=True, landmarks=resumed_names)
    names = list(train_world.landmark_names)
    val_split = validation_split(dataset)
    if val_split == "train":
        print("train.py: warning: no val split; validating on the training cases", file=sys.stderr)
    val_world = make_world(experiment, dataset, val_split, landmarks=names)
    val_world.variant(0)  # loads one case now: a level finer than the data fails here, not mid-run
    _build_variants(train_world, dataset, experiment.train.progress_bar)
    # envs: built like train_world and sharing its dataset cache, so train_world renders every env's poses
    env_kwargs = dict(
        dataset=dataset,
        split="train",
        landmarks=names,
        levels_mm=experiment.env.levels_mm,
        patch_size=experiment.env.patch_size,
        frames=experiment.env.frames,
        preset=experiment.env.preset,
        augment=experiment.augment,
        world_seed=experiment.seed,
        max_episode_steps=experiment.env.max_episode_steps,
    )

    def make_env() -> gym.Env:
        return gym.make(envs.LANDMARK_ENV_ID, **env_kwargs)

    greedy = experiment.agent.algorithm == "greedy"
    vec_env = None if greedy else DummyVecEnv([make_env for _ in range(experiment.env.n_envs)])
    if vec_env is not None:
        vec_env.seed(experiment.seed)
    resuming = run is not None
    if run is None:
        run = create_run(experiment, path=run_dir)
    with new_run_or_nothing(run):
        if not has_names:
            run.write_landmark_names(names)  # evaluate.py reads the model's landmark order from here
        _write_shape(run, dataset, names)
        spaces = (train_world.observation_space(), ACTIONS)
        resumed, done_steps = (
            resume_point(run, spaces if vec_env is None else vec_env) if resuming else (None, 0)
        )
        # model
        model = None
        if vec_env is not None:
            model = build_model(
                experiment.agent,
                vec_env,
                seed=experiment.seed,
                tensorboard_log=str(run.path / "tb"),
                pose_renderer=train_world.observations_from_poses,
            )
            if resuming:
                resume_model(model, resumed, done_steps, experiment.agent.learning_starts)
        remaining = experiment.train.total_timesteps - done_steps
        if remaining <= 0:
            print(f"train.py: {run.path} already trained {done_steps} steps; nothing to do")
            return 0
        # callbacks and learning
        max_cases = experiment.train.eval_cases
        callbacks, validation = training_callbacks(
            run,
            lambda policy: validate(policy, val_world, experiment, max_cases),
            landmark_score,
            experiment,
            done_steps,
            state,
        )
        print(
            f"train.py: run folder {run.path} ({len(names)} landmarks, "
            f"{len(train_world.cases)} training cases x "
            f"{train_world.n_variants // len(train_world.cases)} variants, {experiment.agent.algorithm})"
        )
        began = time.perf_counter()
        if model is None:
            num_timesteps = _learn_greedy(
                experiment, run, resumed, make_env, spaces[0], callbacks, done_steps
            )
        else:
            model.learn(
                remaining,
                callback=callbacks,
                progress_bar=experiment.train.progress_bar,
                reset_num_timesteps=not resuming,
                tb_log_name="dqn",
            )
            num_timesteps = int(model.num_timesteps)
        minutes = (time.perf_counter() - began) / 60.0
        # summary
        rate = write_summary(run, validation, num_timesteps, done_steps, minutes)
        unit = "samples" if greedy else "steps"
        print(
            f"train.py: {num_timesteps} {unit} in {minutes:.1f} min ({rate:.0f} {unit}/s); "
            f"best validation median {validation.best_mm:.2f} mm; saved {run.best_policy}"
        )
        if vec_env is not None:
            vec_env.close()
        return 0


def _write_shape(run: Run, dataset: Dataset, names: list[str]) -> None:
    """``shape.json``: the training scans' landmark configuration, for ``search.shape_check``
    (with fewer than 3 landmarks there is no shape to check against: nothing is written)."""
    path = run.path / "shape.json"
    if path.is_file():
        return
    try:
        shape = training_shape(dataset, names)
    except ValueError:
        return
    atomic_write_text(path, shape.to_json())


def _build_variants(world: Any, dataset: Dataset, progress_bar: bool) -> None:
    """Build the training variants (augmented pyramids) now, before the run's clock starts.

    As registration builds its pairs: ``train.max_minutes`` then measures learning, for every
    learner alike, instead of the first resets' augmentation (about 1 s per variant). The envs
    share these through the dataset's cache; building stops when the cache is nearly full,
    since more would only evict what was built.
    """
    cache = dataset.cache
    for index in tqdm(range(world.n_variants), desc="variants", unit="variant", disable=not progress_bar):
        if cache.used_bytes >= 0.9 * cache.budget_bytes:
            break
        world.variant(index)


def _learn_greedy(
    experiment: LandmarkExperiment,
    run: Run,
    resumed: Any,
    make_env: Callable[[], gym.Env],
    observation_space: gym.spaces.Dict,
    callbacks: CallbackList,
    done_steps: int,
) -> int:
    """Liao et al.'s supervised greedy learner on the landmark envs; returns the samples done.

    ``resumed`` is the policy to continue from (None: start afresh). As for DQN, only the
    weights are resumed: the replay fills again and the optimizer starts afresh.
    """
    config = experiment.agent
    policy = build_policy(config, observation_space, ACTIONS)
    if resumed is not None:
        policy.q_net.load_state_dict(resumed.q_net.state_dict())
    trainer = LandmarkGreedyTrainer.from_config(
        policy,
        make_env,
        GreedyConfig.from_agent_config(config),
        n_walkers=experiment.env.n_envs,
        seed=experiment.seed,
    )
    print(
        f"train.py: {envs.LANDMARK_ENV_ID} with the greedy learner ({trainer.capacity} samples kept, "
        f"{len(trainer.walkers)} walkers)"
    )
    logger = configure_logger(str(run.path / "tb"), ["tensorboard"])
    try:
        return train_with_callbacks(
            trainer,
            callbacks,
            logger,
            experiment.train.total_timesteps,
            done_steps,
            experiment.train.progress_bar,
        )
    finally:
        trainer.close()


# ---------------------------------------------------------------------- evaluation
def evaluate_landmark_runs(
    runs: list[Run],
    *,
    data: Path | None,
    split: str,
    baseline: str | None,
    atlases: int,
    gif: bool,
    out: Path | None,
) -> int:
    """evaluate.py for landmark runs: metrics.json, errors.csv, metrics.md and plots per run.

    Several runs (training seeds) are also summarised as mean +- std in summary_over_runs.json.
    """
    if atlases < 1:
        raise ValueError(f"--atlases: expected >= 1, got {atlases}")
    names = run_output_names([run.path for run in runs])
    folders = [
        out / name if out and len(runs) > 1 else (out or run.eval_folder(split))
        for run, name in zip(runs, names, strict=True)
    ]
    for folder in folders:
        check_output_folder(folder)
    datasets = [evaluation_dataset(run.experiment, data) for run in runs]
    for dataset in datasets:
        if not dataset.split(split):
            raise ValueError(f"{dataset.source}: split {split!r} has no cases; choose --split train/val/test")
    per_run: dict[str, dict[str, Any]] = {}
    for run, folder, dataset in zip(runs, folders, datasets, strict=True):
        began = time.perf_counter()
        with new_folder(folder):  # a failure here removes the folder if this call made it
            metrics, rows = evaluate_run(run, dataset, split, baseline, folder, gif, atlases)
        per_run[f"{len(per_run)}:{run.path}"] = metrics
        write_csv(folder / "errors.csv", rows)
        atomic_write_text(folder / "metrics.json", json_text(metrics))
        table = landmark_markdown(metrics, f"{describe(run)}: split {split} ({dataset.source})")
        atomic_write_text(folder / "metrics.md", table)
        plot_errors(rows, folder / "errors_per_landmark.png")
        print(table)
        print(
            f"evaluate.py: {time.perf_counter() - began:.0f} s; wrote {folder}/metrics.json, errors.csv, "
            f"metrics.md, errors_per_landmark.png, trajectories.png" + (", trajectories.gif" if gif else "")
        )
    if len(runs) > 1:
        summary = summarise_runs(per_run)
        target = out or runs[0].path.parent
        atomic_write_text(Path(target) / "summary_over_runs.json", json_text(summary))
        print(f"### mean ± std over {len(runs)} runs")
        for method, figures in summary.items():
            med, p95 = figures["median_mm"], figures["p95_mm"]
            print(
                f"{method}: median {med['mean']:.2f} ± {med['std']:.2f} mm, p95 {p95['mean']:.2f} ± "
                f"{p95['std']:.2f} mm"
            )
    return 0
