"""The plausibility guard of rigid answers: bad policies caught and replaced, good ones never overridden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from search_support import SMALL_RIGID, small_rigid_dataset

from agents.experiments.config import RigidExperiment
from agents.experiments.registration_eval import guarded_outcome
from agents.search import (
    AlignConfig,
    AlignmentOracle,
    align,
    check_answer,
    guard_alignment,
    guard_bounds,
    register,
    write_registration,
)
from agents.search.guard import MIN_BOUND, PEAK_RATIO
from envs.core import euler_transform, resample_isotropic
from envs.data import Dataset
from envs.tasks import RIGID_ACTION_NAMES, UNIT, RigidWorld

RIGID = SMALL_RIGID
PLUS_RX, MINUS_RX = RIGID_ACTION_NAMES.index("+rx"), RIGID_ACTION_NAMES.index("-rx")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return small_rigid_dataset()


@pytest.fixture(scope="module")
def world(dataset: Dataset) -> RigidWorld:
    return RigidWorld(dataset, "test", variants_per_case=2, **RIGID)


def spin(batch, pair, params, level) -> np.ndarray:
    """A bad policy: always +rx (rotates through several turns, far outside any bound)."""
    q = np.zeros((1, len(RIGID_ACTION_NAMES)))
    q[0, PLUS_RX] = 1.0
    return q


def tilt(batch, pair, params, level) -> np.ndarray:
    """A subtler bad policy: tilts rx to +20 deg from wherever it starts and stays (inside the bounds)."""
    q = np.zeros((1, len(RIGID_ACTION_NAMES)))
    q[0, PLUS_RX if params[3] < (pair.truth[3] + 20.0) * UNIT else MINUS_RX] = 1.0
    return q


def starts(world: RigidWorld, n: int) -> list[tuple[object, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [
        (pair := world.pair(index % world.n_variants), pair.truth + rng.uniform(-20.0, 20.0, 6))
        for index in range(n)
    ]


def test_the_oracle_is_never_overridden(world: RigidWorld) -> None:
    results = []
    for pair, start in starts(world, 4):
        result = align(world, pair, AlignmentOracle(world), start)
        guarded = guard_alignment(world, pair, start, result)
        results.append(guarded.fallback)
        assert guarded.error_mm == result.error_mm < 1.0
    assert results == [""] * 4


def test_a_spinning_policy_is_caught_and_the_fallback_is_good(world: RigidWorld) -> None:
    pair, start = starts(world, 2)[1]
    result = align(world, pair, spin, start)
    assert result.error_mm > 50.0
    guarded = guard_alignment(world, pair, start, result)
    assert guarded.fallback == "sitk"
    assert "rotation turned" in guarded.fallback_reason
    assert guarded.error_mm < 2.0
    assert guarded.trajectory_levels[-1] == world.n_levels + 1
    assert guarded.seconds > result.seconds


def test_a_tilt_inside_the_bounds_is_caught_by_the_similarity(world: RigidWorld) -> None:
    pair, start = starts(world, 1)[0]
    result = align(world, pair, tilt, start)
    assert result.error_mm > 10.0
    verdict = check_answer(world, pair, start, result.params, guard_bounds(world, AlignConfig()))
    assert verdict.rotation_deg < 45.0  # within 1.5 x the world's 30 deg: the bounds alone pass it
    assert not verdict.plausible
    assert "mutual information" in verdict.reason
    assert "rotation turned" not in verdict.reason
    truth = check_answer(world, pair, start, pair.truth, guard_bounds(world, AlignConfig()))
    assert truth.plausible
    assert truth.metric < verdict.metric
    assert truth.peak >= PEAK_RATIO > verdict.peak  # the truth is a similarity peak, the tilt is not


def test_bounds_come_from_the_config_or_the_misalignment_range(world: RigidWorld) -> None:
    assert guard_bounds(world, AlignConfig()) == (45.0, 45.0)
    assert guard_bounds(world, AlignConfig(), misalignment=(60.0, 60.0)) == (90.0, 90.0)
    assert guard_bounds(world, AlignConfig(max_translation_mm=10.0, max_rotation_deg=5.0)) == (10.0, 5.0)
    still = RigidWorld(world.dataset, "test", **{**RIGID, "misalignment_mm": 0.0, "misalignment_deg": 0.0})
    assert guard_bounds(still, AlignConfig()) == (MIN_BOUND, MIN_BOUND)
    with pytest.raises(ValueError, match=r"search\.fallback: expected 'sitk'"):
        AlignConfig(fallback="maybe")
    with pytest.raises(ValueError, match=r"search\.max_translation_mm"):
        AlignConfig(max_rotation_deg=-1.0)


def test_register_refuses_with_fallback_none_and_writes_the_flag(
    dataset: Dataset, world: RigidWorld, tmp_path: Path
) -> None:
    fixed = dataset.load("phantom_test_000").volume
    truth = np.array([8.0, -6.0, 5.0, 6.0, -4.0, 5.0])
    transform = euler_transform(truth, fixed.center_lps_mm)
    moving = resample_isotropic(
        fixed, 4.0, transform=transform.GetInverse(), fill_value=float(fixed.voxels.min())
    )
    with pytest.raises(ValueError, match=r"implausible .* no result was written"):
        register(fixed, moving, spin, world, config=AlignConfig(fallback="none"))
    answer, result = register(fixed, moving, spin, world)
    assert result.fallback == "sitk"
    written = write_registration(tmp_path, fixed, moving, answer, result, param_names=world.param_names)
    summary = json.loads(written["summary"].read_text())
    assert summary["fallback"] == "sitk"
    assert "rotation turned" in summary["fallback_reason"]


def test_a_refused_answer_counts_as_no_registration(world: RigidWorld) -> None:
    pair, start = starts(world, 2)[1]
    result = align(world, pair, spin, start)
    experiment = RigidExperiment(search=AlignConfig(fallback="none"))
    outcome, guarded = guarded_outcome("agent+guard", world, pair, start, result, experiment, "mono", 20.0)
    assert guarded.fallback == "refused"
    assert outcome.after_mm == outcome.before_mm == result.initial_error_mm
