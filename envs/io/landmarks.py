"""Landmark files: ``read_landmarks`` / ``write_landmarks`` by suffix, and the CSV dialects.

Points are ``{name: point}`` with each point of shape ``(3,)`` in LPS mm. Slicer formats are
in :mod:`envs.io.slicer`, the RAS <-> LPS flip in :mod:`envs.io.points`; files are written
through :mod:`envs.io.atomic`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from envs.io.atomic import atomic_write_text
from envs.io.common import require_file, require_suffix
from envs.io.points import add_point, from_lps, parse_coordinate_system
from envs.io.slicer import format_fcsv, format_mrk_json, parse_fcsv, parse_mrk_json

__all__ = ["LANDMARK_SUFFIXES", "read_landmarks", "write_landmarks"]

LANDMARK_SUFFIXES: tuple[str, ...] = (".csv", ".fcsv", ".mrk.json")


def read_landmarks(path: str | Path) -> dict[str, NDArray[np.float64]]:
    """Read named points from a ``.csv``, Slicer ``.fcsv`` or Slicer ``.mrk.json`` file.

    Args:
        path: the landmark file; its suffix selects the format.

    Returns:
        ``{name: point}`` in file order; each point has shape ``(3,)``, dtype float64, in LPS mm.

    Formats:
        * CSV: a header row, then one row per point. The name column is ``name`` or
          ``label``. Coordinates come from columns ``x_lps,y_lps,z_lps`` or
          ``x_ras,y_ras,z_ras`` (Slicer's export ``l,p,s`` / ``r,a,s`` too), or from plain
          ``x,y,z`` after a comment line ``# coordinate_system = LPS`` (or ``RAS``). Lines
          starting with ``#`` are comments; column names are case-insensitive; rows whose
          ``defined`` column is false (Slicer export of unplaced points) are skipped.
        * ``.fcsv``: every Slicer version. ``# CoordinateSystem = RAS|LPS|0|1`` (0 = RAS,
          1 = LPS, no line = RAS); ``# columns = ...`` locates x, y, z and label when
          present, else the standard positions are used; extra trailing columns (Slicer 5.2+)
          are ignored; an empty label falls back to the id.
        * ``.mrk.json``: all control points of all ``Fiducial`` markups; ``coordinateSystem``
          defaults to LPS, ``coordinateUnits`` to mm (``um`` is converted); points whose
          ``positionStatus`` is not ``defined`` (undefined, preview) are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported suffix; no coordinate system stated (CSV); unknown coordinate
            system; no points; duplicate names; malformed rows (with their line number);
            non-numeric or non-finite coordinates.
    """
    path = Path(path)
    suffix = require_suffix(path, LANDMARK_SUFFIXES, "landmark")
    require_file(path, "landmark")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets like to prepend a BOM
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not a UTF-8 text file ({error}); expected a {suffix} landmark file"
        ) from None
    if suffix == ".mrk.json":
        points = parse_mrk_json(text, path)
    elif suffix == ".fcsv":
        points = parse_fcsv(text, path)
    else:
        points = _parse_csv(text, path)
    if not points:
        raise ValueError(
            f"{path}: no landmarks in the file; expected at least one point. Check that the right file "
            "was given and that its points are placed (defined)"
        )
    return points


def write_landmarks(
    landmarks: Mapping[str, NDArray[np.float64]], path: str | Path, coordinate_system: str | None = None
) -> Path:
    """Write named LPS points atomically; the format follows the suffix of ``path``.

    Args:
        landmarks: ``{name: point}``, each point 3 finite numbers in LPS mm; order is kept.
        path: target ending in one of :data:`LANDMARK_SUFFIXES`; parent folders are created.
        coordinate_system: ``"LPS"`` or ``"RAS"`` for the numbers in the file. Default:
            RAS for ``.fcsv`` (read correctly by every Slicer version), LPS for ``.mrk.json``
            and ``.csv``. CSV columns are ``name,x_lps,y_lps,z_lps`` (or ``x_ras``...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unsupported suffix or coordinate system, no landmarks, an empty name or a
            point that is not 3 finite numbers.
    """
    path = Path(path)
    suffix = require_suffix(path, LANDMARK_SUFFIXES, "landmark")
    if coordinate_system is None:
        system = "RAS" if suffix == ".fcsv" else "LPS"
    else:
        system = parse_coordinate_system(coordinate_system, path, "coordinate_system argument")
    if not landmarks:
        raise ValueError(f"{path}: no landmarks to write; expected at least one name -> point")
    rows: list[tuple[str, list[float]]] = []
    for name, point in landmarks.items():
        vector = np.asarray(point, dtype=np.float64)
        if (
            not isinstance(name, str)
            or not name.strip()
            or name != name.strip()
            or name.splitlines() != [name]
        ):
            raise ValueError(
                f"{path}: landmark name {name!r} is empty, spans lines or has leading/trailing spaces; "
                "expected one line of text (readers strip spaces, so the name would change)"
            )
        if vector.shape != (3,) or not np.all(np.isfinite(vector)):
            raise ValueError(
                f"{path}: landmark {name!r}: expected 3 finite LPS coordinates in mm, got {vector.tolist()}"
            )
        rows.append((name, from_lps(vector, system).tolist()))
    if suffix == ".mrk.json":
        text = format_mrk_json(rows, system)
    elif suffix == ".fcsv":
        text = format_fcsv(rows, system)
    else:
        text = _format_csv(rows, system)
    return atomic_write_text(path, text)


_CSV_COORDINATE_COLUMNS = {
    ("x_lps", "y_lps", "z_lps"): "LPS",
    ("x_ras", "y_ras", "z_ras"): "RAS",
    # Slicer's "Export control points to CSV" names the axes by their positive direction.
    ("l", "p", "s"): "LPS",
    ("r", "a", "s"): "RAS",
}
_CSV_COMMENT_SYSTEM = re.compile(r"^#\s*coordinate[_ ]?system\s*[=:]\s*(\S+)\s*$", re.IGNORECASE)


def _parse_csv(text: str, path: Path) -> dict[str, NDArray[np.float64]]:
    comment_system = None
    header: list[str] | None = None
    header_line = 0
    points: dict[str, NDArray[np.float64]] = {}
    seen_at: dict[str, str] = {}
    lines = io.StringIO(text).readlines()
    rows = csv.reader(lines)
    start = 0
    for row in _csv_rows(rows, path):
        line = rows.line_num
        start, first = line, lines[start]  # the row's first physical line: a quoted "#..." is a name
        if not any(cell.strip() for cell in row):
            continue
        if first.lstrip().startswith("#"):
            match = _CSV_COMMENT_SYSTEM.match(",".join(row).strip())
            if match:
                comment_system = parse_coordinate_system(match.group(1), path, f"line {line}")
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            header_line = line
            repeated = sorted({column for column in header if header.count(column) > 1})
            if repeated:
                raise ValueError(
                    f"{path}: line {line}: header repeats column(s) {repeated}; expected each column once"
                )
            name_index, coordinate_indices, system = _csv_columns(header, comment_system, path, line)
            defined_index = header.index("defined") if "defined" in header else None
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {line}: expected {len(header)} columns as in the header on line "
                f"{header_line} ({','.join(header)}), got {len(row)}. Fix the row (quote names that "
                "contain commas)"
            )
        if defined_index is not None and row[defined_index].strip().lower() in ("false", "0"):
            continue  # Slicer exports unplaced points with placeholder coordinates
        add_point(
            points, seen_at, row[name_index].strip(), [row[i].strip() for i in coordinate_indices],
            system, path, f"line {line}",
        )  # fmt: skip
    if header is None:
        raise ValueError(
            f"{path}: no header row; expected e.g. 'name,x_lps,y_lps,z_lps' then one row per point"
        )
    return points


def _csv_rows(rows: Iterator[list[str]], path: Path) -> Iterator[list[str]]:
    """The rows of a ``csv.reader``, its errors (NUL bytes, unclosed quotes) as ``ValueError``."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            raise ValueError(
                f"{path}: line {getattr(rows, 'line_num', '?')}: unreadable CSV ({error}); expected "
                "comma-separated text. Fix the row"
            ) from None
        yield row


