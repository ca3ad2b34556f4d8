"""Seeds and sweeps: many ordinary run folders from one config, as Ray Tune trials or one by one.

A sweep file grids and / or samples dotted config keys (the keys of ``train.py --set``)::

    grid:                      # every combination (tune.grid_search)
      agent.learning_rate: [1.0e-4, 3.0e-4]
    random:                    # drawn per sample (tune.uniform / loguniform / randint / choice)
      agent.gamma: {uniform: [0.8, 0.99]}
    samples: 2                 # Tune's num_samples: the grid is repeated, random keys drawn anew
    seed: 0                    # seeds the random draws, so a sweep file always means the same trials

Trials: ``samples x grid combinations x seeds`` (``train.py --seeds``), each checked as a full
config before anything runs. The sweep folder (``runs/NAME-sweep-DATE``) holds one run folder per
trial (``s0-agent.learning_rate=0.0001``), ``sweep.json`` (the table of trials) and Tune's own
files in ``tune/``. Trials run on Ray Tune (:mod:`agents.experiments.sweep_tune`) when Ray is
installed, else one after another in this process.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.experiments.config import ConfigError, Experiment
from agents.experiments.loading import load_experiment, one_line, to_mapping
from agents.experiments.runs import check_run_dir, json_text
from envs.io.atomic import atomic_write_text

__all__ = [
    "DISTRIBUTIONS",
    "SweepSpec",
    "Trial",
    "data_signature",
    "expand_run_folders",
    "plan_trials",
    "read_sweep",
    "remove_trial_folder",
    "summary_table",
    "sweep_folder",
    "trial_outcome",
    "write_sweep_table",
]

# Tune's search-space functions that a sweep file may name, and how many values each takes.
DISTRIBUTIONS: dict[str, int | None] = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None}
_SWEEP_KEYS = ("grid", "random", "samples", "seed")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: grid values and random distributions per dotted config key."""

    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    """key -> the values to try (every combination of all keys)."""
    random: dict[str, tuple[str, list[Any]]] = dataclasses.field(default_factory=dict)
    """key -> (distribution, arguments): uniform/loguniform [low, high], randint [low, high), choice [..]."""
    samples: int = 1
    """Repeats of the grid, each with fresh random draws (Tune's ``num_samples``)."""
    seed: int = 0
    """Seed of the random draws."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial: its folder name, training seed and the ``--set`` overrides that make its config."""

    index: int
    name: str
    seed: int
    overrides: tuple[str, ...]
    """``key=value`` (YAML values), the sweep's keys only (the seed is in ``seed``)."""

    def all_overrides(self) -> list[str]:
        """The overrides that turn the base config into this trial's (sweep keys, then the seed)."""
        return [*self.overrides, f"seed={self.seed}"]


