"""Manifests: a CSV or YAML file listing one case per row, read into :class:`Case` records.

Paths are relative to the manifest's folder (absolute paths work too)::

    case_id, image, landmarks, split, modality
    s001, images / s001.nii.gz, landmarks / s001.fcsv, train, ct
    s002, images / s002.nrrd, landmarks / s002.mrk.json, val, ct

or in YAML::

    cases:
      - {case_id: s001, image: images/s001.nii.gz, landmarks: landmarks/s001.fcsv, split: train}

``case_id`` defaults to the image file name without suffix, ``modality`` to ``ct`` and
``landmarks`` may be left empty for images without annotations (prediction only). An
optional ``labels`` column names a label map on the image's grid (Dice of deformable
registration).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from envs.data.case import MODALITIES, Case
from envs.data.splits import SPLITS

_MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", "image", "landmarks", "split", "modality", "labels")


def read_manifest(path: str | Path) -> list[Case]:
    """The cases of a CSV or YAML manifest (see the module docstring); every named file must exist.

    Raises:
        FileNotFoundError: the manifest or a file it names does not exist.
        ValueError: the manifest is malformed (the message names the file and the line or case).
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"manifest {manifest}: file not found; pass a CSV or YAML file listing "
            "case_id,image,landmarks,split,modality"
        )
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv_manifest(manifest)
    elif suffix in (".yaml", ".yml"):
        rows = _read_yaml_manifest(manifest)
    else:
        raise ValueError(f"manifest {manifest}: expected a .csv, .yaml or .yml file, got {suffix!r}")
    cases: list[Case] = []
    first_at: dict[str, str] = {}
    for where, row in rows:
        case = _case_from_row(manifest, where, row)
        if case.case_id in first_at:
            raise ValueError(
                f"manifest {manifest}, {where}: case_id {case.case_id!r} appears twice (first at "
                f"{first_at[case.case_id]}); make ids unique"
            )
        first_at[case.case_id] = where
        cases.append(case)
    return cases


def _read_text(manifest: Path, encoding: str) -> str:
    """The manifest's text, newlines as in the file; ``ValueError`` naming the file if not UTF-8."""
    try:
        return manifest.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"manifest {manifest}: not a UTF-8 text file ({error.reason} at byte {error.start}); expected "
            "a CSV or YAML manifest. Save it as UTF-8 text"
        ) from None


def _read_csv_manifest(manifest: Path) -> list[tuple[str, dict[str, str]]]:
    numbered = [
        (number, line)
        for number, line in enumerate(io.StringIO(_read_text(manifest, "utf-8-sig"), newline=""), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # Physical line numbers, so that messages point at the line the user sees in an editor.
    line_numbers = [number for number, _ in numbered]
    try:
        records = list(csv.reader([line for _, line in numbered]))
    except csv.Error as error:
        raise ValueError(
            f"manifest {manifest}: unreadable CSV ({error}); expected comma-separated text. Fix the file"
        ) from None
    if not records:
        raise ValueError(
            f"manifest {manifest}: empty file; expected a header row {','.join(_MANIFEST_COLUMNS)}"
        )
    header = [name.strip().lower() for name in records[0]]
    _check_columns(manifest, header)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"manifest {manifest}: header repeats column(s) {repeated}; expected each once")
    rows = []
    for index, record in enumerate(records[1:], start=1):
        number = line_numbers[index] if index < len(line_numbers) else index + 1
        if len(record) > len(header):
            raise ValueError(
                f"manifest {manifest}, line {number}: more values than the {len(header)} header columns"
            )
        values = [value.strip() for value in record] + [""] * (len(header) - len(record))
        rows.append((f"line {number}", dict(zip(header, values, strict=True))))
    return rows


def _read_yaml_manifest(manifest: Path) -> list[tuple[str, dict[str, str]]]:
    text = _read_text(manifest, "utf-8")
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError) as error:  # constructors: e.g. 2019-21-01
        reason = " ".join(str(error).split())
        raise ValueError(f"manifest {manifest}: not valid YAML ({reason})") from None
    except RecursionError:
        raise ValueError(f"manifest {manifest}: YAML nested too deeply; expected a list of cases") from None
    entries = document.get("cases") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ValueError(
            f"manifest {manifest}: expected a list of cases (top level, or under the key 'cases'), "
            f"got {type(entries).__name__}"
        )
    rows = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(
                f"manifest {manifest}, case {number}: expected a mapping of column: value, got "
                f"{type(entry).__name__}"
            )
        for key, value in entry.items():
            if not isinstance(key, str) or isinstance(value, (list, dict, set)):
                raise ValueError(
                    f"manifest {manifest}, case {number}: expected text keys and single values, got "
                    f"{type(key).__name__} key {str(key)[:40]!r} with a {type(value).__name__} value"
                )
        row = {
            key.strip().lower(): "" if value is None else str(value).strip() for key, value in entry.items()
        }
        _check_columns(manifest, list(row), where=f", case {number}")
        rows.append((f"case {number}", row))
    return rows


def _check_columns(manifest: Path, columns: list[str], where: str = "") -> None:
    unknown = [name for name in columns if name not in _MANIFEST_COLUMNS]
    if unknown:
        raise ValueError(
            f"manifest {manifest}{where}: unknown column(s) {unknown}; expected some of "
            f"{', '.join(_MANIFEST_COLUMNS)}"
        )
    missing = [name for name in ("image", "split") if name not in columns]
    if missing:
        raise ValueError(f"manifest {manifest}{where}: missing required column(s) {missing}")


def _resolve(manifest: Path, where: str, column: str, value: str) -> Path:
    try:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = manifest.parent / path
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as error:  # NUL byte, name too long, unknown ~user
        raise ValueError(
            f"manifest {manifest}, {where}: {column} {value[:80]!r} is not a usable path ({error}); "
            "expected a file path relative to the manifest's folder"
        ) from None
    if not exists:
        raise FileNotFoundError(
            f"manifest {manifest}, {where}: {column} {value!r} not found (looked at {path}); "
            "paths are relative to the manifest's folder"
        )
    return path


def _case_from_row(manifest: Path, where: str, row: dict[str, str]) -> Case:
    if not row.get("image"):
        raise ValueError(f"manifest {manifest}, {where}: empty 'image'; give the path of a volume")
    split = row.get("split", "").lower()
    if split not in SPLITS:
        raise ValueError(
            f"manifest {manifest}, {where}: unknown split {row.get('split', '')!r}; "
            f"expected one of {', '.join(SPLITS)}"
        )
    modality = (row.get("modality") or "ct").lower()
    if modality not in MODALITIES:
        raise ValueError(
            f"manifest {manifest}, {where}: unknown modality {modality!r}; expected one of {MODALITIES}"
        )
    image = _resolve(manifest, where, "image", row["image"])
    landmarks = _resolve(manifest, where, "landmarks", row["landmarks"]) if row.get("landmarks") else None
    labels = _resolve(manifest, where, "labels", row["labels"]) if row.get("labels") else None
    case_id = row.get("case_id") or _stem(image)
    return Case(case_id, split, image, landmarks, modality, labels=labels)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".mrk.json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
