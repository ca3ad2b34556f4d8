"""Typed experiment configs: frozen dataclasses that YAML only fills.

An unknown key is an error that names it (with the keys that would have been accepted);
a value of the wrong type names the key and the expected type. ``--set a.b=value`` style
overrides are applied to the mapping before it is checked.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agents.dqn import AgentConfig
from agents.search import AlignConfig, SearchConfig
from envs.data import AugmentConfig

__all__ = [
    "TASKS",
    "AtlasFiles",
    "ConfigError",
    "DataConfig",
    "EnvConfig",
    "Experiment",
    "LandmarkExperiment",
    "PhantomDataConfig",
    "RigidEnvConfig",
    "RigidExperiment",
    "SdmConfig",
    "SdmEnvConfig",
    "SdmExperiment",
    "TrainConfig",
    "apply_overrides",
    "experiment_from_mapping",
    "from_mapping",
    "load_experiment",
    "to_mapping",
]

TASKS = ("landmark", "rigid", "sdm")

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and how to fix it."""


@dataclass(frozen=True)
class PhantomDataConfig:
    """Synthetic CT phantoms written to ``cache_dir`` once (NIfTI + .fcsv + manifest).

    ``shape_only`` drops pose and size changes (subjects differ only by the deformation
    modes): the SDM task's data, where rigid pose is the rigid agent's job.
    """

    n_train: int = 24
    n_val: int = 4
    n_test: int = 8
    seed: int = 0
    spacing_mm: float = 2.0
    partial_fov: bool = False
    shape_only: bool = False
    cache_dir: str = "data/phantoms"


@dataclass(frozen=True)
class DataConfig:
    """Either a manifest (CSV/YAML, see envs/dataset.py) or generated phantoms."""

    manifest: str | None = None
    phantoms: PhantomDataConfig | None = None
    cache_gib: float = 4.0

    def __post_init__(self) -> None:
        if not self.cache_gib > 0:
            raise ConfigError(
                f"config data.cache_gib: expected a memory budget > 0 GiB, got {self.cache_gib}"
            )


@dataclass(frozen=True)
class EnvConfig:
    landmarks: tuple[str, ...] | None = None
    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    patch_size: int = 25
    frames: int = 1
    preset: str | None = None
    max_episode_steps: int = 50
    n_envs: int = 1

    def __post_init__(self) -> None:
        # Checked here, before any data is generated or read.
        if self.patch_size < 5 or self.patch_size % 2 == 0:
            raise ConfigError(
                f"config env.patch_size: expected an odd integer >= 5 (e.g. 25), got {self.patch_size}"
            )
        levels = self.levels_mm
        if not levels or min(levels) <= 0 or any(b >= a for a, b in pairwise(levels)):
            raise ConfigError(
                f"config env.levels_mm: expected positive spacings, coarse to fine, got {list(levels)}"
            )
        if not 1 <= self.frames <= 16:
            raise ConfigError(f"config env.frames: expected 1..16, got {self.frames}")
        if self.max_episode_steps < 1 or self.n_envs < 1:
            raise ConfigError("config env.max_episode_steps and env.n_envs: expected >= 1")


@dataclass(frozen=True)
class TrainConfig:
    total_timesteps: int = 100_000
    max_minutes: float = 10.0
    eval_every_steps: int = 10_000
    eval_cases: int | None = None
    patience: int = 4
    checkpoint_every_steps: int = 10_000
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "eval_every_steps", "patience", "checkpoint_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config train.{name}: expected >= 1, got {getattr(self, name)}")
        if not self.max_minutes > 0:
            raise ConfigError(f"config train.max_minutes: expected > 0, got {self.max_minutes}")
        if self.eval_cases is not None and self.eval_cases < 1:
            raise ConfigError(f"config train.eval_cases: expected >= 1 or null (all), got {self.eval_cases}")


