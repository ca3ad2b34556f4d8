"""The real-anatomy benchmark: its held-out-scan generator moves landmarks exactly, and its data.

The generator test runs on a small synthetic volume (three edge lengths, anisotropic spacing,
an oblique direction) with one bright blob; the moved landmark must fall on the moved blob.
The data tests read ``data/real`` (made by ``python bench/real_anatomy.py prepare``) and skip
when it is missing: nothing is downloaded here.
"""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from envs import io
from envs.core import Volume

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "real"
# bench/ is scripts, never imported (tests/test_layout.py): load their namespaces instead
REAL = runpy.run_path(str(ROOT / "bench" / "real_anatomy.py"), run_name="real_anatomy")
BENCH = runpy.run_path(str(ROOT / "bench" / "bench_real_landmarks.py"), run_name="bench_real_landmarks")
BLOB_LPS_MM = np.array([14.0, -9.0, 11.0])


@pytest.fixture(scope="module")
def blob_scan() -> sitk.Image:
    """A 36 x 44 x 52 (z, y, x) scan, spacing (1.1, 0.9, 1.3) mm, oblique, one Gaussian blob (sigma 3 mm)."""
    direction = Rotation.from_euler("xyz", (8.0, -5.0, 12.0), degrees=True).as_matrix()
    grid = Volume(np.zeros((36, 44, 52), np.float32), (1.1, 0.9, 1.3), (-30.0, -25.0, -20.0), direction)
    grid = Volume(grid.voxels, grid.spacing_xyz_mm, grid.origin_lps_mm - grid.center_lps_mm, direction)
    z, y, x = np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing="ij")
    points = grid.index_to_lps(np.stack([x, y, z], axis=-1))
    squared = np.sum((points - BLOB_LPS_MM) ** 2, axis=-1)
    voxels = (100.0 + 900.0 * np.exp(-squared / (2 * 3.0**2))).astype(np.float32)  # tissue 100, blob 1000
    return grid.with_voxels(voxels).to_sitk()


def blob_centre_index(image: sitk.Image) -> np.ndarray:
    """Continuous (x, y, z) index of the blob: weighted centroid of the voxels above half its peak."""
    voxels = sitk.GetArrayFromImage(image).astype(np.float64)
    weights = np.clip(voxels - 550.0, 0.0, None)
    zyx = np.argwhere(weights > 0)
    centre_zyx = (zyx * weights[tuple(zyx.T)][:, None]).sum(axis=0) / weights.sum()
    return centre_zyx[::-1]


SPECS = {
    "pose": dict(rotation_deg=(12.0, -9.0, 14.0), translation_mm=(7.0, -11.0, 5.0), scale=1.07),
    "spacing": dict(
        rotation_deg=(-10.0, 4.0, 8.0), translation_mm=(-6.0, 3.0, 9.0), spacing_xyz_mm=(0.8,) * 3
    ),
    "anisotropic": dict(rotation_deg=(5.0, 11.0, -7.0), scale=0.93, spacing_xyz_mm=(1.0, 1.0, 2.5)),
    "oblique_grid": dict(
        rotation_deg=(3.0, -6.0, 9.0),
        translation_mm=(5.0, 4.0, -6.0),
        spacing_xyz_mm=(1.25,) * 3,
        grid_rotation_deg=(20.0, -25.0, 15.0),
    ),
    "oblique_header": dict(spacing_xyz_mm=None, header_rotation_deg=(-20.0, 15.0, 25.0)),
    "elastic": dict(rotation_deg=(10.0, -5.0, 40.0), translation_mm=(8.0, 6.0, -5.0), elastic_mm=3.0),
    "bias_noise": dict(rotation_deg=(0.0, 0.0, 10.0), bias=0.3, noise=0.005),
}


@pytest.mark.parametrize("condition", sorted(SPECS))
def test_moved_landmark_lands_on_the_moved_blob(blob_scan: sitk.Image, condition: str) -> None:
    spec = REAL["ScanSpec"](f"blob_{condition}", "test", condition, suffix=".mha", **SPECS[condition])
    image, moved, absent = REAL["make_scan"](blob_scan, {"blob": BLOB_LPS_MM, "far": np.zeros(3)}, spec)
    assert absent == []
    expected = np.asarray(image.TransformPhysicalPointToContinuousIndex(moved["blob"].tolist()))
    found = blob_centre_index(image)
    assert np.all(np.abs(found - expected) <= 0.5), f"{condition}: blob at {found}, landmark at {expected}"
    if condition != "bias_noise":  # the point map moved the blob where the header says: not the identity
        assert np.linalg.norm(moved["blob"] - BLOB_LPS_MM) > 3.0


