"""Phantom data sets, in memory or on disk.

:func:`phantom_dataset` builds an :class:`envs.data.Dataset` whose phantom loader generates each
case on first use; :func:`write_phantom_dataset` writes NIfTI volumes (int16 HU), label maps,
landmarks (.fcsv, LPS mm) and a ``manifest.csv`` that :meth:`envs.data.Dataset.from_manifest`
reads. Case ``phantom_<split>_<i>`` uses phantom seed ``seed + SPLIT_SEED_OFFSETS[split] + i``.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from tqdm import tqdm

from envs import io
from envs.data import Case, Dataset, Subject, phantom_cases
from envs.phantom.generate import PhantomConfig, generate_phantom

_DEFAULT_CONFIG = PhantomConfig()


def phantom_dataset(
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 4,
    *,
    seed: int = 0,
    config: PhantomConfig | None = None,
    cache_bytes: int = 4 << 30,
) -> Dataset:
    """In-memory synthetic CT phantoms (generated on first use); splits use disjoint seeds.

    Args:
        n_train, n_val, n_test: cases per split (>= 0).
        seed: case ``phantom_<split>_<i>`` uses phantom seed ``seed + SPLIT_SEED_OFFSETS[split] + i``.
        config: how the phantoms are generated (the default :class:`PhantomConfig` when ``None``).
        cache_bytes: memory budget of the dataset's cache (see :class:`envs.data.Dataset`).
    """
    cases = [
        Case(case_id, split, phantom_seed=phantom_seed)
        for case_id, split, phantom_seed in phantom_cases(n_train, n_val, n_test, seed=seed)
    ]
    loader = functools.partial(_load_subject, config=config if config is not None else PhantomConfig())
    return Dataset(cases, cache_bytes=cache_bytes, phantom_loader=loader, source=f"phantoms(seed={seed})")


def _load_subject(case: Case, config: PhantomConfig) -> Subject:
    """The subject of phantom case ``case`` (``case.phantom_seed`` set), generated with ``config``."""
    phantom = generate_phantom(int(case.phantom_seed), config)  # type: ignore[arg-type]
    return Subject(case, phantom.volume, dict(phantom.landmarks), phantom.labels, {"phantom": phantom})


def write_phantom_dataset(
    out: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    *,
    seed: int = 0,
    config: PhantomConfig = _DEFAULT_CONFIG,
) -> Path:
    """Write phantoms with fixed train/val/test sizes and disjoint seeds; returns the manifest path.

    Case ``phantom_<split>_<i>`` uses phantom seed ``seed + SPLIT_SEED_OFFSETS[split] + i``, so
    adding training cases never changes the validation or test subjects.
    """
    cases = phantom_cases(n_train, n_val, n_test, seed=seed, caller="write_phantom_dataset")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_phantom_cases(out, cases, config)


def write_phantom_cases(out: Path, cases: list[tuple[str, str, int]], config: PhantomConfig) -> Path:
    """Write ``(case_id, split, phantom_seed)`` phantoms into ``out``, then the manifest; returns its path.

    Each case gives ``<case_id>.nii.gz`` (HU), ``<case_id>_labels.nii.gz`` and ``<case_id>.fcsv``
    (omitted when no landmark is in the field of view). Every file is written atomically and
    ``manifest.csv`` last, so its presence means a complete set.
    """
    rows = []
    for case_id, split, phantom_seed in tqdm(cases, desc="phantoms", unit="case"):
        phantom = generate_phantom(phantom_seed, config)
        image, label_map, landmarks = f"{case_id}.nii.gz", f"{case_id}_labels.nii.gz", f"{case_id}.fcsv"
        io.write_volume(phantom.volume, out / image)
        io.write_volume(phantom.labels, out / label_map)
        if phantom.landmarks:
            io.write_landmarks(phantom.landmarks, out / landmarks)
        else:  # a partial field of view can miss every landmark: the manifest leaves it empty
            landmarks = ""
        rows.append(
            {"case_id": case_id, "image": image, "landmarks": landmarks, "split": split, "modality": "ct"}
        )

    def write_manifest(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["case_id", "image", "landmarks", "split", "modality"])
            writer.writeheader()
            writer.writerows(rows)

    return io.atomic_write(out / "manifest.csv", write_manifest)