@dataclass(frozen=True)
class LandmarkExperiment:
    """Everything one landmark-detection training run needs."""

    task: str = "landmark"
    name: str = "landmark"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(phantoms=PhantomDataConfig()))
    env: EnvConfig = field(default_factory=EnvConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        if self.task != "landmark":
            raise ConfigError(f"config task: expected 'landmark', got {self.task!r}")
        if (self.data.manifest is None) == (self.data.phantoms is None):
            raise ConfigError("config data: give exactly one of data.manifest (a file) or data.phantoms")


def _check_steps(name: str, steps: tuple[float, ...], levels: tuple[float, ...]) -> None:
    if len(steps) != len(levels) or min(steps, default=0) <= 0:
        raise ConfigError(
            f"config env.{name}: expected one positive step per level ({len(levels)} levels), "
            f"got {list(steps)}"
        )


def _check_levels(levels: tuple[float, ...], obs_size: int) -> None:
    if not levels or min(levels) <= 0 or any(b >= a for a, b in pairwise(levels)):
        raise ConfigError(
            f"config env.levels_mm: expected positive spacings, coarse to fine, got {list(levels)}"
        )
    if obs_size < 9:
        raise ConfigError(f"config env.obs_size: expected >= 9 voxels (e.g. 25), got {obs_size}")


@dataclass(frozen=True)
class RigidEnvConfig:
    """The rigid registration env (see envs/registration.py ``RigidWorld``)."""

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    obs_size: int = 25
    translation_steps_mm: tuple[float, ...] = (6.0, 2.0, 0.5)
    rotation_steps_deg: tuple[float, ...] = (6.0, 2.0, 0.5)
    misalignment_mm: float = 60.0
    misalignment_deg: float = 60.0
    contrast: str = "mixed"
    partial_fov: float = 0.3
    pairing: str = "self"
    variants_per_case: int = 4
    variant_motion: tuple[float, float] = (20.0, 15.0)
    control_spacing_mm: float = 40.0
    preset: str | None = None
    tre_threshold_mm: float = 1.0
    max_episode_steps: int = 50
    n_envs: int = 8

    def __post_init__(self) -> None:
        _check_levels(self.levels_mm, self.obs_size)
        _check_steps("translation_steps_mm", self.translation_steps_mm, self.levels_mm)
        _check_steps("rotation_steps_deg", self.rotation_steps_deg, self.levels_mm)
        if self.contrast not in ("same", "multimodal", "mixed"):
            raise ConfigError(
                f"config env.contrast: expected same, multimodal or mixed, got {self.contrast!r}"
            )
        if self.pairing not in ("self", "landmarks"):
            raise ConfigError(f"config env.pairing: expected self or landmarks, got {self.pairing!r}")
        if not 0.0 <= self.partial_fov <= 1.0:
            raise ConfigError(
                f"config env.partial_fov: expected a probability in [0, 1], got {self.partial_fov}"
            )
        if self.variants_per_case < 1 or self.max_episode_steps < 1 or self.n_envs < 1:
            raise ConfigError("config env.variants_per_case, max_episode_steps and n_envs: expected >= 1")

    def world_kwargs(self) -> dict[str, Any]:
        return {
            "levels_mm": self.levels_mm,
            "obs_size": self.obs_size,
            "translation_steps_mm": self.translation_steps_mm,
            "rotation_steps_deg": self.rotation_steps_deg,
            "misalignment_mm": self.misalignment_mm,
            "misalignment_deg": self.misalignment_deg,
            "preset": self.preset,
            "contrast": self.contrast,
            "partial_fov": self.partial_fov,
            "pairing": self.pairing,
            "variants_per_case": self.variants_per_case,
            "variant_motion": self.variant_motion,
            "control_spacing_mm": self.control_spacing_mm,
        }


@dataclass(frozen=True)
class SdmEnvConfig:
    """The SDM registration env (see envs/deformation.py ``DeformableWorld``)."""

    levels_mm: tuple[float, ...] = (8.0, 4.0)
    obs_size: int = 25
    coefficient_steps: tuple[float, ...] = (0.4, 0.1)
    start_range: float = 2.5
    control_spacing_mm: float = 30.0
    preset: str | None = None
    tre_threshold_mm: float = 1.0
    max_episode_steps: int = 50
    n_envs: int = 8

    def __post_init__(self) -> None:
        _check_levels(self.levels_mm, self.obs_size)
        _check_steps("coefficient_steps", self.coefficient_steps, self.levels_mm)
        if self.max_episode_steps < 1 or self.n_envs < 1:
            raise ConfigError("config env.max_episode_steps and env.n_envs: expected >= 1")

    def world_kwargs(self) -> dict[str, Any]:
        return {
            "levels_mm": self.levels_mm,
            "obs_size": self.obs_size,
            "coefficient_steps": self.coefficient_steps,
            "start_range": self.start_range,
            "control_spacing_mm": self.control_spacing_mm,
            "preset": self.preset,
        }


@dataclass(frozen=True)
class AtlasFiles:
    """The atlas an SDM agent warps (user data): image, optional label map and landmarks."""

    image: str
    labels: str | None = None
    landmarks: str | None = None


@dataclass(frozen=True)
class SdmConfig:
    """Where the statistical deformation model comes from.

    ``file``: a model saved by ``StatisticalDeformationModel.save`` (``.npz``). Without it the
    model is fitted: to ``n_fields`` shape-only training phantoms' true fields (phantom data),
    or, for a manifest, by B-spline registration of the training volumes to the atlas.
    """

    file: str | None = None
    k: int = 6
    n_fields: int = 24
    spacing_mm: float = 8.0
    atlas: AtlasFiles | None = None

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_fields < 2 or not self.spacing_mm > 0:
            raise ConfigError("config sdm: expected k >= 1, n_fields >= 2 and spacing_mm > 0")


@dataclass(frozen=True)
class RigidExperiment:
    """Everything one rigid-registration training run needs."""

    task: str = "rigid"
    name: str = "rigid"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(phantoms=PhantomDataConfig()))
    env: RigidEnvConfig = field(default_factory=RigidEnvConfig)
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(algorithm="greedy"))
    train: TrainConfig = field(default_factory=TrainConfig)
    search: AlignConfig = field(default_factory=AlignConfig)

    def __post_init__(self) -> None:
        if self.task != "rigid":
            raise ConfigError(f"config task: expected 'rigid', got {self.task!r}")
        if (self.data.manifest is None) == (self.data.phantoms is None):
            raise ConfigError("config data: give exactly one of data.manifest (a file) or data.phantoms")


