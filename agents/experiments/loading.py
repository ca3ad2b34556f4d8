"""From YAML (and ``--set key=value`` overrides) to the typed experiment configs, and back.

An unknown key is an error that names it (with the keys that would have been accepted); a
value of the wrong type names the key and the expected type. Overrides are applied to the
mapping before it is checked. :func:`to_mapping` gives the plain form written to a run folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agents.experiments.config import (
    TASKS,
    ConfigError,
    Experiment,
    LandmarkExperiment,
    RigidExperiment,
    SdmExperiment,
)
from agents.experiments.custom_env import CustomExperiment

__all__ = ["apply_overrides", "experiment_from_mapping", "from_mapping", "load_experiment", "to_mapping"]

T = TypeVar("T")

# A number in any YAML 1.1 / 1.2 spelling that safe_load (YAML 1.1) leaves as text: 3e-4, 1E5, +2e5, 1_000.5
_NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?")

_EXPERIMENTS: dict[str, type] = {
    "landmark": LandmarkExperiment,
    "rigid": RigidExperiment,
    "sdm": SdmExperiment,
    "custom": CustomExperiment,
}


def _number(value: Any) -> Any:
    """``value`` as a float when it is text spelling a number (YAML 1.2 reads ``3e-4`` as one)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace("_", ""))
    return value


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (the field's annotation); ``key`` names it in errors."""
    if tp is int or tp is float:
        value = _number(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config {key}: expected a finite number, got {value!r}")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"config {key}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config {key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config {key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_mapping(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config {key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config {key}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _convert(item, sub, f"{key}[{i}]") for i, (item, sub) in enumerate(zip(value, args, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {key}: expected text, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], mapping: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (YAML) mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"config: unknown key {where}{unknown[0]!s}; {cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _convert(value, hints[name], key)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config {prefix or cls.__name__}: {error}") from None


def to_mapping(config: Any) -> Any:
    """A plain (YAML-ready) mapping of a config dataclass: tuples become lists."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_mapping(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple):
        return [to_mapping(item) for item in config]
    return config


def apply_overrides(mapping: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a copy of a nested mapping."""
    result = yaml.safe_load(yaml.safe_dump(mapping))  # deep copy of plain data
    for override in overrides:
        if "=" not in override or not override.split("=", 1)[0].strip():
            raise ConfigError(
                f"--set {override!r}: expected key=value, e.g. --set train.total_timesteps=20000"
            )
        dotted, raw = override.split("=", 1)
        keys = dotted.strip().split(".")
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {key!r} is not a section")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {dotted}: not valid YAML: {raw!r} ({one_line(error)})") from None
    return result


def load_experiment(path: str | Path | None, overrides: list[str] | None = None) -> Experiment:
    """Read a YAML experiment (None: all defaults), apply overrides, check every key and type."""
    mapping: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"config {file}: file not found; pass a YAML file such as configs/landmark_phantom.yaml"
            )
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"config {file}: not valid YAML ({one_line(error)})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config {file}: cannot be read as UTF-8 text ({one_line(error)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config {file}: expected a mapping at the top level, got {type(loaded).__name__}"
            )
        mapping = loaded
    mapping = apply_overrides(mapping, overrides or [])
    _switch_data_source(mapping, overrides or [])
    return experiment_from_mapping(mapping)


def _switch_data_source(mapping: dict[str, Any], overrides: list[str]) -> None:
    """``--set data.manifest=FILE`` on a phantom config replaces the phantoms (and vice versa).

    Only when the overrides name one source and not the other: a file giving both stays an error.
    """
    keys = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    data = mapping.get("data")
    if not isinstance(data, dict):
        return
    sets_manifest = "data.manifest" in keys and data.get("manifest") is not None
    sets_phantoms = any(k == "data.phantoms" or k.startswith("data.phantoms.") for k in keys)
    if sets_manifest and not sets_phantoms:
        data["phantoms"] = None
    elif sets_phantoms and "data.manifest" not in keys and data.get("phantoms") is not None:
        data["manifest"] = None


def experiment_from_mapping(mapping: dict[str, Any]) -> Experiment:
    """The experiment class of ``mapping["task"]`` (default ``landmark``), filled and checked."""
    task = mapping.get("task", "landmark")
    if task not in _EXPERIMENTS:
        raise ConfigError(f"config task: expected one of {list(TASKS)}, got {task!r}")
    if "data" in mapping and isinstance(mapping["data"], dict) and "manifest" in mapping["data"]:
        mapping["data"].setdefault("phantoms", None)
    if task == "custom" and isinstance(mapping.get("agent"), dict):
        mapping["agent"].setdefault("replay", "auto")  # a plug-in env's wrappers decide: pose when possible
    experiment = from_mapping(_EXPERIMENTS[task], mapping)
    if not isinstance(experiment, CustomExperiment):  # a plug-in env's observation size is unknown here
        check_memory(experiment)
    return experiment


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 30):,.1f} GiB"


def training_bytes(experiment: Experiment, size: int | None = None) -> int:
    """A rough estimate of the memory (bytes) one training step needs at observation edge ``size``.

    Counts the float32 batch of observations and the first conv layer's activations (forward,
    backward and the target network: x3), and for ``agent.replay: sb3`` the stored uint8
    observations (this and the next of every transition).
    """
    agent = experiment.agent
    if isinstance(experiment, LandmarkExperiment):
        edge, channels = experiment.env.patch_size, experiment.env.frames
    else:
        edge, channels = experiment.env.obs_size, 2
    edge = edge if size is None else size
    voxels = channels * edge**3
    first = agent.channels[0] * math.ceil(edge / agent.strides[0]) ** 3 if agent.channels else 0
    batch = agent.batch_size + experiment.env.n_envs
    total = 3 * 4 * batch * (voxels + first)
    if agent.replay == "sb3":
        total += 2 * agent.buffer_size * voxels
    return total


def check_memory(experiment: Experiment) -> None:
    """Refuse, up front and with an estimate, an observation size that cannot fit in this machine's memory."""
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    needed = training_bytes(experiment)
    if needed <= available // 2:
        return
    key = "env.patch_size" if isinstance(experiment, LandmarkExperiment) else "env.obs_size"
    edge = (
        experiment.env.patch_size if isinstance(experiment, LandmarkExperiment) else experiment.env.obs_size
    )
    largest = edge
    while largest > 5 and training_bytes(experiment, largest) > available // 2:
        largest = int(largest * 0.9) | 1  # odd: patches are centred
    raise ConfigError(
        f"config {key}: {edge} needs about {_gib(needed)} of memory to train (batch "
        f"{experiment.agent.batch_size} + {experiment.env.n_envs} envs, replay {experiment.agent.replay}); "
        f"this machine has {_gib(available)}: use {key} <= {largest} or a smaller agent.batch_size"
    )
