"""Typed experiment configs: frozen dataclasses, one per task, that YAML only fills.

Each field has a one-line docstring (its meaning and unit). Checks that need no data run in
``__post_init__`` and raise :class:`ConfigError` naming the key, what was expected and what
came. Reading YAML and ``--set`` overrides into these classes is :mod:`agents.experiments.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

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
]

TASKS = ("landmark", "rigid", "sdm", "custom")  # custom: any Gymnasium env, agents.experiments.custom_env


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and how to fix it."""


# ---------------------------------------------------------------------- shared sections
@dataclass(frozen=True)
class PhantomDataConfig:
    """Synthetic CT phantoms, written to ``cache_dir`` once (NIfTI + .fcsv + manifest)."""

    n_train: int = 24
    """training subjects"""
    n_val: int = 4
    """validation subjects (model selection and early stopping)"""
    n_test: int = 8
    """held-out subjects for evaluate.py"""
    seed: int = 0
    """seed of the phantom generator (the splits use disjoint seeds)"""
    spacing_mm: float = 2.0
    """isotropic voxel spacing of the phantoms (mm)"""
    partial_fov: bool = False
    """crop the phantoms' field of view"""
    shape_only: bool = False
    """no pose or size changes, subjects differ by the deformation modes only (the SDM task's data)"""
    cache_dir: str = "data/phantoms"
    """folder the phantom files are written to once and read from afterwards"""


@dataclass(frozen=True)
class DataConfig:
    """Either a manifest (CSV/YAML, see :mod:`envs.data`) or generated phantoms."""

    manifest: str | None = None
    """manifest file of your own volumes (exclusive with ``phantoms``)"""
    phantoms: PhantomDataConfig | None = None
    """generated phantoms (exclusive with ``manifest``)"""
    cache_gib: float = 4.0
    """memory budget of the loaded-case cache (GiB)"""

    def __post_init__(self) -> None:
        if not self.cache_gib > 0:
            raise ConfigError(
                f"config data.cache_gib: expected a memory budget > 0 GiB, got {self.cache_gib}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, how often to validate and checkpoint, and when to stop early."""

    total_timesteps: int = 100_000
    """env steps (greedy learners: rendered samples) to train for"""
    max_minutes: float = 10.0
    """wall-clock limit of one training session (minutes)"""
    eval_every_steps: int = 10_000
    """steps between validations (and one more at the end)"""
    eval_cases: int | None = None
    """validation cases per validation (null: all of the split)"""
    patience: int = 4
    """validations in a row without a better score before training stops"""
    checkpoint_every_steps: int = 10_000
    """steps between checkpoints of the latest policy"""
    progress_bar: bool = True
    """show progress bars"""

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "eval_every_steps", "patience", "checkpoint_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config train.{name}: expected >= 1, got {getattr(self, name)}")
        if not self.max_minutes > 0:
            raise ConfigError(f"config train.max_minutes: expected > 0, got {self.max_minutes}")
        if self.eval_cases is not None and self.eval_cases < 1:
            raise ConfigError(f"config train.eval_cases: expected >= 1 or null (all), got {self.eval_cases}")


def _check_data(data: DataConfig) -> None:
    if (data.manifest is None) == (data.phantoms is None):
        raise ConfigError(
            "config data: give exactly one of data.manifest (a file) or data.phantoms "
            "(a manifest with phantom settings: drop them or set data.phantoms: null)"
        )


def _check_levels(levels: tuple[float, ...]) -> None:
    if not levels or min(levels) <= 0 or any(b >= a for a, b in pairwise(levels)):
        raise ConfigError(
            f"config env.levels_mm: expected positive spacings, coarse to fine, got {list(levels)}"
        )


def _check_steps(name: str, steps: tuple[float, ...], levels: tuple[float, ...]) -> None:
    if len(steps) != len(levels) or min(steps, default=0) <= 0:
        raise ConfigError(
            f"config env.{name}: expected one positive step per level ({len(levels)} levels), "
            f"got {list(steps)}"
        )


def _check_obs_size(obs_size: int) -> None:
    if obs_size < 9:
        raise ConfigError(f"config env.obs_size: expected >= 9 voxels (e.g. 25), got {obs_size}")