def test_cropped_field_of_view_reports_absent_landmarks(blob_scan: sitk.Image) -> None:
    spec = REAL["ScanSpec"]("blob_fov", "test", "fov", keep_superior_from=0.5)
    below = BLOB_LPS_MM * np.array([1.0, 1.0, -1.0])  # the blob is superior; its mirror is cut away
    image, moved, absent = REAL["make_scan"](blob_scan, {"blob": BLOB_LPS_MM, "below": below}, spec)
    assert absent == ["below"]
    assert not Volume.from_sitk(image).contains(moved["below"])
    expected = np.asarray(image.TransformPhysicalPointToContinuousIndex(moved["blob"].tolist()))
    assert np.all(np.abs(blob_centre_index(image) - expected) <= 0.5)


def test_scan_specs_are_seeded_and_cover_the_conditions() -> None:
    specs = REAL["scan_specs"](("t1", "t2", "t1bet", "t2bet"))
    assert specs == REAL["scan_specs"](("t1", "t2", "t1bet", "t2bet"))
    assert specs != REAL["scan_specs"](("t1", "t2", "t1bet", "t2bet"), seed=1)
    test = [s for s in specs if s.split == "test"]
    assert len(test) >= 10
    assert {s.split for s in specs} == {"val", "test"}
    assert {s.suffix for s in test} == {".nii.gz", ".nrrd", ".mha"}
    assert {s.contrast for s in test} == {"t1", "t2", "t1bet", "t2bet"}
    assert {"pose", "spacing", "oblique_header", "oblique_grid", "fov", "bias_noise", "contrast"} <= {
        s.condition for s in test
    }
    for spec in test:
        assert all(abs(a) <= 15.0 for a in spec.rotation_deg)
        assert 0.92 <= spec.scale <= 1.08
        assert all(abs(t) <= 20.0 for t in spec.translation_mm)


def test_error_summary_counts_not_found_as_over_10mm() -> None:
    rows = [
        {"error_mm": "1.0", "found": "True", "seconds": "0.01"},
        {"error_mm": "3.0", "found": "True", "seconds": "0.03"},
        {"error_mm": "30.0", "found": "True", "seconds": "0.02"},
        {"error_mm": "nan", "found": "False", "seconds": "0.02"},
        {"error_mm": "nan", "found": "True", "seconds": "0.02", "true_x_lps": "nan"},  # absent, reported
        {"error_mm": "nan", "found": "False", "seconds": "0.02", "true_x_lps": "nan"},  # absent, not
    ]
    summary = BENCH["error_summary"](rows)
    assert (summary["median_mm"], summary["max_mm"], summary["not_found"]) == (3.0, 30.0, 1)
    assert summary["percent_over_10mm"] == 50.0
    assert summary["ms_per_landmark"] == pytest.approx(20.0)
    assert (summary["n"], summary["n_absent"], summary["absent_reported_found"]) == (4, 2, 1)


def _manifest_rows(name: str) -> list[dict[str, Any]]:
    manifest = DATA / name / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} missing: run python bench/real_anatomy.py prepare --out data/real")
    return list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))


@pytest.mark.parametrize("name", ["afids", "cerebra"])
def test_prepared_data_set_matches_its_truth(name: str) -> None:
    rows = _manifest_rows(name)
    conditions = json.loads((DATA / name / "conditions.json").read_text(encoding="utf-8"))
    splits = [row["split"] for row in rows]
    assert splits.count("train") == 1
    assert splits.count("test") >= 10
    provenance = (DATA / "PROVENANCE.md").read_text(encoding="utf-8")
    for holder in ("Alaa Taha", "Clément POIRET", "Louis Collins"):  # both wheels' licences, the MNI notice
        assert holder in provenance
    names = set(io.read_landmarks(DATA / name / rows[0]["landmarks"]))
    assert len(names) == {"afids": 32, "cerebra": 24}[name]
    for row in rows[1:]:
        truth = conditions[row["case_id"]]
        written = io.read_landmarks(DATA / name / row["landmarks"])
        assert set(written) == names - set(truth["absent"])
        for landmark, point in written.items():
            np.testing.assert_allclose(point, truth["truth_lps_mm"][landmark], atol=1e-3)
    fov = conditions["test_fov_crop"]
    assert 0 < len(fov["absent"]) < len(names)
