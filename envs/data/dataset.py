"""Datasets: a manifest of cases with train/val/test splits, loaded once and cached in memory.

A manifest is a CSV or YAML file listing one case per row. Paths are relative to the
manifest's folder (absolute paths work too)::

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

Decoded volumes (and anything derived from them, such as intensity pyramids) live in one
LRU cache with a byte budget, so an environment reset never re-reads a file.
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from envs import io
from envs.phantom import SPLIT_SEED_OFFSETS
from envs.core import Volume

__all__ = [
    "ByteLRUCache",
    "Case",
    "Dataset",
    "MODALITIES",
    "SPLITS",
    "Subject",
    "nbytes_of",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
MODALITIES: tuple[str, ...] = ("ct", "mr")
_MANIFEST_COLUMNS = ("case_id", "image", "landmarks", "split", "modality", "labels")

T = TypeVar("T")


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


def nbytes_of(item: Any) -> int:
    """Bytes held by ``item``: its ``nbytes`` or the sum over a tuple/list/dict of such items."""
    if hasattr(item, "nbytes"):
        return int(item.nbytes)
    if isinstance(item, dict):
        return sum(nbytes_of(value) for value in item.values())
    if isinstance(item, (tuple, list)):
        return sum(nbytes_of(value) for value in item)
    return 0


class ByteLRUCache:
    """Least-recently-used cache bounded by the bytes its items hold.

    An item larger than the whole budget is returned but not kept.

    Example:
        >>> cache = ByteLRUCache(budget_bytes=100)
        >>> cache.get("a", lambda: np.zeros(60, np.uint8)).nbytes
        60
        >>> _ = cache.get("b", lambda: np.zeros(60, np.uint8))  # evicts "a"
        >>> "a" in cache, "b" in cache
        (False, True)
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key][0]
        self.misses += 1
        value = factory()
        size = nbytes_of(value)
        if size <= self.budget_bytes:
            while self.used_bytes + size > self.budget_bytes and self._items:
                _, (_, evicted_size) = self._items.popitem(last=False)
                self.used_bytes -= evicted_size
            self._items[key] = (value, size)
            self.used_bytes += size
        return value

    def clear(self) -> None:
        self._items.clear()
        self.used_bytes = 0