# ---------------------------------------------------------------------- landmark task
@dataclass(frozen=True)
class EnvConfig:
    """The landmark env (:class:`envs.tasks.LandmarkWorld`)."""

    landmarks: tuple[str, ...] | None = None
    """landmarks to detect, in the network's output order (null: every one of the training split)"""
    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    """pyramid spacings, coarse to fine (mm); scans of any spacing are resampled to them"""
    patch_size: int = 25
    """edge of the observed cube (voxels, odd)"""
    frames: int = 1
    """observations stacked along the channel axis"""
    preset: str | None = None
    """intensity preset (null: by modality)"""
    max_episode_steps: int = 50
    """time limit of a training episode (steps)"""
    n_envs: int = 1
    """envs stepped together (one batched forward pass acts for all)"""

    def __post_init__(self) -> None:
        # Checked here, before any data is generated or read.
        if self.patch_size < 5 or self.patch_size % 2 == 0:
            raise ConfigError(
                f"config env.patch_size: expected an odd integer >= 5 (e.g. 25), got {self.patch_size}"
            )
        _check_levels(self.levels_mm)
        if not 1 <= self.frames <= 16:
            raise ConfigError(f"config env.frames: expected 1..16, got {self.frames}")
        if self.max_episode_steps < 1 or self.n_envs < 1:
            raise ConfigError("config env.max_episode_steps and env.n_envs: expected >= 1")


