"""From YAML (and ``--set key=value`` overrides) to the typed experiment configs, and back.

An unknown key is an error that names it (with the keys that would have been accepted); a
value of the wrong type names the key and the expected type. Overrides are applied to the
mapping before it is checked. :func:`to_mapping` gives the plain form written to a run folder.
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["apply_overrides", "experiment_from_mapping", "from_mapping", "load_experiment", "to_mapping"]

T = TypeVar("T")

_EXPERIMENTS: dict[str, type] = {
    "landmark": LandmarkExperiment,
    "rigid": RigidExperiment,
    "sdm": SdmExperiment,
}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (the field's annotation); ``key`` names it in errors."""
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
        if "=" not in override:
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
        node[keys[-1]] = yaml.safe_load(raw)
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
            raise ConfigError(f"config {file}: not valid YAML ({error})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config {file}: expected a mapping at the top level, got {type(loaded).__name__}"
            )
        mapping = loaded
    mapping = apply_overrides(mapping, overrides or [])
    return experiment_from_mapping(mapping)


def experiment_from_mapping(mapping: dict[str, Any]) -> Experiment:
    """The experiment class of ``mapping["task"]`` (default ``landmark``), filled and checked."""
    task = mapping.get("task", "landmark")
    if task not in _EXPERIMENTS:
        raise ConfigError(f"config task: expected one of {list(TASKS)}, got {task!r}")
    if "data" in mapping and isinstance(mapping["data"], dict) and "manifest" in mapping["data"]:
        mapping["data"].setdefault("phantoms", None)
    return from_mapping(_EXPERIMENTS[task], mapping)
