"""What every task shares: argument checks, the world over a split's variants, episode plumbing.

A *world* (:class:`TaskWorld`) holds one split's cases and their variants (a case plus a
seeded augmentation or motion: ``variant_table`` rows ``(case index, variant)``), built lazily
into pyramids of levels in mm (coarse to fine) and cached by the dataset. An *env* runs
episodes on a world: the helpers here parse its ``reset`` options, pick the level, pack its
int32 pose (from which the world rebuilds observations exactly) and detect oscillation.
"""

from __future__ import annotations

import operator
import warnings
from collections import deque
from collections.abc import Callable, Collection, Hashable, Sequence
from itertools import pairwise
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike, NDArray

from envs.core import PRESETS, Volume, check_image, finest_level_warning, preset_for
from envs.data import Dataset, Subject

__all__ = [
    "OSCILLATION_WINDOW",
    "RENDER_MODES",
    "SCHEDULES",
    "OscillationTracker",
    "TaskEnv",
    "TaskWorld",
    "check_action",
    "check_levels",
    "check_preset",
    "check_render_mode",
    "check_schedule",
    "pack_pose",
    "reset_level",
    "reset_options",
    "resolve_dataset",
]

RENDER_MODES = ("rgb_array",)
# "random": training episodes at a random level; "coarse": the full coarse-to-fine search.
SCHEDULES = ("random", "coarse")
# A revisit of one of the last this-many positions is an oscillation.
OSCILLATION_WINDOW = 4


# ---------------------------------------------------------------------- argument checks
def check_action(action: Any, n_actions: int) -> int:
    """``action`` as a Python int after checking it is an integer in ``0..n_actions-1``.

    The envs' step calls this only when their fast lookup fails, so a valid action costs nothing.
    """
    try:
        value = operator.index(action)  # ints and numpy integers (also 0-d integer arrays)
    except TypeError:
        value = None
    if value is None or not 0 <= value < n_actions:
        raise ValueError(f"step: expected an integer action in 0..{n_actions - 1}, got {action!r}")
    return value


def check_levels(levels_mm: Sequence[float]) -> tuple[float, ...]:
    """``levels_mm`` as floats, after checking they are positive and go from coarse to fine."""
    levels = tuple(float(s) for s in levels_mm)
    if not levels or any(s <= 0 for s in levels) or any(b >= a for a, b in pairwise(levels)):
        raise ValueError(f"levels_mm: expected positive spacings from coarse to fine, got {list(levels_mm)}")
    return levels


def check_preset(preset: str | None) -> None:
    """Raise unless ``preset`` names an intensity preset or is ``None`` (pick by modality)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: expected 'ct', 'ct_soft', 'mr' or None (by modality), got {preset!r}")


def check_render_mode(render_mode: str | None) -> None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected 'random' or 'coarse', got {schedule!r}")


def resolve_dataset(dataset: Dataset | str | None, default: Callable[[], Dataset]) -> Dataset:
    """``dataset`` itself, the dataset of a manifest path, or ``default()`` for ``None``."""
    if dataset is None:
        return default()
    if isinstance(dataset, Dataset):
        return dataset
    return Dataset.from_manifest(dataset)


# ---------------------------------------------------------------------- the shared world
class TaskWorld:
    """One split's cases, ``variants_per_case`` variants of each, and levels coarse to fine.

    Args:
        dataset: the dataset; its cache holds what the world derives from each case.
        split: which split's cases to use.
        levels_mm: isotropic level spacings, coarse to fine (checked).
        preset: intensity preset, or ``None`` to pick it from each case's modality (checked).
        variants_per_case: rows per case in :attr:`variant_table` (variant 0 is the original).
        seed: base seed of the variants (fixed per world, so poses stay valid).
        case_ids: a subset of the split's cases, or ``None`` for all.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        levels_mm: Sequence[float],
        preset: str | None,
        variants_per_case: int,
        seed: int,
        case_ids: Sequence[str] | None,
    ) -> None:
        self.levels_mm = check_levels(levels_mm)
        check_preset(preset)
        self.dataset = dataset
        self.split = split
        self.cases = dataset.select(split, case_ids)
        self.preset = preset
        self.seed = int(seed)
        self.variant_table: NDArray[np.int64] = np.array(
            [(case, variant) for case in range(len(self.cases)) for variant in range(variants_per_case)],
            dtype=np.int64,
        )

    @property
    def n_levels(self) -> int:
        return len(self.levels_mm)

    @property
    def n_variants(self) -> int:
        return len(self.variant_table)

    def find_variant(self, case_id: str, variant: int, what: str = "variant") -> int:
        """The :attr:`variant_table` row of ``case_id``'s ``variant``; ``KeyError`` if absent."""
        for index, (case_index, row_variant) in enumerate(self.variant_table):
            if self.cases[case_index].case_id == case_id and row_variant == variant:
                return index
        raise KeyError(f"split {self.split!r} has no case {case_id!r} ({what} {variant})")

    def preset_for(self, subject: Subject) -> str:
        """The world's preset, or the default preset of the subject's modality."""
        return self.preset or preset_for(subject.case.modality)

    @property
    def edge_vox(self) -> int | None:
        """Edge of the observed cube in voxels (subclasses); ``None`` when the world has none."""
        return None

    def check_resolution(self, volume: Volume, what: str) -> None:
        """Raise if ``volume`` is degenerate (:func:`envs.core.check_image`: constant, or too small
        for the levels or the observed cube). Any spacing is taken (resampled to the levels); a
        scan much coarser than the finest level gets a ``UserWarning``
        (:func:`envs.core.finest_level_warning`)."""
        check_image(volume, what, self.levels_mm, self.edge_vox)
        message = finest_level_warning(volume, what, self.levels_mm)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)


