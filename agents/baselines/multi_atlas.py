"""Multi-atlas landmark detection: several atlas transfers fused by a per-landmark median.

All points are LPS millimetres (see :mod:`agents.baselines.atlas`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from agents.baselines.atlas import AtlasConfig, AtlasResult, atlas_transfer
from agents.baselines.sitk_common import check_volume
from envs.core import Volume

__all__ = ["MultiAtlasResult", "multi_atlas_transfer"]


@dataclass(frozen=True)
class MultiAtlasResult:
    """Per-landmark median of several atlas transfers.

    Args:
        landmarks: name -> coordinate-wise median LPS point in mm, over the atlases that
            have that landmark and registered successfully.
        spread_mm: name -> median distance (mm) of the single-atlas estimates from the fused
            point; a cheap confidence measure (large = atlases disagree).
        per_atlas: the single-atlas result of each atlas, ``None`` where it failed.
        failures: ``(atlas index, error message)`` for each atlas that failed.
        seconds: wall-clock time of all transfers.
    """

    landmarks: dict[str, NDArray[np.float64]]
    spread_mm: dict[str, float]
    per_atlas: list[AtlasResult | None]
    failures: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


def multi_atlas_transfer(
    atlases: Sequence[tuple[Volume, Mapping[str, ArrayLike]]],
    target: Volume,
    config: AtlasConfig | None = None,
) -> MultiAtlasResult:
    """Transfer landmarks from several atlases and fuse them by coordinate-wise median.

    The median ignores a minority of failed registrations (e.g. one atlas flipped or
    mis-aligned), which is why it is the common fusion rule for point estimates.

    Args:
        atlases: ``(atlas volume, landmarks name -> LPS mm)`` pairs; landmark sets may differ.
        target: the volume to find the landmarks in.
        config: registration settings shared by all atlases (``None``: ``AtlasConfig()``).

    Returns:
        A :class:`MultiAtlasResult`. An atlas whose registration raises ``ValueError`` is
        recorded in ``failures`` and left out of the median.

    Raises:
        ValueError: no atlases, or every atlas failed (the first failure is chained).
    """
    start = time.perf_counter()
    config = AtlasConfig() if config is None else config
    if len(atlases) == 0:
        raise ValueError("multi_atlas_transfer: need at least one (atlas, landmarks) pair, got none")
    target = check_volume(target, "target")
    per_atlas: list[AtlasResult | None] = []
    failures: list[tuple[int, str]] = []
    first_error: ValueError | None = None
    for index, (atlas, landmarks) in enumerate(atlases):
        try:
            per_atlas.append(atlas_transfer(atlas, landmarks, target, config=config))
        except ValueError as error:
            per_atlas.append(None)
            failures.append((index, str(error)))
            first_error = first_error or error
    successes = [result for result in per_atlas if result is not None]
    if not successes:
        raise ValueError(
            f"multi_atlas_transfer: all {len(atlases)} atlas registrations failed; first: {first_error}"
        ) from first_error

    fused: dict[str, NDArray[np.float64]] = {}
    spread: dict[str, float] = {}
    names = sorted({name for result in successes for name in result.landmarks})
    for name in names:
        estimates = np.stack([r.landmarks[name] for r in successes if name in r.landmarks])
        fused[name] = np.median(estimates, axis=0)
        spread[name] = float(np.median(np.linalg.norm(estimates - fused[name], axis=1)))
    return MultiAtlasResult(
        landmarks=fused,
        spread_mm=spread,
        per_atlas=per_atlas,
        failures=failures,
        seconds=time.perf_counter() - start,
    )
