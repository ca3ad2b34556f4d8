"""Running the trials of a seed list or sweep: as Ray Tune trials, or one by one in this process.

Ray is optional (``pip install 'medgym[ray]'``) and imported only here, inside functions. Each
trial is an ordinary run folder in the sweep folder, trained by
:func:`agents.experiments.dispatch.train_experiment`; resources per trial are declared to Tune
(1 CPU, torch 1 thread; 1 GPU when CUDA is available and the config does not ask for the CPU).

Data safety: a failed trial removes only its own run folder; when every trial fails, the sweep
folder this call made is removed (a folder that existed, empty, is emptied of what this call
wrote); nothing else is touched. Ctrl-C stops the trials.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agents.experiments.config import Experiment
from agents.experiments.data import prepare_dataset
from agents.experiments.dispatch import train_experiment
from agents.experiments.loading import load_experiment, one_line
from agents.experiments.sweep import (
    Trial,
    data_signature,
    remove_trial_folder,
    summary_table,
    trial_outcome,
    write_sweep_table,
)
from envs.io.atomic import make_folders

__all__ = ["SweepFailed", "ray_available", "run_sweep", "run_trial", "trial_resources"]


class SweepFailed(RuntimeError):
    """Every trial of a sweep failed (the sweep folder was removed); the message names the first error."""


def ray_available() -> bool:
    """Whether Ray Tune can be imported (the ``medgym[ray]`` extra is installed)."""
    return importlib.util.find_spec("ray") is not None


def trial_resources(experiment: Experiment) -> dict[str, float]:
    """Tune resources of one trial: 1 CPU; 1 GPU when CUDA is available and the agent may use it."""
    import torch

    device = str(getattr(experiment.agent, "device", "auto"))
    gpu = 1.0 if torch.cuda.is_available() and device != "cpu" else 0.0
    return {"cpu": 1.0, "gpu": gpu}


def run_trial(
    config: str | None, overrides: list[str], trial: Trial, sweep_dir: Path, cwd: str | None = None
) -> dict[str, float | None]:
    """Train one trial into ``sweep_dir/trial.name``; returns its final and best validation scores.

    ``cwd`` is the driver's working directory (relative paths in the config mean the same in a
    Tune worker, which starts elsewhere). A failure removes the trial's run folder and re-raises.
    """
    if cwd is not None:
        os.chdir(cwd)
    run_dir = Path(sweep_dir) / trial.name
    try:
        run_dir.mkdir(exist_ok=False)  # the trial's own folder, or nothing: never one it did not make
    except FileExistsError:
        raise ValueError(
            f"trial folder {run_dir} exists already (another sweep in the same folder?); "
            "a trial never writes into a folder it did not create"
        ) from None
    try:
        experiment = load_experiment(config, [*overrides, *trial.all_overrides()])
        train_experiment(experiment, None, {}, run_dir)
    except BaseException:
        remove_trial_folder(Path(sweep_dir), trial)
        raise
    return trial_outcome(run_dir)


def _tune_trainable(params: dict[str, Any], plan: dict[str, Any]) -> None:
    """The Tune function trainable: one trial of ``plan`` (picked by ``params["trial"]``)."""
    from ray import tune

    trial = plan["trials"][params["trial"]]
    outcome = run_trial(plan["config"], plan["overrides"], trial, Path(plan["sweep_dir"]), plan["cwd"])
    tune.report({key: math.nan if value is None else value for key, value in outcome.items()})


def _prepare_data(experiments: list[Experiment]) -> None:
    """Write each distinct phantom dataset once, here, so that parallel trials only read it."""
    seen: set[str] = set()
    for experiment in experiments:
        if not hasattr(experiment, "data"):  # task: custom brings its own data (its env makes it)
            continue
        signature = data_signature(experiment)
        if signature in seen or experiment.task == "sdm":  # SDM phantoms live in memory per trial
            continue
        seen.add(signature)
        prepare_dataset(experiment)


def run_sweep(
    config: str | None,
    overrides: list[str],
    trials: list[Trial],
    experiments: list[Experiment],
    sweep_dir: Path,
    *,
    ray_address: str | None = None,
    max_concurrent: int | None = None,
    use_ray: bool | None = None,
) -> int:
    """Run ``trials`` (from :func:`agents.experiments.sweep.plan_trials`) into ``sweep_dir``.

    Args:
        config, overrides: the base config file and ``--set`` values every trial starts from.
        trials, experiments: the planned trials and their (checked) experiments.
        sweep_dir: a new or empty folder (:func:`agents.experiments.sweep.sweep_folder`).
        ray_address: a Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``); None: a local Ray.
        max_concurrent: trials at once (default: the CPUs of the local Ray or the cluster).
        use_ray: None: Ray Tune when installed; False: one by one in this process.

    Returns:
        0 when every trial finished, 1 when some failed, 130 when interrupted.

    Raises:
        SweepFailed: every trial failed; the sweep folder this call made is gone.
    """
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"--max-concurrent: expected >= 1, got {max_concurrent}")
    if any(getattr(experiment.agent, "backend", "sb3") == "rllib" for experiment in experiments):
        # An RLlib trial starts env-runner actors of its own, which a 1-CPU Tune trial cannot hold.
        if ray_address is not None:
            raise ValueError(
                "--ray-address with agent.backend: rllib is not supported: RLlib trials run one after "
                "another here (each starts its own env runners); drop --ray-address"
            )
        if use_ray is not False:
            print(
                f"train.py: agent.backend rllib: running {len(trials)} trials one after another "
                "(each trial's RLlib starts its own env-runner actors)",
                file=sys.stderr,
            )
        use_ray = False
    if use_ray is None:
        use_ray = ray_available()
        if not use_ray:
            if ray_address is not None:
                raise ValueError("--ray-address needs Ray: pip install 'medgym[ray]'")
            print(
                f"train.py: Ray is not installed; running {len(trials)} trials one after another in this "
                "process (pip install 'medgym[ray]' runs them as Ray Tune trials)",
                file=sys.stderr,
            )
    # Ray first (a cluster that cannot be reached fails, or hangs, before anything is written)
    with _ray_session(ray_address, max_concurrent) if use_ray else contextlib.nullcontext():
        return _run(config, overrides, trials, experiments, sweep_dir, use_ray, max_concurrent)


@contextlib.contextmanager
def _ray_session(ray_address: str | None, num_cpus: int | None) -> Iterator[None]:
    """A Ray session: the running one (left running), else a new local one or a cluster's (shut after)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if ray_address is not None:
        ray.init(address=ray_address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _run(
    config: str | None,
    overrides: list[str],
    trials: list[Trial],
    experiments: list[Experiment],
    sweep_dir: Path,
    use_ray: bool,
    max_concurrent: int | None,
) -> int:
    """run_sweep's body, in a Ray session when ``use_ray``."""
    _prepare_data(experiments)
    existed = sweep_dir.is_dir()
    made = _claim_folder(sweep_dir, existed)
    header = {
        "config": None if config is None else str(Path(config).resolve()),
        "overrides": list(overrides),
        "runner": "ray-tune" if use_ray else "sequential",
    }
    rows = [_row(trial, "pending") for trial in trials]
    write_sweep_table(sweep_dir, header, rows)
    interrupted = False
    try:
        if use_ray:
            results = _run_tune(config, overrides, trials, experiments, sweep_dir, max_concurrent)
        else:
            results = _run_sequential(config, overrides, trials, sweep_dir)
    except KeyboardInterrupt:
        results, interrupted = {}, True
    except Exception:  # the runner itself failed (e.g. no Ray cluster at --ray-address)
        if not any(sweep_dir.glob("*/summary.json")):  # no trial finished: nothing worth keeping
            _remove_sweep(sweep_dir, made, existed, trials)
        raise
    for trial, row in zip(trials, rows, strict=True):
        status, outcome = results.get(trial.index, ("interrupted" if interrupted else "not run", {}))
        if status == "interrupted":
            interrupted = True
        row.update(status=status, **outcome)  # a failed trial already removed its own folder
    failed = [row for row in rows if row["status"] != "ok"]
    if rows and len(failed) == len(rows) and not interrupted:
        _remove_sweep(sweep_dir, made, existed, trials)
        first = next((row["error"] for row in rows if row.get("error")), "no trial finished")
        raise SweepFailed(f"every trial of the sweep failed; removed {sweep_dir} (first error: {first})")
    write_sweep_table(sweep_dir, header, rows)
    print(summary_table(rows))
    print(f"train.py: sweep folder {sweep_dir}: {len(rows) - len(failed)} of {len(rows)} trials finished")
    if interrupted:
        print("train.py: interrupted; the trials were stopped", file=sys.stderr)
        return 130
    return 1 if failed else 0


def _row(trial: Trial, status: str) -> dict[str, Any]:
    return {
        "trial": trial.index,
        "run_folder": trial.name,
        "seed": trial.seed,
        "overrides": list(trial.overrides),
        "status": status,
        "final_val_median_mm": None,
        "best_val_median_mm": None,
        "error": None,
    }


def _claim_folder(sweep_dir: Path, existed: bool) -> Path | None:
    """Make the sweep folder atomically (or re-check a given empty one); returns the top folder made.

    ``mkdir`` without ``exist_ok`` is the claim: two sweeps started in the same second, or pointed
    at one folder, cannot both own it, so neither can later remove the other's trials.
    """
    if existed:
        if any(sweep_dir.iterdir()):
            raise ValueError(
                f"sweep folder {sweep_dir}: no longer empty (another sweep?); pick a new --run-dir"
            )
        return None
    parents = make_folders(sweep_dir.parent)  # e.g. runs/: others may write there too
    try:
        sweep_dir.mkdir(exist_ok=False)
    except FileExistsError:
        raise ValueError(f"sweep folder {sweep_dir}: made by another sweep meanwhile; run again") from None
    return parents or sweep_dir


def _remove_sweep(sweep_dir: Path, made: Path | None, existed: bool, trials: list[Trial]) -> None:
    """Remove what this sweep made: the folders it created, or (an empty folder given) what it wrote."""
    if made is not None:
        shutil.rmtree(sweep_dir, ignore_errors=True)  # ours: claimed by mkdir
        for folder in sweep_dir.parents:  # then the parents this call made, while they are empty
            if made not in (folder, *folder.parents):
                break
            try:
                folder.rmdir()
            except OSError:
                break
    elif existed:
        for name in ("sweep.json", "tune", *(trial.name for trial in trials)):
            entry = sweep_dir / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _run_sequential(
    config: str | None, overrides: list[str], trials: list[Trial], sweep_dir: Path
) -> dict[int, tuple[str, dict[str, Any]]]:
    """The trials one after another in this process; Ctrl-C stops at the running trial."""
    results: dict[int, tuple[str, dict[str, Any]]] = {}
    for trial in trials:
        print(f"train.py: trial {trial.index + 1}/{len(trials)}: {trial.name}")
        try:
            results[trial.index] = ("ok", run_trial(config, overrides, trial, sweep_dir))
        except KeyboardInterrupt:
            results[trial.index] = ("interrupted", {})
            break
        except Exception as error:
            print(f"train.py: trial {trial.name} failed: {one_line(error)}", file=sys.stderr)
            results[trial.index] = ("failed", {"error": one_line(error)})
    return results


def _run_tune(
    config: str | None,
    overrides: list[str],
    trials: list[Trial],
    experiments: list[Experiment],
    sweep_dir: Path,
    max_concurrent: int | None,
) -> dict[int, tuple[str, dict[str, Any]]]:
    """The trials as Ray Tune trials (one grid-search entry each) in the running Ray session."""
    import ray
    from ray import tune

    cpus = int(ray.cluster_resources().get("CPU", 1))
    concurrent = max_concurrent or max(1, cpus // 1)  # 1 CPU per trial
    plan = {
        "config": None if config is None else str(Path(config).resolve()),
        "overrides": list(overrides),
        "trials": trials,
        "sweep_dir": str(sweep_dir.resolve()),
        "cwd": os.getcwd(),
    }
    resources = trial_resources(experiments[0])
    names = {trial.index: trial.name for trial in trials}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_tune_trainable, plan=plan), resources),
        param_space={"trial": tune.grid_search([trial.index for trial in trials])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # a worker imports torch & co. once, not once per trial
            trial_name_creator=lambda t: names[t.config["trial"]],
            trial_dirname_creator=lambda t: names[t.config["trial"]],
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str((sweep_dir / "").resolve()),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    results: dict[int, tuple[str, dict[str, Any]]] = {}
    for result in grid:
        index = int(result.config["trial"])
        if result.error is not None:
            results[index] = ("failed", {"error": _ray_error_line(result.error)})
            continue
        metrics = result.metrics or {}
        outcome = {
            key: None if not isinstance(metrics.get(key), float) or math.isnan(metrics[key]) else metrics[key]
            for key in ("final_val_median_mm", "best_val_median_mm")
        }
        results[index] = ("ok", outcome)
    return results


def _ray_error_line(error: BaseException) -> str:
    """The trial's own error (the last line of Ray's wrapped traceback), on one line."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return one_line(lines[-1] if lines else type(cause).__name__)
