"""Dataset manifests, splits and the byte-bounded cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs import io
from envs.core import Volume
from envs.data import ByteLRUCache, Dataset
from envs.phantom import phantom_dataset


def _write_case(folder: Path, name: str, offset: float) -> tuple[Path, Path]:
    volume = Volume(np.full((6, 7, 8), offset, np.int16), (1.5, 1.0, 2.0), (offset, 0.0, 0.0))
    image = io.write_volume(volume, folder / "images" / f"{name}.nii.gz")
    landmarks = io.write_landmarks(
        {"apex": np.array([offset, 1.0, 2.0])}, folder / "landmarks" / f"{name}.fcsv"
    )
    return image, landmarks


@pytest.fixture
def csv_manifest(tmp_path: Path) -> Path:
    for index, name in enumerate(("a", "b", "c")):
        _write_case(tmp_path, name, float(index))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,image,landmarks,split,modality\n"
        "a,images/a.nii.gz,landmarks/a.fcsv,train,ct\n"
        "b,images/b.nii.gz,landmarks/b.fcsv,val,CT\n"
        ",images/c.nii.gz,,test,\n"
    )
    return manifest


def test_csv_manifest_gives_cases_with_splits(csv_manifest: Path) -> None:
    dataset = Dataset.from_manifest(csv_manifest)
    assert [case.case_id for case in dataset.split("train")] == ["a"]
    assert [case.case_id for case in dataset.split("val")] == ["b"]
    test_case = dataset.split("test")[0]
    assert test_case.case_id == "c"  # from the image name
    assert test_case.landmarks is None
    assert test_case.modality == "ct"
    subject = dataset.load("b")
    np.testing.assert_allclose(subject.landmarks["apex"], [1.0, 1.0, 2.0])
    np.testing.assert_allclose(subject.volume.spacing_xyz_mm, [1.5, 1.0, 2.0])
    assert dataset.load("c").landmarks == {}


def test_yaml_manifest_matches_csv(tmp_path: Path) -> None:
    _write_case(tmp_path, "a", 3.0)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "cases:\n  - {case_id: a, image: images/a.nii.gz, landmarks: landmarks/a.fcsv, split: train}\n"
    )
    dataset = Dataset.from_manifest(manifest)
    np.testing.assert_allclose(dataset.load("a").landmarks["apex"], [3.0, 1.0, 2.0])


def test_loading_is_cached_so_reset_never_rereads(csv_manifest: Path, tmp_path: Path) -> None:
    dataset = Dataset.from_manifest(csv_manifest)
    first = dataset.load("a")
    (tmp_path / "images" / "a.nii.gz").unlink()  # a second read would now fail
    assert dataset.load("a") is first
    assert dataset.cache.hits == 1


def test_cache_evicts_least_recently_used_within_budget() -> None:
    cache = ByteLRUCache(budget_bytes=250)
    for key in ("a", "b"):
        cache.get(key, lambda: np.zeros(100, np.uint8))
    cache.get("a", lambda: pytest.fail("a is cached"))  # touch a: b becomes the oldest
    cache.get("c", lambda: np.zeros(100, np.uint8))
    assert "a" in cache
    assert "c" in cache
    assert "b" not in cache
    assert cache.used_bytes == 200
    huge = cache.get("huge", lambda: np.zeros(1000, np.uint8))
    assert huge.nbytes == 1000
    assert "huge" not in cache  # larger than the whole budget: served, not kept


def test_derived_data_is_cached_per_key(csv_manifest: Path) -> None:
    dataset = Dataset.from_manifest(csv_manifest)
    calls = []

    def factory(subject):
        calls.append(subject.case.case_id)
        return np.zeros(3)

    dataset.derived("a", "k", factory)
    dataset.derived("a", "k", factory)
    dataset.derived("a", "other", factory)
    assert calls == ["a", "a"]


def test_phantom_dataset_has_disjoint_reproducible_splits() -> None:
    dataset = phantom_dataset(3, 2, 1, seed=5)
    seeds = {split: [c.phantom_seed for c in dataset.split(split)] for split in ("train", "val", "test")}
    assert len(set(seeds["train"]) | set(seeds["val"]) | set(seeds["test"])) == 6
    again = phantom_dataset(4, 2, 1, seed=5)
    assert [c.phantom_seed for c in again.split("val")] == seeds["val"]  # more training cases: same val


def test_manifest_missing_file_names_row_and_path(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,landmarks,split\nimages/nope.nii.gz,,train\n")
    with pytest.raises(FileNotFoundError, match=r"line 2.*nope\.nii\.gz.*relative to the manifest"):
        Dataset.from_manifest(manifest)


def test_manifest_unknown_split_is_named(csv_manifest: Path) -> None:
    text = csv_manifest.read_text().replace("val,CT", "validation,CT")
    csv_manifest.write_text(text)
    with pytest.raises(ValueError, match=r"line 3: unknown split 'validation'.*train, val, test"):
        Dataset.from_manifest(csv_manifest)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("image,split,colour\na.nii.gz,train,red\n", "unknown column"),
        ("image,landmarks\n", "missing required column"),
        ("", "empty file"),
        ("case_id,image,split\nx,images/a.nii.gz,train\nx,images/a.nii.gz,val\n", "appears twice"),
        ("image,split,modality\nimages/a.nii.gz,train,pet\n", "unknown modality"),
    ],
)
def test_bad_manifests_are_explained(tmp_path: Path, text: str, phrase: str) -> None:
    _write_case(tmp_path, "a", 0.0)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text)
    with pytest.raises(ValueError, match=phrase) as error:
        Dataset.from_manifest(manifest)
    assert "manifest.csv" in str(error.value) or "dataset" in str(error.value)


def test_missing_manifest_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        Dataset.from_manifest(tmp_path / "missing.csv")
    other = tmp_path / "cases.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match=r"\.csv, \.yaml"):
        Dataset.from_manifest(other)


def test_unknown_split_request_is_rejected(csv_manifest: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        Dataset.from_manifest(csv_manifest).split("training")


def test_labels_column_loads_a_label_map_on_the_image_grid(tmp_path: Path) -> None:
    _write_case(tmp_path, "a", 0.0)
    labels = Volume(np.arange(6 * 7 * 8, dtype=np.uint8).reshape(6, 7, 8) % 5, (1.5, 1.0, 2.0))
    io.write_volume(labels, tmp_path / "labels" / "a.nii.gz")
    wrong = Volume(np.zeros((6, 7, 9), np.uint8), (1.5, 1.0, 2.0))
    io.write_volume(wrong, tmp_path / "labels" / "wrong.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case_id,image,labels,split\n"
        "a,images/a.nii.gz,labels/a.nii.gz,train\n"
        "b,images/a.nii.gz,labels/wrong.nii.gz,val\n"
    )
    dataset = Dataset.from_manifest(manifest)
    np.testing.assert_array_equal(dataset.load("a").labels.voxels, labels.voxels)
    with pytest.raises(ValueError, match=r"label map .*wrong.nii.gz has shape \(6, 7, 9\)"):
        dataset.load("b")
