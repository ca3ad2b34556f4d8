"""Train a landmark-detection or registration agent from a YAML config.

    python train.py configs/landmark_phantom.yaml [--set train.total_timesteps=20000 ...]
    python train.py configs/rigid_phantom.yaml        (task: rigid)
    python train.py configs/sdm_phantom.yaml          (task: sdm)
    python train.py --resume runs/landmark-20261125-101500

Reads top to bottom: config, seeding, data, envs, model, callbacks, learn, save. The logic
lives in envs/ and agents/; tests call :func:`main` in-process.
"""

from __future__ import annotations

import argparse
import csv
import io as text_io
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

import envs
from agents.dqn import build_model, build_policy, load_policy, save_policy, set_torch_threads
from agents.experiments import (
    ConfigError,
    Experiment,
    LandmarkExperiment,
    RigidExperiment,
    Run,
    SdmExperiment,
    alignment_score,
    atomic_write_text,
    create_run,
    load_experiment,
    make_alignment_world,
    open_run,
    prepare_sdm,
    validate_alignment,
)
from agents.greedy import GreedyTrainer
from agents.search import QNetworkPolicy, detect_landmarks, scored_detections
from envs.data import Dataset
from envs.tasks import AlignmentWorld, DeformableRegistrationEnv, LandmarkWorld, RigidRegistrationEnv

__all__ = ["main", "prepare_dataset", "validate"]


def prepare_dataset(experiment: Experiment) -> Dataset:
    """The experiment's dataset; phantoms are written to disk once and then read like real data."""
    data = experiment.data
    cache_bytes = int(data.cache_gib * (1 << 30))
    if data.manifest is not None:
        return Dataset.from_manifest(data.manifest, cache_bytes=cache_bytes)
    from envs.phantom import PhantomConfig, write_phantom_dataset

    spec = data.phantoms
    assert spec is not None  # LandmarkExperiment checks that one of the two is set
    if isinstance(experiment, SdmExperiment):
        # In memory (generated on first use): the SDM task scores against each phantom's true
        # displacement field, which the files on disk do not carry.
        from envs.tasks import shape_only_config

        config = PhantomConfig(spacing_mm=spec.spacing_mm)
        if spec.shape_only:
            config = shape_only_config(config)
        return Dataset.phantoms(
            spec.n_train, spec.n_val, spec.n_test, seed=spec.seed, config=config, cache_bytes=cache_bytes
        )
    folder = Path(spec.cache_dir) / (
        f"n{spec.n_train}-{spec.n_val}-{spec.n_test}_seed{spec.seed}_{spec.spacing_mm:g}mm"
        + ("_partial" if spec.partial_fov else "")
        + ("_shape" if spec.shape_only else "")
    )
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        config = PhantomConfig(spacing_mm=spec.spacing_mm, partial_fov=spec.partial_fov)
        if spec.shape_only:
            from envs.tasks import shape_only_config

            config = shape_only_config(config)
        write_phantom_dataset(folder, spec.n_train, spec.n_val, spec.n_test, seed=spec.seed, config=config)
    return Dataset.from_manifest(manifest, cache_bytes=cache_bytes)


def make_world(
    experiment: LandmarkExperiment,
    dataset: Dataset,
    split: str,
    augment: bool = False,
    landmarks: list[str] | None = None,
) -> LandmarkWorld:
    env = experiment.env
    names = landmarks or list(env.landmarks or dataset.landmark_names(["train"]))
    return LandmarkWorld(
        dataset,
        split,
        names,
        env.levels_mm,
        env.patch_size,
        env.frames,
        env.preset,
        experiment.augment if augment else None,
        seed=experiment.seed,
    )


