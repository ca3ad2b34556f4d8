"""The registration tasks (rigid, sdm) end to end: train an agent, evaluate a run, register files.

``train.py`` and ``evaluate.py`` dispatch here for ``task: rigid`` and ``task: sdm``. Training
uses the supervised greedy learner (``agent.algorithm: greedy``, :mod:`agents.greedy`) or SB3's
DQN / Double DQN on the registration env; both share the callbacks of
:mod:`agents.experiments.monitor`. The evaluation itself is :mod:`agents.experiments.registration_eval`.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

import envs
from agents.dqn import build_model, build_policy
from agents.experiments.config import RigidExperiment, SdmExperiment
from agents.experiments.data import (
    SdmBundle,
    evaluation_dataset,
    make_alignment_world,
    prepare_sdm,
    sdm_samples,
    validation_split,
)
from agents.experiments.ensemble import describe, load_policies
from agents.experiments.monitor import training_callbacks, write_summary
from agents.experiments.registration_eval import evaluate_rigid, evaluate_sdm
from agents.experiments.reports import (
    markdown_table,
    overlay_png,
    plot_success,
    volume_stem,
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
from agents.experiments.validation import alignment_score, validate_alignment
from agents.greedy import GreedyConfig, GreedyTrainer, train_with_callbacks
from agents.search import QNetworkPolicy, register, write_registration
from envs import io
from envs.data import Dataset
from envs.io.atomic import atomic_write_text, check_output_folder, new_folder
from envs.phantom import phantom_dataset
from envs.tasks import AlignmentWorld, DeformableRegistrationEnv, RigidRegistrationEnv

__all__ = ["evaluate_registration_run", "register_files", "train_registration"]

AlignmentExperiment = RigidExperiment | SdmExperiment


# ---------------------------------------------------------------------- training
def train_registration(
    experiment: AlignmentExperiment,
    dataset: Dataset,
    run: Run | None,
    state: dict[str, Any],
    run_dir: Path | None,
) -> int:
    """Train a registration agent; ``run`` is the run to resume (None: create one at ``run_dir``).

    A failure or an interrupt before the first checkpoint removes only what this call made
    (:func:`agents.experiments.runs.new_run_or_nothing`).
    """
    if run is None:
        check_run_dir(run_dir)  # refused now, before the pairs are built
    # the SDM task's model and atlas (a resumed run keeps its own model)
    bundle = None
    if isinstance(experiment, SdmExperiment):
        saved = run.path / "sdm.npz" if run is not None else None

        def fitted(done: int, total: int) -> None:
            print(f"train.py: SDM fit: {done}/{total} training volumes registered to the atlas", flush=True)

        bundle = prepare_sdm(experiment, dataset, saved, progress=fitted)
        print(f"train.py: {bundle.sdm!r}")
    # worlds: every training pair is built now, so bad data fails before a run folder exists
    if bundle is not None and experiment.sdm.samples:
        dataset = sdm_samples(experiment, bundle, dataset)  # subjects drawn from the model
        print(f"train.py: training on {experiment.sdm.samples} subjects sampled from the model")
    train_world = make_alignment_world(experiment, dataset, "train", training=True, bundle=bundle)
    val_split = validation_split(dataset)
    if val_split == "train":
        print("train.py: warning: no val split; validating on the training cases", file=sys.stderr)
    # validation selects the checkpoint: it needs a truth on every case (no label-only cases)
    strict = {"require_truth": True} if bundle is not None else {}
    val_world = make_alignment_world(experiment, dataset, val_split, training=False, bundle=bundle, **strict)
    print(
        f"train.py: preparing {train_world.n_variants} training and {val_world.n_variants} validation pairs",
        flush=True,
    )
    for index in tqdm(range(train_world.n_variants), desc="pairs", disable=not experiment.train.progress_bar):
        train_world.pair(index)
    val_world.pair(0)
    resuming = run is not None
    if run is None:
        run = create_run(experiment, path=run_dir)
    with new_run_or_nothing(run):
        if bundle is not None and not (run.path / "sdm.npz").is_file():
            bundle.sdm.save(run.path / "sdm.npz")  # a run killed before this has no checkpoint yet
        spaces = (train_world.observation_space(), gym.spaces.Discrete(train_world.n_actions))
        resumed, done_steps = resume_point(run, spaces) if resuming else (None, 0)
        remaining = experiment.train.total_timesteps - done_steps
        if remaining <= 0:
            print(f"train.py: {run.path} already trained {done_steps} steps; nothing to do")
            return 0
        max_cases = experiment.train.eval_cases
        callbacks, validation = training_callbacks(
            run,
            lambda policy: validate_alignment(policy, val_world, experiment, max_cases),
            alignment_score,
            experiment,
            done_steps,
            state,
        )
        began = time.perf_counter()
        if experiment.agent.algorithm == "greedy":
            num_timesteps = _learn_greedy(experiment, run, resumed, train_world, callbacks, done_steps)
        else:
            num_timesteps = _learn_dqn(experiment, run, resumed, train_world, callbacks, done_steps)
        minutes = (time.perf_counter() - began) / 60.0
        rate = write_summary(run, validation, num_timesteps, done_steps, minutes)
        print(
            f"train.py: {num_timesteps} samples in {minutes:.1f} min ({rate:.0f}/s); "
            f"best validation median TRE {validation.best_mm:.2f} mm; saved {run.best_policy}"
        )
        return 0


def _learn_greedy(
    experiment: AlignmentExperiment,
    run: Run,
    resumed: Any,
    train_world: AlignmentWorld,
    callbacks: CallbackList,
    done_steps: int,
) -> int:
    """Liao et al.'s supervised greedy learner, driving the callbacks by hand; returns the samples done.

    ``resumed`` is the policy to continue from (None: start afresh).
    """
    config = experiment.agent
    policy = build_policy(config, train_world.observation_space(), gym.spaces.Discrete(train_world.n_actions))
    if resumed is not None:
        policy.q_net.load_state_dict(resumed.q_net.state_dict())
    trainer = GreedyTrainer.from_config(
        policy, train_world, GreedyConfig.from_agent_config(config), seed=experiment.seed
    )
    logger = configure_logger(str(run.path / "tb"), ["tensorboard"])
    return train_with_callbacks(
        trainer,
        callbacks,
        logger,
        experiment.train.total_timesteps,
        done_steps,
        experiment.train.progress_bar,
    )


def _learn_dqn(
    experiment: AlignmentExperiment,
    run: Run,
    resumed: Any,
    train_world: AlignmentWorld,
    callbacks: CallbackList,
    done_steps: int,
) -> int:
    """SB3's DQN / Double DQN on the registration env; returns the env steps done."""
    rigid = isinstance(experiment, RigidExperiment)
    env_id = envs.RIGID_ENV_ID if rigid else envs.DEFORMABLE_ENV_ID
    env_cls = RigidRegistrationEnv if rigid else DeformableRegistrationEnv

    def make_env() -> gym.Env:
        env = env_cls.from_world(train_world, "random", experiment.env.tre_threshold_mm)
        return gym.wrappers.TimeLimit(env, experiment.env.max_episode_steps)

    vec_env = DummyVecEnv([make_env for _ in range(experiment.env.n_envs)])
    vec_env.seed(experiment.seed)
    model = build_model(
        experiment.agent,
        vec_env,
        seed=experiment.seed,
        tensorboard_log=str(run.path / "tb"),
        pose_renderer=train_world.observations_from_poses,
    )
    resume_model(model, resumed, done_steps, experiment.agent.learning_starts)
    print(f"train.py: {env_id} with {experiment.agent.algorithm} DQN")
    model.learn(
        experiment.train.total_timesteps - done_steps,
        callback=callbacks,
        progress_bar=experiment.train.progress_bar,
        reset_num_timesteps=resumed is None,
        tb_log_name="dqn",
    )
    vec_env.close()
    return int(model.num_timesteps)


