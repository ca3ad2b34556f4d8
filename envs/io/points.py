"""Named points as landmark files state them: coordinate systems and the RAS <-> LPS flip.

medgym's points are physical LPS millimetres; 3D Slicer's are RAS unless a file says LPS.
The flip between the two (negate x and y) is written here and nowhere else; the landmark
readers and writers of :mod:`envs.io.landmarks` and :mod:`envs.io.slicer` call it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["COORDINATE_SYSTEMS", "add_point", "from_lps", "parse_coordinate_system", "to_lps"]

COORDINATE_SYSTEMS: tuple[str, ...] = ("LPS", "RAS")

# RAS <-> LPS is its own inverse: negate x (R->L) and y (A->P).
_RAS_LPS_FLIP = np.array([-1.0, -1.0, 1.0])
# A decimal number as text files write it (NaN and inf pass here and are refused as not finite);
# Python's float() would also take "1_000" and non-ASCII digits, which no landmark tool writes.
_NUMBER = re.compile(
    r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE | re.ASCII
)


def parse_coordinate_system(value: str, path: Path, where: str) -> str:
    """``"LPS"`` or ``"RAS"`` from a file's spelling (any case); ``where`` locates it for errors."""
    system = value.strip().upper()
    if system not in COORDINATE_SYSTEMS:
        raise ValueError(
            f"{path}: {where}: unknown coordinate system {value.strip()!r}; expected one of "
            f"{', '.join(COORDINATE_SYSTEMS)}. Fix the header of the file"
        )
    return system


def to_lps(point: NDArray[np.float64], system: str) -> NDArray[np.float64]:
    """A point given in ``system`` (``"LPS"`` or ``"RAS"``, mm) as LPS mm.

    >>> to_lps(np.array([1.0, 2.0, 3.0]), "RAS").tolist()
    [-1.0, -2.0, 3.0]
    """
    return point * _RAS_LPS_FLIP if system == "RAS" else point


def from_lps(point_lps_mm: NDArray[np.float64], system: str) -> NDArray[np.float64]:
    """An LPS point in mm as ``system`` (``"LPS"`` or ``"RAS"``) states it."""
    return point_lps_mm * _RAS_LPS_FLIP if system == "RAS" else point_lps_mm


def add_point(
    points: dict[str, NDArray[np.float64]],
    seen_at: dict[str, str],
    name: str,
    coordinates: list,
    system: str,
    path: Path,
    where: str,
) -> None:
    """Validate one point and store it in LPS mm; ``where`` locates it for error messages."""
    if not name:
        raise ValueError(f"{path}: {where}: empty landmark name; expected a non-empty name or label")
    if name in points:
        raise ValueError(
            f"{path}: {where}: duplicate landmark name {name!r} (first at {seen_at[name]}); expected "
            "unique names. Rename or delete one of them"
        )
    try:
        point = np.array([_number(value) for value in coordinates], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"{path}: {where}: coordinates {coordinates} of {name!r} are not all numbers; expected "
            "three numbers in mm"
        ) from None
    if point.shape != (3,):
        raise ValueError(f"{path}: {where}: expected 3 coordinates for {name!r}, got {len(coordinates)}")
    if not np.all(np.isfinite(point)):
        raise ValueError(
            f"{path}: {where}: coordinates of {name!r} are not finite ({point.tolist()}); expected three "
            "finite numbers in mm. Place the point or remove it from the file"
        )
    points[name] = to_lps(point, system)
    seen_at[name] = where


def _number(value: object) -> float:
    """A coordinate: a JSON number or the text of a decimal number; ``ValueError`` otherwise."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # OverflowError for integers beyond float range
    raise ValueError(f"not a number: {value!r}")