def validate(
    policy: Any, world: LandmarkWorld, experiment: LandmarkExperiment, max_cases: int | None = None
) -> dict[str, float]:
    """Median / p95 / max landmark error (mm) of the greedy search on ``world``'s cases.

    A landmark the search does not find counts as an infinite error, so a model that loses
    landmarks can never look better than one that finds them.
    """
    errors = []
    misses = 0
    q_policy = QNetworkPolicy(policy)
    for variant_index in range(min(world.n_variants, max_cases or world.n_variants)):
        variant = world.variant(variant_index)
        detections = detect_landmarks(world, variant, q_policy, config=experiment.search, seed=variant_index)
        for *_, error, found in scored_detections(world.landmark_names, variant.landmarks_lps_mm, detections):
            misses += not found
            errors.append(error if found else np.inf)
    values = np.array(errors) if errors else np.array([np.inf])
    # "higher" picks an observed value: no interpolation with infinite misses.
    return {
        "median_mm": float(np.percentile(values, 50, method="higher")),
        "p95_mm": float(np.percentile(values, 95, method="higher")),
        "max_mm": float(values.max()),
        "misses": float(misses),
    }


def landmark_score(metrics: dict[str, float]) -> tuple[float, ...]:
    """Lower is better: fewer lost landmarks first, then the median, then the tail."""
    return (metrics["misses"], metrics["median_mm"], metrics["p95_mm"])