class Dataset:
    """Cases with splits, and a cached loader for their volumes and landmarks.

    Args:
        cases: the cases; ``case_id`` must be unique.
        cache_bytes: memory budget for decoded volumes and derived data (default 4 GiB).
        phantom_config: :class:`envs.phantom.PhantomConfig` for phantom cases (default config
            when ``None``).
        source: where the cases came from (shown in messages).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        cache_bytes: int = 4 << 30,
        phantom_config: Any = None,
        source: str = "in-memory cases",
    ) -> None:
        self.cases: tuple[Case, ...] = tuple(cases)
        self.source = source
        if not self.cases:
            raise ValueError(f"dataset {source}: no cases; add at least one row")
        seen: set[str] = set()
        for case in self.cases:
            if case.split not in SPLITS:
                raise ValueError(
                    f"dataset {source}: case {case.case_id!r} has split {case.split!r}; "
                    f"expected one of {', '.join(SPLITS)}"
                )
            if case.case_id in seen:
                raise ValueError(f"dataset {source}: case_id {case.case_id!r} appears twice; make ids unique")
            seen.add(case.case_id)
        self.phantom_config = phantom_config
        self.cache = ByteLRUCache(cache_bytes)
        self._by_id = {case.case_id: case for case in self.cases}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_manifest(cls, path: str | Path, *, cache_bytes: int = 4 << 30) -> Dataset:
        """Read a CSV or YAML manifest (see the module docstring) and check every file exists."""
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
        cases = [_case_from_row(manifest, where, row) for where, row in rows]
        return cls(cases, cache_bytes=cache_bytes, source=str(manifest))

    @classmethod
    def phantoms(
        cls,
        n_train: int = 16,
        n_val: int = 4,
        n_test: int = 4,
        *,
        seed: int = 0,
        config: Any = None,
        cache_bytes: int = 4 << 30,
    ) -> Dataset:
        """In-memory synthetic CT phantoms (generated on first use); splits use disjoint seeds."""
        cases = []
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            if count < 0:
                raise ValueError(f"phantom dataset: n_{split} must be >= 0, got {count}")
            for i in range(count):
                phantom_seed = seed + SPLIT_SEED_OFFSETS[split] + i
                cases.append(Case(f"phantom_{split}_{i:03d}", split, phantom_seed=phantom_seed))
        return cls(cases, cache_bytes=cache_bytes, phantom_config=config, source=f"phantoms(seed={seed})")

    # ------------------------------------------------------------------ access
    def split(self, name: str) -> list[Case]:
        """Cases of split ``name`` (``train``, ``val`` or ``test``), in manifest order."""
        if name not in SPLITS:
            raise ValueError(f"dataset {self.source}: unknown split {name!r}; expected one of {SPLITS}")
        return [case for case in self.cases if case.split == name]

    def select(self, split: str, case_ids: Sequence[str] | None = None) -> list[Case]:
        """Cases of ``split`` (only ``case_ids`` when given, in manifest order); none is an error."""
        cases = self.split(split)
        if case_ids is not None:
            wanted = set(case_ids)
            cases = [case for case in cases if case.case_id in wanted]
        if not cases:
            raise ValueError(f"dataset {self.source}: split {split!r} has no cases; add some to the manifest")
        return cases

    def case(self, case_id: str) -> Case:
        try:
            return self._by_id[case_id]
        except KeyError:
            raise KeyError(f"dataset {self.source}: no case {case_id!r}") from None

    def load(self, case: Case | str) -> Subject:
        """The decoded subject of ``case`` (read or generated once, then served from the cache)."""
        case = self.case(case) if isinstance(case, str) else case
        return self.cache.get(("subject", case.case_id), lambda: self._load_uncached(case))

    def derived(self, case: Case | str, key: Hashable, factory: Callable[[Subject], T]) -> T:
        """Cached ``factory(subject)`` for data derived from a case (e.g. a pyramid)."""
        case = self.case(case) if isinstance(case, str) else case
        return self.cache.get(("derived", case.case_id, key), lambda: factory(self.load(case)))

    def landmark_names(self, splits: Iterable[str] = SPLITS) -> list[str]:
        """Landmark names over the given splits, in first-seen order (loads those cases)."""
        names: dict[str, None] = {}
        for split in splits:
            for case in self.split(split):
                for name in self.load(case).landmarks:
                    names.setdefault(name, None)
        return list(names)

    def __len__(self) -> int:
        return len(self.cases)

    def __repr__(self) -> str:
        counts = ", ".join(f"{split}={len(self.split(split))}" for split in SPLITS)
        return f"Dataset({self.source}: {counts})"

    def _load_uncached(self, case: Case) -> Subject:
        if case.is_phantom:
            from envs.phantom import PhantomConfig, generate_phantom

            config = self.phantom_config if self.phantom_config is not None else PhantomConfig()
            phantom = generate_phantom(int(case.phantom_seed), config)  # type: ignore[arg-type]
            return Subject(
                case, phantom.volume, dict(phantom.landmarks), phantom.labels, {"phantom": phantom}
            )
        assert case.image is not None  # enforced when the case was built
        volume = io.read_volume(case.image)
        landmarks = io.read_landmarks(case.landmarks) if case.landmarks is not None else {}
        labels = io.read_volume(case.labels) if case.labels is not None else None
        if labels is not None and labels.shape_zyx != volume.shape_zyx:
            raise ValueError(
                f"case {case.case_id!r}: label map {case.labels} has shape {labels.shape_zyx}, the image "
                f"{volume.shape_zyx}; a label map must share the image's grid"
            )
        return Subject(case, volume, landmarks, labels)


# ---------------------------------------------------------------------- manifest parsing
def _read_csv_manifest(manifest: Path) -> list[tuple[str, dict[str, str]]]:
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        numbered = [
            (number, line)
            for number, line in enumerate(handle, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    # Physical line numbers, so that messages point at the line the user sees in an editor.
    line_numbers = [number for number, _ in numbered]
    reader = csv.DictReader([line for _, line in numbered])
    if reader.fieldnames is None:
        raise ValueError(
            f"manifest {manifest}: empty file; expected a header row {','.join(_MANIFEST_COLUMNS)}"
        )
    header = [name.strip().lower() for name in reader.fieldnames]
    _check_columns(manifest, header)
    rows = []
    for index, raw in enumerate(reader, start=1):
        number = line_numbers[index] if index < len(line_numbers) else index + 1
        if None in raw:
            raise ValueError(
                f"manifest {manifest}, line {number}: more values than the {len(header)} header columns"
            )
        row = {key.strip().lower(): (value or "").strip() for key, value in raw.items()}
        rows.append((f"line {number}", row))
    return rows


def _read_yaml_manifest(manifest: Path) -> list[tuple[str, dict[str, str]]]:
    try:
        document = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"manifest {manifest}: not valid YAML ({error})") from None
    entries = document.get("cases") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ValueError(
            f"manifest {manifest}: expected a list of cases (top level, or under the key 'cases'), "
            f"got {type(entries).__name__}"
        )
    rows = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"manifest {manifest}, case {number}: expected a mapping, got {entry!r}")
        row = {
            str(key).strip().lower(): "" if value is None else str(value).strip()
            for key, value in entry.items()
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
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = manifest.parent / path
    if not path.exists():
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