# ---------------------------------------------------------------------- episode plumbing
class TaskEnv(gym.Env):
    """What every task env shares: its world, its render modes and its int32 pose.

    Subclasses set ``self.world`` (a :class:`TaskWorld` with ``observations_from_poses``) and
    keep ``self._pose`` current.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": 8}
    world: Any
    _pose: NDArray[np.int32]

    @property
    def levels_mm(self) -> tuple[float, ...]:
        return self.world.levels_mm

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        """Observations rebuilt exactly from poses ``(B, pose_dim)`` (a replay buffer stores poses)."""
        return self.world.observations_from_poses(poses)

    def pose(self) -> NDArray[np.int32]:
        """The current state as an int32 pose (layout: the env's Info section)."""
        return self._pose.copy()


def reset_options(options: dict[str, Any] | None, allowed: Collection[str]) -> dict[str, Any]:
    """A copy of ``reset``'s ``options``; ``ValueError`` naming any option not in ``allowed``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"reset: unknown option(s) {unknown}; expected {', '.join(allowed)}")
    return options


def reset_level(options: dict[str, Any], n_levels: int, schedule: str, rng: np.random.Generator) -> int:
    """The episode's level: ``options["level"]`` (checked), else 0 for ``"coarse"``, else drawn."""
    if "level" in options:
        level = int(options["level"])
        if not 0 <= level < n_levels:
            raise ValueError(f"reset: level must be in 0..{n_levels - 1}, got {level}")
        return level
    return 0 if schedule == "coarse" else int(rng.integers(n_levels))


def pack_pose(header: Sequence[int], *vectors: ArrayLike) -> NDArray[np.int32]:
    """An int32 pose: ``header`` (variant index, level, ...) followed by the integer ``vectors``.

    >>> pack_pose((4, 1), np.array([7, 8, 9]), np.array([6, 8, 9])).tolist()
    [4, 1, 7, 8, 9, 6, 8, 9]
    """
    # One concatenation straight into int32 (no astype copy): this runs on every env step.
    return np.concatenate([header, *vectors], dtype=np.int32, casting="unsafe")


class OscillationTracker:
    """The last :data:`OSCILLATION_WINDOW` positions of an episode (any hashable key)."""

    __slots__ = ("_recent",)

    def __init__(self) -> None:
        self._recent: deque[Hashable] = deque(maxlen=OSCILLATION_WINDOW)

    def start(self, key: Hashable) -> None:
        """Forget the history (a new episode or level) and remember ``key``."""
        self._recent = deque([key], maxlen=OSCILLATION_WINDOW)

    def visit(self, key: Hashable) -> bool:
        """Remember ``key``; whether it was one of the last positions (an oscillation)."""
        revisit = key in self._recent
        self._recent.append(key)
        return revisit