def _csv_columns(
    header: list[str], comment_system: str | None, path: Path, line: int
) -> tuple[int, list[int], str]:
    """Locate the name and coordinate columns and the coordinate system of a CSV header."""
    names = [column for column in ("name", "label") if column in header]
    if not names:
        raise ValueError(
            f"{path}: line {line}: header {header} has no 'name' (or 'label') column; expected e.g. "
            "'name,x_lps,y_lps,z_lps'"
        )
    for columns, system in _CSV_COORDINATE_COLUMNS.items():
        if all(column in header for column in columns):
            if comment_system is not None and comment_system != system:
                raise ValueError(
                    f"{path}: line {line}: the comment says {comment_system} but the columns "
                    f"{','.join(columns)} say {system}; expected them to agree. Fix one of them"
                )
            return header.index(names[0]), [header.index(column) for column in columns], system
    if all(column in header for column in ("x", "y", "z")):
        if comment_system is None:
            raise ValueError(
                f"{path}: line {line}: columns x,y,z do not say whether points are LPS or RAS; expected "
                "the columns named x_lps,y_lps,z_lps (or x_ras,y_ras,z_ras), or a comment line "
                "'# coordinate_system = LPS' (or RAS) before the header"
            )
        return header.index(names[0]), [header.index(column) for column in ("x", "y", "z")], comment_system
    raise ValueError(
        f"{path}: line {line}: header {header} has no coordinate columns; expected x_lps,y_lps,z_lps or "
        "x_ras,y_ras,z_ras (or x,y,z after '# coordinate_system = LPS')"
    )


def _format_csv(rows: list[tuple[str, list[float]]], system: str) -> str:
    """``name,x_lps,y_lps,z_lps`` (or ``x_ras``...) then one row per point, exact ``repr`` floats."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    axis = system.lower()
    # A name starting with "#" is quoted, or the row would read back as a comment.
    quoting = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["name", f"x_{axis}", f"y_{axis}", f"z_{axis}"])
    for name, coordinates in rows:
        (quoting if name.startswith("#") else writer).writerow([name, *(repr(c) for c in coordinates)])
    return buffer.getvalue()
