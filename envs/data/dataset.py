"""Datasets: cases with train/val/test splits, loaded once and cached in memory.

A :class:`Dataset` is built from a manifest (:meth:`Dataset.from_manifest`, format in
:mod:`envs.data.manifest`) or from in-memory cases. Phantom cases (``Case.phantom_seed`` set) are
loaded by the ``phantom_loader`` their builder passes in (:func:`envs.phantom.phantom_dataset`).
Decoded volumes (and anything derived from them, such as intensity pyramids) live in one LRU
cache with a byte budget, so an environment reset never re-reads a file.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from envs import io
from envs.data.cache import ByteLRUCache
from envs.data.case import Case, Subject
from envs.data.manifest import read_manifest
from envs.data.splits import SPLITS

T = TypeVar("T")

PhantomLoader = Callable[[Case], Subject]


class Dataset:
    """Cases with splits, and a cached loader for their volumes and landmarks.

    Args:
        cases: the cases; ``case_id`` must be unique.
        cache_bytes: memory budget for decoded volumes and derived data (default 4 GiB).
        phantom_loader: ``loader(case) -> Subject`` for the phantom cases (``case.phantom_seed``
            set); required when there are any. :func:`envs.phantom.phantom_dataset` passes one.
        source: where the cases came from (shown in messages).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        cache_bytes: int = 4 << 30,
        phantom_loader: PhantomLoader | None = None,
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
        if phantom_loader is None and any(case.is_phantom for case in self.cases):
            raise ValueError(
                f"dataset {source}: phantom cases need a phantom_loader; "
                "build phantom datasets with envs.phantom.phantom_dataset"
            )
        self.phantom_loader = phantom_loader
        self.cache = ByteLRUCache(cache_bytes)
        self._by_id = {case.case_id: case for case in self.cases}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_manifest(cls, path: str | Path, *, cache_bytes: int = 4 << 30) -> Dataset:
        """Read a CSV or YAML manifest (format in :mod:`envs.data.manifest`); every file must exist."""
        return cls(read_manifest(path), cache_bytes=cache_bytes, source=str(Path(path)))

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
            assert self.phantom_loader is not None  # enforced in __init__
            return self.phantom_loader(case)
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
