"""Training callbacks (SB3 style): periodic validation, best-model saving, early stop, checkpoints.

One validation path serves every task: :class:`ValidationCallback` runs a validator from
:mod:`agents.experiments.validation` every ``train.eval_every_steps`` steps (and once at the
end), logs the metrics and appends them to ``RUN/validation.csv``, then hands them to its
after-validation callbacks, which read the metrics and nothing else:

- :class:`SaveBestPolicy`: ``RUN/checkpoints/best.pt`` when the score is the best so far;
- :class:`EarlyStopping`: stop after ``train.patience`` validations without a better score.

:class:`CheckpointCallback` writes ``latest.pt`` and the step count, :class:`StopAfterMinutes` stops
after ``train.max_minutes``. ``state.json`` keeps what ``--resume`` needs. SB3 models run them as
``CallbackList([validation, checkpoints, time_limit])``; the greedy registration learner drives
the same list by hand (``init_callback``, ``on_step``, ``on_training_end``).
"""

from __future__ import annotations

import csv
import io as text_io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from agents.checkpoints import keep_previous, save_policy
from agents.experiments.config import Experiment
from agents.experiments.runs import Run, json_text
from envs.io.atomic import atomic_write_text

__all__ = [
    "CheckpointCallback",
    "EarlyStopping",
    "SaveBestPolicy",
    "StopAfterMinutes",
    "ValidationCallback",
    "training_callbacks",
    "write_summary",
]

Metrics = dict[str, float]
Score = Callable[[Metrics], tuple[float, ...]]


def _saved_score(state: dict[str, Any]) -> tuple[float, ...] | None:
    """state.json's best score; a ``null`` element (strict JSON) is an infinite one."""
    best_score = state.get("best_score")
    if not best_score:
        return None
    return tuple(float("inf") if value is None else float(value) for value in best_score)


class SaveBestPolicy:
    """Best-model saving: keeps the policy of the best validation so far (lower score is better).

    ``best_mm`` is that validation's median error (mm).
    """

    def __init__(self, path: Path, score: Score, state: dict[str, Any]) -> None:
        self.path = path
        self.score = score
        best_mm = state.get("best_val_median_mm")
        self.best_mm = float("inf") if best_mm is None else float(best_mm)  # null: no finite best yet
        self.best_score = _saved_score(state)

    def after_validation(self, metrics: Metrics, policy: Any) -> bool:
        score = self.score(metrics)
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            self.best_mm = metrics["median_mm"]
            save_policy(policy, self.path)
        return True

    def state(self) -> dict[str, Any]:
        return {
            "best_val_median_mm": self.best_mm,
            "best_score": list(self.best_score) if self.best_score else None,
        }


class EarlyStopping:
    """Patience: stops training after ``patience`` validations in a row without a better score."""

    def __init__(self, patience: int, score: Score, state: dict[str, Any]) -> None:
        self.patience = patience
        self.score = score
        self.best_score = _saved_score(state)
        self.evals_without_gain = int(state.get("evals_without_gain", 0))

    def after_validation(self, metrics: Metrics, policy: Any) -> bool:
        score = self.score(metrics)
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            self.evals_without_gain = 0
        else:
            self.evals_without_gain += 1
        return self.evals_without_gain < self.patience

    def state(self) -> dict[str, Any]:
        return {"evals_without_gain": self.evals_without_gain}


