"""``bench_real_sdm.py``: the lung recipe on a synthetic chest, and a clear error without the data."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
# bench/ is scripts, never imported (tests/test_layout.py): load their namespaces instead
BENCH = runpy.run_path(str(ROOT / "bench" / "bench_real_sdm.py"), run_name="bench_real_sdm")


def _chest(direction_flip: bool) -> tuple[sitk.Image, np.ndarray]:
    """Air outside, a soft-tissue body, two lungs (the patient's right at -x in LPS) and a trachea."""
    z, y, x = np.mgrid[0:40, 0:48, 0:64]
    hu = np.full((40, 48, 64), -1000, np.int16)
    body = ((x - 32) / 28) ** 2 + ((y - 24) / 20) ** 2 < 1
    hu[body] = 40
    right = ((x - 20) / 8) ** 2 + ((y - 24) / 10) ** 2 + ((z - 20) / 14) ** 2 < 1  # low x = patient right
    left = ((x - 44) / 8) ** 2 + ((y - 24) / 10) ** 2 + ((z - 20) / 14) ** 2 < 1
    hu[right | left] = -850
    hu[30:, 23:26, 31:34] = -950  # a trachea reaching the top face: the lungs stay open to the outside
    image = sitk.GetImageFromArray(hu[:, :, ::-1] if direction_flip else hu)
    image.SetSpacing((3.0, 3.0, 3.0))
    if direction_flip:  # the same anatomy stored with x flipped: the labels must follow LPS, not columns
        image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
        image.SetOrigin((63 * 3.0, 0, 0))
    truth = np.where(right, 1, np.where(left, 2, 0))
    return image, truth[:, :, ::-1] if direction_flip else truth


@pytest.mark.parametrize("flipped", [False, True])
def test_lung_labels_finds_both_lungs_on_their_side_in_patient_space(flipped: bool) -> None:
    image, truth = _chest(flipped)
    labels = sitk.GetArrayFromImage(BENCH["lung_labels"](image))
    for value in (1, 2):
        overlap = np.logical_and(labels == value, truth == value).sum()
        assert 2 * overlap / ((labels == value).sum() + (truth == value).sum()) > 0.95
    assert not labels[truth == 0][: 10**6].astype(bool).mean() > 0.02  # little beyond the lungs


def test_lung_labels_refuses_a_scan_without_air_inside_the_body() -> None:
    solid = sitk.GetImageFromArray(np.full((10, 12, 14), 40, np.int16))
    with pytest.raises(ValueError, match="no air region"):
        BENCH["lung_labels"](solid)


def test_prepare_without_the_real_ct_names_the_missing_file_and_the_fix(tmp_path: Path, capsys) -> None:
    code = BENCH["main"](["prepare", "--out", str(tmp_path / "out"), "--real-ct", str(tmp_path / "none")])
    assert code == 2
    error = capsys.readouterr().err
    assert "lung1_ct_3mm.nrrd: not found" in error
    assert "bench/real_ct.py prepare" in error
    assert not (tmp_path / "out").exists()