class TrainingMonitor(BaseCallback):
    """Periodic validation, best-model saving, early stopping, checkpoints and a time limit.

    ``validator(policy)`` returns the validation metrics (with ``median_mm``), ``score(metrics)``
    a tuple where lower is better. Works as an SB3 callback, or driven by hand (the greedy
    registration learner) through :meth:`init_callback` and :meth:`advance`.
    """

    def __init__(
        self,
        run: Run,
        validator: Callable[[Any], dict[str, float]],
        score: Callable[[dict[str, float]], tuple[float, ...]],
        experiment: Experiment,
        started_steps: int = 0,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        state = state or {}
        self.run = run
        self.validator = validator
        self.score = score
        self.experiment = experiment
        self.best_mm = float(state.get("best_val_median_mm", float("inf")))
        best_score = state.get("best_score")
        self.best_score: tuple[float, ...] | None = tuple(best_score) if best_score else None
        self.evals_without_gain = int(state.get("evals_without_gain", 0))
        self.started = time.perf_counter()
        self.started_steps = started_steps
        self.last_eval = started_steps
        self.last_checkpoint = started_steps
        self.history: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        train = self.experiment.train
        keep_going = True
        if self.num_timesteps - self.last_eval >= train.eval_every_steps:
            self.last_eval = self.num_timesteps
            keep_going = self._validate()
        if self.num_timesteps - self.last_checkpoint >= train.checkpoint_every_steps:
            self.last_checkpoint = self.num_timesteps
            self._checkpoint()
        if (time.perf_counter() - self.started) / 60.0 >= train.max_minutes:
            keep_going = False
        return keep_going

    def _on_training_end(self) -> None:
        if self.last_eval != self.num_timesteps:
            self._validate()
        self._checkpoint()

    def _validate(self) -> bool:
        began = time.perf_counter()
        metrics = self.validator(self.model.policy)
        self.model.policy.set_training_mode(True)
        elapsed = time.perf_counter() - self.started
        row = {
            "step": float(self.num_timesteps),
            "minutes": elapsed / 60.0,
            **metrics,
            "steps_per_s": (self.num_timesteps - self.started_steps) / max(elapsed, 1e-9),
            "validation_s": time.perf_counter() - began,
        }
        self.history.append(row)
        for key, value in metrics.items():
            self.logger.record(f"val/{key}", value)
        self._append_csv(row)
        score = self.score(metrics)
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            self.best_mm = metrics["median_mm"]
            self.evals_without_gain = 0
            save_policy(self.model.policy, self.run.best_policy)
        else:
            self.evals_without_gain += 1
        self._write_state()
        return self.evals_without_gain < self.experiment.train.patience

    def advance(self, num_timesteps: int) -> bool:
        """Drive the monitor by hand (no SB3 model): returns False when training should stop."""
        self.num_timesteps = num_timesteps
        return self._on_step()

    def _checkpoint(self) -> None:
        save_policy(self.model.policy, self.run.latest_policy)
        self._write_state(checkpoint_steps=int(self.num_timesteps))

    def _write_state(self, checkpoint_steps: int | None = None) -> None:
        """Everything --resume needs: steps of latest.pt, the best score and patience so far."""
        state = self.run.read_state()
        if checkpoint_steps is not None:
            state["num_timesteps"] = checkpoint_steps
        state.update(
            {
                "best_val_median_mm": self.best_mm,
                "best_score": list(self.best_score) if self.best_score else None,
                "evals_without_gain": self.evals_without_gain,
                "minutes": (time.perf_counter() - self.started) / 60.0,
            }
        )
        self.run.write_state(state)

    def _append_csv(self, row: dict[str, float]) -> None:
        path = self.run.path / "validation.csv"
        old = path.read_text() if path.is_file() else ""
        buffer = text_io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row))
        if not old:
            writer.writeheader()
        writer.writerow({key: f"{value:.4g}" for key, value in row.items()})
        atomic_write_text(path, old + buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a medgym landmark-detection or registration agent.")
    parser.add_argument("config", nargs="?", help="experiment YAML, e.g. configs/landmark_phantom.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.total_timesteps=20000",
    )
    parser.add_argument("--run-dir", type=Path, help="run folder to create (default runs/NAME-DATE)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint"
    )
    args = parser.parse_args(argv)
    try:
        return train(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"train.py: error: {message}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    # 1. config
    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise ValueError("--resume takes the run's own config.yaml; drop the CONFIG and --set arguments")
        run = open_run(args.resume)
        experiment = run.experiment
        state = run.read_state()
    else:
        if args.config is None:
            raise ValueError("give a config file, e.g. python train.py configs/landmark_phantom.yaml")
        experiment = load_experiment(args.config, args.overrides)
        run, state = None, {}
    # 2. seeding and threads (1 torch thread on CPU: 2 threads ran ~10x slower here)
    set_torch_threads(experiment.agent.torch_threads)
    set_random_seed(experiment.seed)
    # 3. data: checked before a run folder exists, so bad input leaves nothing behind
    dataset = prepare_dataset(experiment)
    if not isinstance(experiment, LandmarkExperiment):
        return _train_alignment(args, experiment, dataset, run, state)
    # A resumed run keeps its own landmark order: the network's input is tied to it.
    resumed_names = run.landmark_names() if run is not None else None
    train_world = make_world(experiment, dataset, "train", augment=True, landmarks=resumed_names)
    names = list(train_world.landmark_names)
    val_split = "val" if dataset.split("val") else "train"
    if val_split == "train":
        print("train.py: warning: no val split; validating on the training cases", file=sys.stderr)
    val_world = make_world(experiment, dataset, val_split, landmarks=names)
    val_world.variant(0)  # loads one case now: a level finer than the data fails here, not mid-run
    # 4. envs
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
    vec_env = DummyVecEnv(
        [lambda: gym.make(envs.LANDMARK_ENV_ID, **env_kwargs) for _ in range(experiment.env.n_envs)]
    )
    vec_env.seed(experiment.seed)
    # The envs' worlds are built like train_world and share its dataset cache, so train_world
    # renders the poses of every env.
    renderer = train_world.observations_from_poses
    created = run is None
    if run is None:
        run = create_run(experiment, path=args.run_dir)
        # The model's output is tied to this landmark order: evaluate.py reads it from here.
        atomic_write_text(run.path / "landmarks.json", json.dumps({"landmarks": names}, indent=2) + "\n")
    try:
        return _learn(experiment, args, run, state, vec_env, val_world, train_world, names, renderer)
    except BaseException:
        # Bad input found only once learning started: leave no half-made run folder behind.
        if created and not run.latest_policy.is_file():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _learn(
    experiment: LandmarkExperiment,
    args: argparse.Namespace,
    run: Run,
    state: dict[str, Any],
    vec_env: DummyVecEnv,
    val_world: LandmarkWorld,
    train_world: LandmarkWorld,
    names: list[str],
    renderer: Any,
) -> int:
    # 5. model
    model = build_model(
        experiment.agent,
        vec_env,
        seed=experiment.seed,
        tensorboard_log=str(run.path / "tb"),
        pose_renderer=renderer,
    )
    done_steps = int(state.get("num_timesteps", 0))
    if args.resume is not None:
        _resume_model(model, run, vec_env, done_steps, experiment.agent.learning_starts)
    remaining = experiment.train.total_timesteps - done_steps
    if remaining <= 0:
        print(f"train.py: {run.path} already trained {done_steps} steps; nothing to do")
        return 0
    # 6. callbacks and learning
    max_cases = experiment.train.eval_cases
    monitor = TrainingMonitor(
        run,
        lambda policy: validate(policy, val_world, experiment, max_cases),
        landmark_score,
        experiment,
        started_steps=done_steps,
        state=state,
    )
    print(
        f"train.py: run folder {run.path} ({len(names)} landmarks, "
        f"{len(train_world.cases)} training cases x "
        f"{train_world.n_variants // len(train_world.cases)} variants)"
    )
    began = time.perf_counter()
    model.learn(
        remaining,
        callback=CallbackList([monitor]),
        progress_bar=experiment.train.progress_bar,
        reset_num_timesteps=args.resume is None,
        tb_log_name="dqn",
    )
    minutes = (time.perf_counter() - began) / 60.0
    # 7. summary
    rate = _write_summary(run, monitor, int(model.num_timesteps), done_steps, minutes)
    print(
        f"train.py: {model.num_timesteps} steps in {minutes:.1f} min ({rate:.0f} steps/s); "
        f"best validation median {monitor.best_mm:.2f} mm; saved {run.best_policy}"
    )
    vec_env.close()
    return 0


def _train_alignment(
    args: argparse.Namespace,
    experiment: RigidExperiment | SdmExperiment,
    dataset: Dataset,
    run: Run | None,
    state: dict[str, Any],
) -> int:
    """Registration tasks (rigid, sdm): the greedy learner (default) or SB3's DQN / Double DQN."""
    bundle = None
    if isinstance(experiment, SdmExperiment):
        saved = run.path / "sdm.npz" if run is not None else None
        bundle = prepare_sdm(experiment, dataset, saved)
        print(f"train.py: {bundle.sdm!r}")
    train_world = make_alignment_world(experiment, dataset, "train", training=True, bundle=bundle)
    val_split = "val" if dataset.split("val") else "train"
    if val_split == "train":
        print("train.py: warning: no val split; validating on the training cases", file=sys.stderr)
    val_world = make_alignment_world(experiment, dataset, val_split, training=False, bundle=bundle)
    print(
        f"train.py: preparing {train_world.n_variants} training and {val_world.n_variants} validation pairs",
        flush=True,
    )
    for index in tqdm(range(train_world.n_variants), desc="pairs", disable=not experiment.train.progress_bar):
        train_world.pair(index)  # bad data fails here, before a run folder exists
    val_world.pair(0)
    created = run is None
    if run is None:
        run = create_run(experiment, path=args.run_dir)
        if bundle is not None:
            bundle.sdm.save(run.path / "sdm.npz")
    try:
        return _learn_alignment(experiment, args, run, state, train_world, val_world)
    except BaseException:
        if created and not run.latest_policy.is_file():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _learn_alignment(
    experiment: RigidExperiment | SdmExperiment,
    args: argparse.Namespace,
    run: Run,
    state: dict[str, Any],
    train_world: AlignmentWorld,
    val_world: AlignmentWorld,
) -> int:
    config = experiment.agent
    done_steps = int(state.get("num_timesteps", 0))
    remaining = experiment.train.total_timesteps - done_steps
    if remaining <= 0:
        print(f"train.py: {run.path} already trained {done_steps} steps; nothing to do")
        return 0
    max_cases = experiment.train.eval_cases
    monitor = TrainingMonitor(
        run,
        lambda policy: validate_alignment(policy, val_world, experiment, max_cases),
        alignment_score,
        experiment,
        started_steps=done_steps,
        state=state,
    )
    began = time.perf_counter()
    if config.algorithm == "greedy":
        policy = build_policy(
            config, train_world.observation_space(), gym.spaces.Discrete(train_world.n_actions)
        )
        if args.resume is not None and run.latest_policy.is_file():
            loaded = load_policy(run.latest_policy, (policy.observation_space, policy.action_space))
            policy.q_net.load_state_dict(loaded.q_net.state_dict())
        trainer = GreedyTrainer(
            policy,
            train_world,
            buffer_size=min(config.buffer_size, 50_000),
            batch_size=config.batch_size,
            seed=experiment.seed,
        )
        logger = configure_logger(str(run.path / "tb"), ["tensorboard"])
        model = _GreedyModel(policy, logger)
        monitor.init_callback(model)  # type: ignore[arg-type]
        steps = done_steps
        with tqdm(total=remaining, unit="sample", disable=not experiment.train.progress_bar) as bar:
            while steps < experiment.train.total_timesteps:
                before = trainer.samples
                loss = trainer.update()
                steps += trainer.samples - before
                bar.update(trainer.samples - before)
                if trainer.updates % 100 == 0:
                    logger.record("train/loss", float(np.mean(trainer.losses[-100:])))
                    logger.dump(steps)
                    bar.set_postfix(loss=f"{loss:.4f}")
                model.num_timesteps = steps
                if not monitor.advance(steps):
                    break
        monitor._on_training_end()
        num_timesteps = steps
    else:
        env_id = envs.RIGID_ENV_ID if isinstance(experiment, RigidExperiment) else envs.DEFORMABLE_ENV_ID
        env_cls = (
            RigidRegistrationEnv if isinstance(experiment, RigidExperiment) else DeformableRegistrationEnv
        )

        def make_env() -> gym.Env:
            env = env_cls.from_world(train_world, "random", experiment.env.tre_threshold_mm)
            return gym.wrappers.TimeLimit(env, experiment.env.max_episode_steps)

        vec_env = DummyVecEnv([make_env for _ in range(experiment.env.n_envs)])
        vec_env.seed(experiment.seed)
        model = build_model(
            config,
            vec_env,
            seed=experiment.seed,
            tensorboard_log=str(run.path / "tb"),
            pose_renderer=train_world.observations_from_poses,
        )
        if args.resume is not None:
            _resume_model(model, run, vec_env, done_steps, config.learning_starts)
        print(f"train.py: {env_id} with {config.algorithm} DQN")
        model.learn(
            remaining,
            callback=CallbackList([monitor]),
            progress_bar=experiment.train.progress_bar,
            reset_num_timesteps=args.resume is None,
            tb_log_name="dqn",
        )
        num_timesteps = int(model.num_timesteps)
        vec_env.close()
    minutes = (time.perf_counter() - began) / 60.0
    rate = _write_summary(run, monitor, num_timesteps, done_steps, minutes)
    print(
        f"train.py: {num_timesteps} samples in {minutes:.1f} min ({rate:.0f}/s); "
        f"best validation median TRE {monitor.best_mm:.2f} mm; saved {run.best_policy}"
    )
    return 0


def _resume_model(model: Any, run: Run, vec_env: DummyVecEnv, done_steps: int, learning_starts: int) -> None:
    """Load the run's latest weights into an SB3 model and continue its step count."""
    if not run.latest_policy.is_file():
        return
    loaded = load_policy(run.latest_policy, vec_env)
    model.policy.q_net.load_state_dict(loaded.q_net.state_dict())
    model.policy.q_net_target.load_state_dict(loaded.q_net.state_dict())
    model.num_timesteps = done_steps
    # The replay buffer is not saved: fill it again before the first update.
    model.learning_starts = done_steps + learning_starts


def _write_summary(
    run: Run, monitor: TrainingMonitor, num_timesteps: int, done_steps: int, minutes: float
) -> float:
    """Write summary.json; returns the steps (or samples) per second of this session."""
    rate = (num_timesteps - done_steps) / max(minutes * 60.0, 1e-9)
    summary = {
        "num_timesteps": num_timesteps,
        "minutes": minutes,
        "steps_per_s": rate,
        "best_val_median_mm": monitor.best_mm,
        "validations": monitor.history,
    }
    atomic_write_text(run.path / "summary.json", json.dumps(summary, indent=2) + "\n")
    return rate


class _GreedyModel:
    """The parts of an SB3 model that :class:`TrainingMonitor` reads, for the greedy learner."""

    def __init__(self, policy: Any, logger: Any) -> None:
        self.policy = policy
        self.logger = logger
        self.num_timesteps = 0


if __name__ == "__main__":
    sys.exit(main())