class ValidationCallback(BaseCallback):
    """Periodic validation: ``validator(policy) -> metrics`` every ``train.eval_every_steps`` and at the end.

    Each validation appends a row (step, minutes, the metrics, steps/s, validation seconds) to
    ``RUN/validation.csv`` and ``val/*`` to the logger, runs the after-validation callbacks
    (best policy, early stop) and records their state in ``RUN/state.json``. ``state`` is the
    run's saved state when resuming; ``started_steps`` the steps done before this session.
    """

    def __init__(
        self,
        run: Run,
        validator: Callable[[Any], Metrics],
        score: Score,
        experiment: Experiment,
        started_steps: int = 0,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        state = state or {}
        self.run = run
        self.validator = validator
        self.every_steps = experiment.train.eval_every_steps
        self.best = SaveBestPolicy(run.best_policy, score, state)
        self.early_stopping = EarlyStopping(experiment.train.patience, score, state)
        self.started = time.perf_counter()
        self.started_steps = started_steps
        self.last_eval = started_steps
        self.history: list[Metrics] = []

    @property
    def best_mm(self) -> float:
        """Median error (mm) of the best validation so far."""
        return self.best.best_mm

    @property
    def best_score(self) -> tuple[float, ...] | None:
        return self.best.best_score

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_eval >= self.every_steps:
            self.last_eval = self.num_timesteps
            return self._validate()
        return True

    def _on_training_end(self) -> None:
        if self.last_eval != self.num_timesteps:
            self._validate()

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
        _append_csv(self.run.path / "validation.csv", row)
        keep_going = True
        for callback in (self.best, self.early_stopping):
            keep_going = callback.after_validation(metrics, self.model.policy) and keep_going
        self.run.update_state(
            **self.best.state(),
            **self.early_stopping.state(),
            minutes=(time.perf_counter() - self.started) / 60.0,
        )
        return keep_going


class CheckpointCallback(BaseCallback):
    """``RUN/checkpoints/latest.pt`` and its step count every ``every_steps`` steps and at the end.

    Before ``latest.pt`` is replaced, the good one is copied to ``previous.pt`` (the fallback
    when ``latest.pt`` is found damaged); the step is stored in the checkpoint and state.json.
    """

    def __init__(self, run: Run, every_steps: int, started_steps: int = 0) -> None:
        super().__init__()
        self.run = run
        self.every_steps = every_steps
        self.last_checkpoint = started_steps
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_checkpoint >= self.every_steps:
            self.last_checkpoint = self.num_timesteps
            self._checkpoint()
        return True

    def _on_training_end(self) -> None:
        self._checkpoint()

    def _checkpoint(self) -> None:
        keep_previous(self.run.latest_policy, self.run.previous_policy)
        save_policy(self.model.policy, self.run.latest_policy, num_timesteps=int(self.num_timesteps))
        self.run.update_state(
            num_timesteps=int(self.num_timesteps), minutes=(time.perf_counter() - self.started) / 60.0
        )


class StopAfterMinutes(BaseCallback):
    """Stops training ``max_minutes`` after the callback was made."""

    def __init__(self, max_minutes: float) -> None:
        super().__init__()
        self.max_minutes = max_minutes
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        return (time.perf_counter() - self.started) / 60.0 < self.max_minutes


def training_callbacks(
    run: Run,
    validator: Callable[[Any], Metrics],
    score: Score,
    experiment: Experiment,
    started_steps: int,
    state: dict[str, Any],
) -> tuple[CallbackList, ValidationCallback]:
    """The callbacks of a training session, in their order, and the validation among them."""
    validation = ValidationCallback(run, validator, score, experiment, started_steps, state)
    checkpoints = CheckpointCallback(run, experiment.train.checkpoint_every_steps, started_steps)
    time_limit = StopAfterMinutes(experiment.train.max_minutes)
    return CallbackList([validation, checkpoints, time_limit]), validation


def write_summary(
    run: Run, validation: ValidationCallback, num_timesteps: int, done_steps: int, minutes: float
) -> float:
    """Write RUN/summary.json (strict JSON) of this session; returns its steps (or samples) per second."""
    rate = (num_timesteps - done_steps) / max(minutes * 60.0, 1e-9)
    summary = {
        "num_timesteps": num_timesteps,
        "minutes": minutes,
        "steps_per_s": rate,
        "best_val_median_mm": validation.best_mm,
        "validations": validation.history,
    }
    atomic_write_text(run.path / "summary.json", json_text(summary))
    return rate


def _append_csv(path: Path, row: Metrics) -> None:
    """Append ``row`` to a CSV file (header first when the file is new), atomically."""
    old = path.read_text() if path.is_file() else ""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not old:
        writer.writeheader()
    writer.writerow({key: f"{value:.4g}" for key, value in row.items()})
    atomic_write_text(path, old + buffer.getvalue())