# ---------------------------------------------------------------------- evaluation
def evaluate_registration_run(
    run: Run,
    *,
    data: Path | None,
    split: str,
    baselines: Sequence[str],
    misalignments: Sequence[float],
    trials: int,
    conditions: Sequence[str],
    png: int,
    refine: bool,
    register_volumes: Sequence[Path] | None,
    out: Path | None,
) -> int:
    """evaluate.py for a registration run: TRE before / after, success, time, Dice; baselines beside.

    With ``register_volumes`` it registers those files instead (:func:`register_files`).
    """
    experiment = run.experiment
    assert isinstance(experiment, (RigidExperiment, SdmExperiment))
    if refine:
        if not isinstance(experiment, RigidExperiment):
            raise ValueError("--refine: only rigid runs can be refined")
        experiment = replace(experiment, search=replace(experiment.search, refine="sitk"))
    if trials < 1:
        raise ValueError(f"--trials: expected >= 1, got {trials}")
    if any(not 0 <= m <= 180 for m in misalignments):
        raise ValueError(f"--misalignments: expected values in 0..180 (mm and degrees), got {misalignments}")
    baselines = [b for b in baselines if b]
    if "atlas" in baselines:
        raise ValueError("--baseline atlas is for landmark runs; use sitk, sitk-presearch or elastix")
    if "elastix" in baselines and importlib.util.find_spec("itk") is None:
        raise ValueError(
            "--baseline elastix: the itk-elastix package is not installed; pip install itk-elastix==0.25.4"
        )
    if png < 0:
        raise ValueError(f"--png: expected >= 0, got {png}")
    if not register_volumes:
        check_output_folder(out or run.eval_folder(split))
    run.policy_paths()  # a run (or an ensemble member) without a checkpoint is named now
    if register_volumes and data is None:
        # Registering given files needs the run's settings, not its data set: a lazy phantom
        # stands in (never generated) so that nothing is written or loaded.
        dataset = phantom_dataset(1, 0, 0)
    else:
        dataset = evaluation_dataset(experiment, data)
    bundle = (
        None
        if isinstance(experiment, RigidExperiment)
        else prepare_sdm(experiment, dataset, run.path / "sdm.npz")
    )
    if register_volumes:
        return register_files(run, experiment, dataset, bundle, register_volumes, out)
    if not dataset.split(split):
        raise ValueError(f"{dataset.source}: split {split!r} has no cases; choose --split train/val/test")
    world = make_alignment_world(experiment, dataset, split, training=False, bundle=bundle)
    policy = load_policies(run, (world.observation_space(), gym.spaces.Discrete(world.n_actions)))
    out = out or run.eval_folder(split)
    with new_folder(out):  # a failure (or Ctrl-C) here removes the folder if this call made it
        pictures: list[Path] = []

        def on_result(condition: str, world: Any, pair: Any, result: Any) -> None:
            if len(pictures) < png:
                pictures.append(
                    overlay_png(world, pair, result, out / f"overlay_{condition}_{len(pictures)}.png")
                )

        began = time.perf_counter()
        if isinstance(experiment, RigidExperiment):
            metrics, rows = evaluate_rigid(
                experiment,
                policy,
                dataset,
                split,
                misalignments=misalignments,
                trials=trials,
                conditions=conditions,
                baselines=baselines,
                on_result=on_result,
            )
        else:
            assert bundle is not None
            metrics, rows = evaluate_sdm(
                experiment, policy, dataset, split, bundle, baselines=baselines, on_result=on_result
            )
        write_csv(out / "registrations.csv", rows)
        atomic_write_text(out / "metrics.json", json_text(metrics))
        table = markdown_table(metrics, f"{describe(run)}: split {split} ({dataset.source})")
        atomic_write_text(out / "metrics.md", table)
        plot = plot_success(metrics, out / "success_vs_misalignment.png")
        print(table)
        written = ["metrics.json", "registrations.csv", "metrics.md"] + ([plot.name] if plot else [])
        written += [p.name for p in pictures]
        print(f"evaluate.py: {time.perf_counter() - began:.0f} s; wrote {out}/ {', '.join(written)}")
    return 0