@dataclass(frozen=True)
class LandmarkExperiment:
    """Everything one landmark-detection training run needs."""

    task: str = "landmark"
    """the task: landmark"""
    name: str = "landmark"
    """run name (the run folder is runs/NAME-DATE)"""
    seed: int = 0
    """seed of worlds, envs, model and augmentation"""
    data: DataConfig = field(default_factory=lambda: DataConfig(phantoms=PhantomDataConfig()))
    """where the volumes come from"""
    env: EnvConfig = field(default_factory=EnvConfig)
    """the env the agent trains in"""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """augmented variants of the training cases"""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """the agent: dqn / double (SB3) or greedy (supervised on all 6 action rewards, agents.greedy)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """training length, validation, checkpoints"""
    search: SearchConfig = field(default_factory=SearchConfig)
    """test-time search (validation and evaluation)"""

    def __post_init__(self) -> None:
        if self.task != "landmark":
            raise ConfigError(f"config task: expected 'landmark', got {self.task!r}")
        _check_data(self.data)


# ---------------------------------------------------------------------- registration tasks
@dataclass(frozen=True)
class RigidEnvConfig:
    """The rigid registration env (:class:`envs.tasks.RigidWorld`); fields are its keyword arguments."""

    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    """pyramid spacings, coarse to fine (mm)"""
    obs_size: int = 25
    """edge of the observed cubes (voxels)"""
    translation_steps_mm: tuple[float, ...] = (6.0, 2.0, 0.5)
    """translation step per level (mm)"""
    rotation_steps_deg: tuple[float, ...] = (6.0, 2.0, 0.5)
    """rotation step per level (degrees)"""
    misalignment_mm: float = 60.0
    """training starts: uniform +-this translation per axis (mm)"""
    misalignment_deg: float = 60.0
    """training starts: uniform +-this rotation per axis (degrees)"""
    contrast: str = "mixed"
    """moving copies: same, multimodal (re-contrasted) or mixed (each variant one or the other)"""
    partial_fov: float = 0.3
    """share of moving copies cropped to a 40-70 % slab"""
    pairing: str = "self"
    """self (a case with moved copies of itself) or landmarks (the next case, truth from shared landmarks)"""
    variants_per_case: int = 4
    """pairs made from each case"""
    variant_motion: tuple[float, float] = (20.0, 15.0)
    """true motion of a self pair: uniform +-mm, +-degrees per axis"""
    control_spacing_mm: float = 40.0
    """spacing of the control points the TRE is measured on (mm)"""
    observation: str = "intensity"
    """observed channels: intensity (fixed, moving), gradient (their edge maps, contrast-robust) or both"""
    frame_motion: tuple[float, float] = (0.0, 0.0)
    """self pairs: the fixed volume of each variant is the case moved by up to +-mm, +-degrees per axis"""
    frame_scale: float = 0.0
    """self pairs: ... and scaled by up to +-this per axis (0.1 = 10 %)"""
    frame_elastic_mm: float = 0.0
    """self pairs: ... and warped by a smooth elastic field of this std-dev (mm)"""
    preset: str | None = None
    """intensity preset (null: by modality)"""
    tre_threshold_mm: float = 1.0
    """SB3 training episodes end when the TRE is below this (mm)"""
    max_episode_steps: int = 50
    """time limit of an SB3 training episode (steps)"""
    n_envs: int = 8
    """envs stepped together (SB3 DQN only)"""

    def __post_init__(self) -> None:
        _check_levels(self.levels_mm)
        _check_obs_size(self.obs_size)
        _check_steps("translation_steps_mm", self.translation_steps_mm, self.levels_mm)
        _check_steps("rotation_steps_deg", self.rotation_steps_deg, self.levels_mm)
        if self.contrast not in ("same", "multimodal", "mixed"):
            raise ConfigError(
                f"config env.contrast: expected same, multimodal or mixed, got {self.contrast!r}"
            )
        if self.pairing not in ("self", "landmarks"):
            raise ConfigError(f"config env.pairing: expected self or landmarks, got {self.pairing!r}")
        if self.observation not in ("intensity", "gradient", "both"):
            raise ConfigError(
                f"config env.observation: expected intensity, gradient or both, got {self.observation!r}"
            )
        if not 0.0 <= self.partial_fov <= 1.0:
            raise ConfigError(
                f"config env.partial_fov: expected a probability in [0, 1], got {self.partial_fov}"
            )
        if self.variants_per_case < 1 or self.max_episode_steps < 1 or self.n_envs < 1:
            raise ConfigError("config env.variants_per_case, max_episode_steps and n_envs: expected >= 1")
        frame = (*self.frame_motion, self.frame_scale, self.frame_elastic_mm)
        if len(self.frame_motion) != 2 or min(frame) < 0 or self.frame_scale >= 0.5:
            raise ConfigError(
                "config env.frame_motion / frame_scale / frame_elastic_mm: expected [mm, degrees] >= 0, "
                f"a scale in [0, 0.5) and an elastic std-dev >= 0 mm, got {list(self.frame_motion)}, "
                f"{self.frame_scale}, {self.frame_elastic_mm}"
            )
        if any(frame) and self.pairing != "self":
            raise ConfigError(
                "config env.frame_motion / frame_scale / frame_elastic_mm: only with pairing: self"
            )

    def world_kwargs(self) -> dict[str, Any]:
        """The :class:`envs.tasks.RigidWorld` keyword arguments (every field but the SB3 episode ones)."""
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
            "observation": self.observation,
            "frame_motion": self.frame_motion,
            "frame_scale": self.frame_scale,
            "frame_elastic_mm": self.frame_elastic_mm,
        }


@dataclass(frozen=True)
class SdmEnvConfig:
    """The SDM registration env (:class:`envs.tasks.DeformableWorld`)."""

    levels_mm: tuple[float, ...] = (8.0, 4.0)
    """pyramid spacings, coarse to fine (mm)"""
    obs_size: int = 25
    """edge of the observed cubes (voxels)"""
    coefficient_steps: tuple[float, ...] = (0.4, 0.1)
    """mode-coefficient step per level (standard deviations)"""
    start_range: float = 2.5
    """training starts: uniform +-this per coefficient (standard deviations)"""
    control_spacing_mm: float = 30.0
    """spacing of the control points the TRE is measured on (mm)"""
    preset: str | None = None
    """intensity preset (null: by modality)"""
    tre_threshold_mm: float = 1.0
    """SB3 training episodes end when the TRE is below this (mm)"""
    max_episode_steps: int = 50
    """time limit of an SB3 training episode (steps)"""
    n_envs: int = 8
    """envs stepped together (SB3 DQN only)"""

    def __post_init__(self) -> None:
        _check_levels(self.levels_mm)
        _check_obs_size(self.obs_size)
        _check_steps("coefficient_steps", self.coefficient_steps, self.levels_mm)
        if self.max_episode_steps < 1 or self.n_envs < 1:
            raise ConfigError("config env.max_episode_steps and env.n_envs: expected >= 1")

    def world_kwargs(self) -> dict[str, Any]:
        """The :class:`envs.tasks.DeformableWorld` keyword arguments (besides model and atlas)."""
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
    """The atlas an SDM agent warps (user data)."""

    image: str
    """atlas volume"""
    labels: str | None = None
    """label map on the atlas grid (for Dice)"""
    landmarks: str | None = None
    """landmark file of the atlas"""


@dataclass(frozen=True)
class SdmConfig:
    """Where the statistical deformation model comes from: a file, or fitted.

    Without ``file`` the model is fitted to ``n_fields`` shape-only training phantoms' true
    fields (phantom data) or, for a manifest, by B-spline registration of the training volumes
    to the atlas.
    """

    file: str | None = None
    """a model saved by ``StatisticalDeformationModel.save`` (.npz)"""
    k: int = 6
    """deformation modes kept"""
    n_fields: int = 24
    """displacement fields the model is fitted to"""
    spacing_mm: float = 8.0
    """grid spacing of the model's fields (mm)"""
    atlas: AtlasFiles | None = None
    """the atlas (null: the mean phantom)"""
    samples: int = 0
    """train on this many subjects sampled from the model, exact truth (0: the data's own cases)"""

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_fields < 2 or not self.spacing_mm > 0 or self.samples < 0:
            raise ConfigError("config sdm: expected k >= 1, n_fields >= 2, spacing_mm > 0 and samples >= 0")


