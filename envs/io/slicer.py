"""3D Slicer point lists: ``.fcsv`` (every Slicer version) and ``.mrk.json`` parsed and formatted.

Parsers return ``{name: point}`` in LPS mm, whatever the file's coordinate system (converted by
:mod:`envs.io.points`); formatters take rows already in the file's system. The suffix dispatch
lives in :mod:`envs.io.landmarks`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from envs.io.points import add_point, parse_coordinate_system

__all__ = ["format_fcsv", "format_mrk_json", "parse_fcsv", "parse_mrk_json"]

_MRK_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
_FCSV_COLUMNS = (
    "id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"
)  # fmt: skip
_FCSV_SYSTEM = re.compile(r"^#\s*CoordinateSystem\s*=\s*(\S*)\s*$", re.IGNORECASE)
_POSITION_STATUSES = ("defined", "undefined", "preview")
_FCSV_COLUMNS_LINE = re.compile(r"^#\s*columns\s*=\s*(.*)$", re.IGNORECASE)


def parse_fcsv(text: str, path: Path) -> dict[str, NDArray[np.float64]]:
    """Points of a ``.fcsv`` file's ``text`` in LPS mm (dialects: see ``envs.io.read_landmarks``)."""
    system = "RAS"  # Slicer's default before the CoordinateSystem line existed (pre-4.11)
    columns = list(_FCSV_COLUMNS)
    points: dict[str, NDArray[np.float64]] = {}
    seen_at: dict[str, str] = {}
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        if content.startswith("#"):
            if match := _FCSV_SYSTEM.match(content):
                value = {"0": "RAS", "1": "LPS"}.get(match.group(1).strip(), match.group(1))
                system = parse_coordinate_system(value, path, f"line {line}")
            elif match := _FCSV_COLUMNS_LINE.match(content):
                columns = [column.strip() for column in match.group(1).split(",")]
                missing = [column for column in ("x", "y", "z") if column not in columns]
                if missing:
                    raise ValueError(
                        f"{path}: line {line}: '# columns' lacks {missing}; expected at least x,y,z "
                        f"(Slicer writes {','.join(_FCSV_COLUMNS)})"
                    )
            continue
        # One line per row: csv handles quoted labels with commas, Slicer never splits rows.
        try:
            row = next(csv.reader([content]))
        except csv.Error as error:
            raise ValueError(f"{path}: line {line}: unreadable row ({error}); fix or remove it") from None
        indices = {key: columns.index(key) for key in ("id", "x", "y", "z", "label") if key in columns}
        needed = max(indices[key] for key in ("x", "y", "z")) + 1
        if len(row) < needed:
            raise ValueError(
                f"{path}: line {line}: expected at least {needed} comma-separated values "
                f"({','.join(columns)}), got {len(row)}. Fix or remove the row"
            )
        label = row[indices["label"]].strip() if indices.get("label", len(row)) < len(row) else ""
        if not label and indices.get("id", len(row)) < len(row):
            label = row[indices["id"]].strip()  # Slicer shows the id when a point has no label
        add_point(
            points,
            seen_at,
            label,
            [row[indices[axis]].strip() for axis in "xyz"],
            system,
            path,
            f"line {line}",
        )
    return points