@dataclass(frozen=True)
class SdmExperiment:
    """Everything one SDM (deformable) registration training run needs."""

    task: str = "sdm"
    name: str = "sdm"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(phantoms=PhantomDataConfig(shape_only=True)))
    sdm: SdmConfig = field(default_factory=SdmConfig)
    env: SdmEnvConfig = field(default_factory=SdmEnvConfig)
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(algorithm="greedy"))
    train: TrainConfig = field(default_factory=TrainConfig)
    search: AlignConfig = field(default_factory=AlignConfig)

    def __post_init__(self) -> None:
        if self.task != "sdm":
            raise ConfigError(f"config task: expected 'sdm', got {self.task!r}")
        if (self.data.manifest is None) == (self.data.phantoms is None):
            raise ConfigError("config data: give exactly one of data.manifest (a file) or data.phantoms")
        if self.data.manifest is not None and self.sdm.atlas is None:
            raise ConfigError(
                "config sdm.atlas: a manifest needs an atlas (sdm.atlas.image, and labels/landmarks) to warp"
            )


Experiment = LandmarkExperiment | RigidExperiment | SdmExperiment
_EXPERIMENTS: dict[str, type] = {
    "landmark": LandmarkExperiment,
    "rigid": RigidExperiment,
    "sdm": SdmExperiment,
}


# ---------------------------------------------------------------------- mapping <-> dataclass
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
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
    """Build dataclass ``cls`` from a (YAML) mapping; unknown keys and wrong types raise."""
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
    """A plain (YAML-ready) mapping of a config dataclass."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_mapping(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple):
        return [to_mapping(item) for item in config]
    return config


def apply_overrides(mapping: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested mapping."""
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
    """Read a YAML experiment, apply overrides, check every key and type."""
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