@dataclass(frozen=True)
class RigidExperiment:
    """Everything one rigid-registration training run needs."""

    task: str = "rigid"
    """the task: rigid"""
    name: str = "rigid"
    """run name (the run folder is runs/NAME-DATE)"""
    seed: int = 0
    """seed of worlds, envs and model"""
    data: DataConfig = field(default_factory=lambda: DataConfig(phantoms=PhantomDataConfig()))
    """where the volumes come from"""
    env: RigidEnvConfig = field(default_factory=RigidEnvConfig)
    """the world the agent trains in"""
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(algorithm="greedy"))
    """the agent (algorithm greedy: agents.greedy says which fields it reads)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """training length, validation, checkpoints"""
    search: AlignConfig = field(default_factory=AlignConfig)
    """test-time search (validation and evaluation)"""

    def __post_init__(self) -> None:
        if self.task != "rigid":
            raise ConfigError(f"config task: expected 'rigid', got {self.task!r}")
        _check_data(self.data)


@dataclass(frozen=True)
class SdmExperiment:
    """Everything one SDM (deformable) registration training run needs."""

    task: str = "sdm"
    """the task: sdm"""
    name: str = "sdm"
    """run name (the run folder is runs/NAME-DATE)"""
    seed: int = 0
    """seed of worlds, envs and model"""
    data: DataConfig = field(default_factory=lambda: DataConfig(phantoms=PhantomDataConfig(shape_only=True)))
    """where the volumes come from"""
    sdm: SdmConfig = field(default_factory=SdmConfig)
    """the statistical deformation model and its atlas"""
    env: SdmEnvConfig = field(default_factory=SdmEnvConfig)
    """the world the agent trains in"""
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(algorithm="greedy"))
    """the agent (algorithm greedy: agents.greedy says which fields it reads)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """training length, validation, checkpoints"""
    search: AlignConfig = field(default_factory=AlignConfig)
    """test-time search (validation and evaluation)"""

    def __post_init__(self) -> None:
        if self.task != "sdm":
            raise ConfigError(f"config task: expected 'sdm', got {self.task!r}")
        _check_data(self.data)
        if self.search.symmetric:
            raise ConfigError(
                "config search.symmetric: rigid runs only (an SDM agent warps its atlas, whose inverse "
                "it was never trained on); set it to false"
            )
        if self.data.manifest is not None and self.sdm.atlas is None:
            raise ConfigError(
                "config sdm.atlas: a manifest needs an atlas (sdm.atlas.image, and labels/landmarks) to warp"
            )


Experiment = LandmarkExperiment | RigidExperiment | SdmExperiment