def read_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (YAML); every error names the file and the entry."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--sweep {file}: file not found; pass a YAML file with grid: and/or random:")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"--sweep {file}: not valid YAML ({one_line(error)})") from None
    where = f"--sweep {file}"
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping with grid:, random:, samples:, seed:")
    unknown = sorted(set(loaded) - set(_SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown entry {unknown[0]!r}; expected {', '.join(_SWEEP_KEYS)}")
    grid = loaded.get("grid") or {}
    random = loaded.get("random") or {}
    for name, section in (("grid", grid), ("random", random)):
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: {name}: expected a mapping of dotted config keys, got {section!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid {key}: expected a non-empty list of values, got {values!r}")
    draws = {key: _distribution(where, key, spec) for key, spec in random.items()}
    both = sorted(set(grid) & set(draws))
    if both:
        raise ConfigError(f"{where}: {both[0]} is in grid and random; keep it in one")
    if "seed" in grid or "seed" in draws:
        raise ConfigError(f"{where}: seed is not a sweep key; use train.py --seeds 0 1 2")
    samples, seed = loaded.get("samples", 1), loaded.get("seed", 0)
    for name, value, low in (("samples", samples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where}: {name}: expected an integer >= {low}, got {value!r}")
    if not grid and not draws:
        raise ConfigError(f"{where}: no grid: or random: keys; name at least one config key to sweep")
    return SweepSpec({str(k): list(v) for k, v in grid.items()}, draws, samples, seed)


def _distribution(where: str, key: str, spec: Any) -> tuple[str, list[Any]]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: random {key}: expected one distribution such as {{uniform: [0.8, 0.99]}}, "
            f"got {spec!r}; distributions: {', '.join(DISTRIBUTIONS)}"
        )
    (kind, args), *_ = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: random {key}: unknown distribution {kind!r}; use {', '.join(DISTRIBUTIONS)}"
        )
    count = DISTRIBUTIONS[kind]
    if not isinstance(args, list) or not args or (count is not None and len(args) != count):
        shape = "a non-empty list" if count is None else "[low, high]"
        raise ConfigError(f"{where}: random {key}: {kind} expects {shape}, got {args!r}")
    if count is not None:
        if (
            not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            or args[0] >= args[1]
        ):
            raise ConfigError(f"{where}: random {key}: {kind} expects numbers low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{where}: random {key}: loguniform expects 0 < low < high, got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: random {key}: randint expects integers [low, high), got {args!r}")
    return str(kind), list(args)


def _draw(rng: np.random.Generator, kind: str, args: list[Any]) -> Any:
    """One value of a distribution; floats keep 4 significant digits so names and configs agree."""
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "randint":
        return int(rng.integers(args[0], args[1]))
    low, high = (math.log(args[0]), math.log(args[1])) if kind == "loguniform" else args
    value = float(rng.uniform(low, high))
    return float(f"{math.exp(value) if kind == 'loguniform' else value:.4g}")


def _yaml_value(value: Any) -> str:
    """``value`` as the YAML text of a ``--set`` override (``0.0001``, ``[32, 32]``, ``dqn``)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _folder_name(seed: int, overrides: list[str]) -> str:
    text = "-".join([f"s{seed}", *overrides])
    text = re.sub(r"[\[\]{}'\" ]+", "", text)  # [5, 3] -> 5,3
    text = re.sub(r"[^A-Za-z0-9._=+,-]+", "_", text)
    return text[:120]


def plan_trials(
    config: str | Path | None,
    overrides: list[str],
    seeds: list[int] | None,
    spec: SweepSpec | None,
    sweep_file: str | Path | None = None,
) -> tuple[list[Trial], list[Experiment]]:
    """The trials of a seed list and / or a sweep, each checked as a full config.

    Order: sample, then grid combination, then seed. Without ``seeds`` the config's own seed is used.
    A bad key or value raises :class:`ConfigError` naming the sweep file and the key.

    Returns:
        The trials and their experiments (same order).
    """
    base = load_experiment(config, overrides)
    seeds = list(seeds) if seeds else [base.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {seeds} repeats a seed; give each seed once")
    spec = spec or SweepSpec()
    where = f"--sweep {sweep_file}" if sweep_file is not None else "--sweep"
    for key, values in spec.grid.items():  # each key alone first, so the error names it
        _check_key(config, overrides, key, values[0], f"{where}: grid {key}")
    rng = np.random.default_rng(spec.seed)
    grid_keys = list(spec.grid)
    trials: list[Trial] = []
    experiments: list[Experiment] = []
    names: set[str] = set()
    for _ in range(spec.samples):
        drawn = {key: _draw(rng, kind, args) for key, (kind, args) in spec.random.items()}
        for key, value in drawn.items():
            _check_key(config, overrides, key, value, f"{where}: random {key}")
        for combo in itertools.product(*(spec.grid[key] for key in grid_keys)):
            values = {**dict(zip(grid_keys, combo, strict=True)), **drawn}
            sets = [f"{key}={_yaml_value(value)}" for key, value in values.items()]
            for seed in seeds:
                name = _folder_name(seed, sets)
                if name in names:
                    name = f"{name}-{len(trials)}"
                names.add(name)
                trial = Trial(len(trials), name, int(seed), tuple(sets))
                try:
                    experiments.append(load_experiment(config, [*overrides, *trial.all_overrides()]))
                except ConfigError as error:
                    raise ConfigError(f"{where}: trial {name}: {error}") from None
                trials.append(trial)
    return trials, experiments


def _check_key(config: Any, overrides: list[str], key: str, value: Any, where: str) -> None:
    try:
        load_experiment(config, [*overrides, f"{key}={_yaml_value(value)}"])
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def sweep_folder(experiment: Experiment, run_dir: Path | None, root: Path = Path("runs")) -> Path:
    """The sweep folder to use: ``run_dir`` (new or empty) or a new ``root/NAME-sweep-DATE``."""
    if run_dir is not None:
        check_run_dir(run_dir)
        return Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{experiment.name}-sweep-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{experiment.name}-sweep-{stamp}-{suffix}"
    check_run_dir(path)
    return path


def data_signature(experiment: Experiment) -> str:
    """The part of a config that decides its dataset (trials with equal signatures share the data)."""
    return json.dumps([experiment.task, to_mapping(experiment.data)], sort_keys=True, default=str)


def trial_outcome(run_dir: Path) -> dict[str, float | None]:
    """Final and best validation scores (median mm) from a finished trial's ``summary.json``."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return {"final_val_median_mm": None, "best_val_median_mm": None}
    summary = json.loads(summary_path.read_text())
    history = summary.get("validations") or []
    final = history[-1].get("median_mm") if history else None
    best = summary.get("best_val_median_mm")
    return {
        "final_val_median_mm": None if final is None else float(final),
        "best_val_median_mm": None if best is None or not math.isfinite(best) else float(best),
    }


def remove_trial_folder(sweep_dir: Path, trial: Trial) -> None:
    """Remove a failed trial's run folder: it lies in the sweep folder, so it is the sweep's own."""
    folder = sweep_dir / trial.name
    if folder.is_dir() and folder.parent == sweep_dir:
        shutil.rmtree(folder, ignore_errors=True)


def write_sweep_table(sweep_dir: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Write ``sweep.json`` (strict JSON, atomically): the sweep's settings and one row per trial."""
    path = sweep_dir / "sweep.json"
    atomic_write_text(path, json_text({**header, "trials": rows}))
    return path


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The trials as a plain-text table (printed at the end of a sweep)."""

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    width = max([len("run folder"), *(len(row["run_folder"]) for row in rows)])
    lines = [f"{'trial':>5}  {'run folder':<{width}}  {'status':<11} {'final mm':>9} {'best mm':>8}"]
    for row in rows:
        lines.append(
            f"{row['trial']:>5}  {row['run_folder']:<{width}}  {row['status']:<11} "
            f"{score(row['final_val_median_mm']):>9} {score(row['best_val_median_mm']):>8}"
        )
    return "\n".join(lines)


def expand_run_folders(paths: list[Path]) -> list[Path]:
    """Run folders for ``evaluate.py``: a sweep folder (with ``sweep.json``) becomes its finished trials.

    Other paths are kept as they are (``open_run`` checks them).

    Raises:
        ValueError: a sweep folder whose ``sweep.json`` is damaged or lists no finished trial.
    """
    expanded: list[Path] = []
    for path in paths:
        table = Path(path) / "sweep.json"
        if not table.is_file() or (Path(path) / "config.yaml").exists():
            expanded.append(Path(path))
            continue
        try:
            rows = json.loads(table.read_text())["trials"]
            done = [Path(path) / row["run_folder"] for row in rows if row["status"] == "ok"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"sweep folder {path}: sweep.json is damaged ({one_line(error)})") from None
        done = [folder for folder in done if (folder / "config.yaml").is_file()]
        if not done:
            raise ValueError(f"sweep folder {path}: no finished trial to evaluate (see {table})")
        expanded.extend(done)
    return expanded