def parse_mrk_json(text: str, path: Path) -> dict[str, NDArray[np.float64]]:
    """Defined control points of every ``Fiducial`` markup in a ``.mrk.json`` ``text``, in LPS mm."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); expected a "
            "Slicer markups file. Re-save it from Slicer"
        ) from None
    except RecursionError:
        raise ValueError(
            f"{path}: JSON nested too deeply to be a Slicer markups file; expected a .mrk.json. "
            "Re-save it from Slicer"
        ) from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise ValueError(
            f"{path}: expected a JSON object with a 'markups' list (Slicer .mrk.json), got "
            f"{type(document).__name__} with keys {sorted(document) if isinstance(document, dict) else []}"
        )
    fiducials = [(i, m) for i, m in enumerate(markups) if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not fiducials:
        types = [m.get("type") if isinstance(m, dict) else type(m).__name__ for m in markups]
        raise ValueError(
            f"{path}: no 'Fiducial' (point list) markup in the file, got types {types}; expected a "
            "point list. Save the landmarks as a point list in Slicer"
        )
    points: dict[str, NDArray[np.float64]] = {}
    seen_at: dict[str, str] = {}
    for markup_index, markup in fiducials:
        where = f"markups[{markup_index}]"
        system = parse_coordinate_system(str(markup.get("coordinateSystem", "LPS")), path, where)
        units = markup.get("coordinateUnits", "mm")
        scale = {"mm": 1.0, "um": 1e-3}.get(units) if isinstance(units, str) else None
        if scale is None:
            raise ValueError(f"{path}: {where}: unknown coordinateUnits {units!r}; expected 'mm' or 'um'")
        controls = markup.get("controlPoints", [])
        if not isinstance(controls, list) or not all(isinstance(c, dict) for c in controls):
            raise ValueError(
                f"{path}: {where}: expected 'controlPoints' to be a list of objects, got {controls!r}"
            )
        for point_index, control in enumerate(controls):
            at = f"{where}.controlPoints[{point_index}]"
            status = control.get("positionStatus", "defined")
            if status not in _POSITION_STATUSES:
                raise ValueError(
                    f"{path}: {at}: unknown positionStatus {status!r}; expected one of "
                    f"{', '.join(_POSITION_STATUSES)}"
                )
            if status != "defined":
                continue  # an unplaced point has a placeholder position
            names = [control.get(key) for key in ("label", "id")]
            if any(isinstance(n, (bool, list, dict, float)) for n in names):
                raise ValueError(f"{path}: {at}: expected a text 'label' (or 'id'), got {names[0]!r}")
            label = str(names[0] or names[1] or "").strip()
            position = control.get("position")
            numeric = isinstance(position, list) and all(
                isinstance(p, (int, float)) and not isinstance(p, bool) for p in position
            )
            if not numeric:
                raise ValueError(f"{path}: {at}: expected 'position': [x, y, z] of numbers, got {position!r}")
            add_point(points, seen_at, label, position, system, path, at)
            points[label] = points[label] * scale
    return points


def format_fcsv(rows: list[tuple[str, list[float]]], system: str) -> str:
    """A Slicer 4.11+ ``.fcsv`` text of ``(name, [x, y, z])`` rows given in ``system`` mm."""
    buffer = io.StringIO()
    buffer.write("# Markups fiducial file version = 4.11\n")
    buffer.write(f"# CoordinateSystem = {system}\n")
    buffer.write(f"# columns = {','.join(_FCSV_COLUMNS)}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    for number, (name, (x, y, z)) in enumerate(rows, start=1):
        # Identity orientation quaternion (0,0,0,1), visible, selected, unlocked; as Slicer writes.
        writer.writerow(
            [
                f"vtkMRMLMarkupsFiducialNode_{number}",
                repr(x),
                repr(y),
                repr(z),
                0,
                0,
                0,
                1,
                1,
                1,
                0,
                name,
                "",
                "",
            ]
        )
    return buffer.getvalue()


def format_mrk_json(rows: list[tuple[str, list[float]]], system: str) -> str:
    """A ``.mrk.json`` text: one ``Fiducial`` markup of ``(name, [x, y, z])`` rows in ``system`` mm."""
    control_points = [
        {
            "id": str(number),
            "label": name,
            "description": "",
            "associatedNodeID": "",
            "position": coordinates,
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for number, (name, coordinates) in enumerate(rows, start=1)
    ]
    document = {
        "@schema": _MRK_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(control_points),
                "controlPoints": control_points,
            }
        ],
    }
    return json.dumps(document, indent=4) + "\n"
