"""bench/real_ct.py: the three-patient manifest, written only when the third scan is there."""

from __future__ import annotations

import csv
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = runpy.run_path(str(ROOT / "bench" / "real_ct.py"), run_name="real_ct")


def test_three_patient_manifest_adds_the_slicerio_scan_for_training(tmp_path: Path) -> None:
    out = tmp_path / "real_ct"
    out.mkdir()
    scan = tmp_path / "real_sdm" / "source" / "CTChest4.nrrd"
    assert BENCH["three_patient_manifest"](out, scan) is None  # not there: nothing written
    assert not (out / "manifest_three_patients.csv").exists()
    scan.parent.mkdir(parents=True)
    scan.write_bytes(b"stand-in")
    written = BENCH["three_patient_manifest"](out, scan)
    rows = list(csv.DictReader(written.open()))
    assert [(row["case_id"], row["split"]) for row in rows] == [
        ("lung1", "train"),
        ("ts_abdomen", "train"),
        ("ctchest4", "train"),
        ("lung1_val", "val"),
        ("lung2", "test"),
        ("ts_chest", "test"),
    ]
    assert (out / rows[2]["image"]).resolve() == scan.resolve()  # relative to the manifest
