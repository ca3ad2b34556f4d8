"""One subject of a dataset: :class:`Case` (where its data come from) and :class:`Subject` (loaded).

Landmarks are physical LPS millimetres; volumes are :class:`envs.core.Volume` (voxels ``(z, y, x)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.core import Volume

MODALITIES: tuple[str, ...] = ("ct", "mr")


@dataclass(frozen=True)
class Case:
    """One subject of a dataset: where its files are (or which phantom seed makes it)."""

    case_id: str
    split: str
    image: Path | None = None
    landmarks: Path | None = None
    modality: str = "ct"
    phantom_seed: int | None = None
    labels: Path | None = None

    @property
    def is_phantom(self) -> bool:
        return self.phantom_seed is not None


@dataclass(frozen=True, repr=False)
class Subject:
    """A loaded case: raw volume (e.g. HU), landmarks in LPS mm, optional label map."""

    case: Case
    volume: Volume
    landmarks: dict[str, np.ndarray]
    labels: Volume | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.volume.nbytes + (self.labels.nbytes if self.labels is not None else 0)

    def __repr__(self) -> str:
        return (
            f"Subject({self.case.case_id!r}, split={self.case.split!r}, {self.volume!r}, "
            f"landmarks={list(self.landmarks)})"
        )