def register_files(
    run: Run,
    experiment: AlignmentExperiment,
    dataset: Dataset,
    bundle: SdmBundle | None,
    volumes: Sequence[Path],
    out: Path | None,
) -> int:
    """Register MOVING to FIXED (rigid: two files; sdm: the fixed one, the atlas moves); write the results.

    The files, the output folder (never a file, and nothing in it overwritten) and the volumes
    (not constant, not too small for the world) are checked before the search.
    """
    rigid = isinstance(experiment, RigidExperiment)
    expected = 2 if rigid else 1
    if len(volumes) != expected:
        raise ValueError(
            f"--register: expected {'FIXED MOVING' if rigid else 'FIXED'} ({expected} file(s)), "
            f"got {len(volumes)}"
        )
    folder = "registrations-ensemble" if run.members else "registrations"
    out = out or run.path / folder / volume_stem(volumes[0])
    check_output_folder(out)
    names = ("transform.tfm", "displacement.nii.gz", "warped.nii.gz", "warped_labels.nii.gz")
    existing = [
        out / name for name in (*names, "trajectory.csv", "registration.json") if (out / name).exists()
    ]
    if existing:
        raise ValueError(
            f"--out {out}: {existing[0]} exists; registrations never overwrite files: "
            "pass another --out or move them away"
        )
    world = make_alignment_world(experiment, dataset, "train", training=False, bundle=bundle)
    images = []
    for role, path in zip(("fixed", "moving"), volumes, strict=False):
        image = io.read_volume(path)
        try:
            world.check_resolution(image, f"the {role} volume")
        except ValueError as error:
            raise ValueError(f"--register {path}: {error}") from None
        images.append(image)
    fixed, moving = images[0], images[1] if rigid else None
    policy = QNetworkPolicy(
        load_policies(run, (world.observation_space(), gym.spaces.Discrete(world.n_actions)))
    )
    answer, result = register(fixed, moving, policy, world, config=experiment.search)
    written = write_registration(
        out,
        fixed,
        moving if rigid else world.atlas,
        answer,
        result,
        param_names=world.param_names,
        labels=None if rigid else world.atlas_labels,
    )
    if result.fallback:
        print(
            f"evaluate.py: warning: the agent's answer was implausible ({result.fallback_reason}); "
            f"SimpleITK's answer was written instead (fallback: {result.fallback})"
        )
    print(
        f"evaluate.py: registered in {result.seconds:.2f} s ({result.steps} steps, "
        f"fallback: {result.fallback or 'none'}); wrote {', '.join(str(p) for p in written.values())}"
    )
    return 0
