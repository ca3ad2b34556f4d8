"""``bench_real_landmarks.py --compare``: two saved results side by side, per set and condition."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# bench/ is scripts, never imported (tests/test_layout.py): load their namespaces instead
BENCH = runpy.run_path(str(ROOT / "bench" / "bench_real_landmarks.py"), run_name="bench_real_landmarks")


def _result(path: Path, fov_mean: float, fov_absent_found: int) -> Path:
    def figures(mean: float, absent_found: int) -> dict:
        keys = ("mean_mm", "median_mm", "p95_mm", "percent_over_10mm")
        return {"n": 19, **dict.fromkeys(keys, mean), "absent_reported_found": absent_found}

    conditions = {
        "fov": {"agent": figures(fov_mean, fov_absent_found), "oracle": figures(0.0, 0)},
        "pose": {"agent": figures(1.5, 0)},
    }
    path.write_text(json.dumps({"sets": {"cerebra": {"conditions": conditions}}}), encoding="utf-8")
    return path


def test_compare_prints_each_condition_before_and_after(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = _result(tmp_path / "before.json", 48.11, 5)
    after = _result(tmp_path / "after.json", 3.25, 2)
    assert BENCH["main"](["--compare", str(before), str(after)]) == 0
    lines = capsys.readouterr().out.splitlines()
    fov = next(line for line in lines if "| fov |" in line)
    assert "48.11 -> 3.25" in fov
    assert "5.00 -> 2.00" in fov
    assert sum("| pose |" in line for line in lines) == 1
    assert not any("0.00 -> 0.00 | 0.00 -> 0.00 | 0.00" in line for line in lines)  # agent rows only


def test_compare_refuses_a_missing_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = _result(tmp_path / "before.json", 1.0, 0)
    with pytest.raises(SystemExit) as raised:
        BENCH["main"](["--compare", str(before), str(tmp_path / "missing.json")])
    assert raised.value.code == 2
    assert "missing.json not found" in capsys.readouterr().err
