"""``bench_rigid_drift.py``: one level's search from the truth, with the oracle and a drifting policy."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

from agents.search import AlignmentOracle
from envs.data import Dataset
from envs.phantom import PhantomConfig, phantom_dataset
from envs.tasks import UNIT, RigidWorld

ROOT = Path(__file__).resolve().parent.parent
# bench/ is scripts, never imported (tests/test_layout.py): load their namespaces instead
BENCH = runpy.run_path(str(ROOT / "bench" / "bench_rigid_drift.py"), run_name="bench_rigid_drift")
SMALL = {
    "levels_mm": (8.0, 4.0),
    "obs_size": 17,
    "translation_steps_mm": (6.0, 1.0),
    "rotation_steps_deg": (6.0, 1.0),
}


@pytest.fixture(scope="module")
def world() -> RigidWorld:
    dataset: Dataset = phantom_dataset(1, 0, 0, seed=6, config=PhantomConfig(spacing_mm=4.0))
    return RigidWorld(dataset, "train", variants_per_case=2, contrast="same", **SMALL)


def test_the_oracle_holds_the_truth_and_returns_to_it_from_a_jittered_start(world: RigidWorld) -> None:
    pair = world.pair(1)
    truth = np.rint(pair.truth * UNIT).astype(np.int64)
    oracle = AlignmentOracle(world)
    at_truth = BENCH["search_level"](world, pair, oracle, 1, truth)
    assert world.errors_mm(pair, at_truth[np.newaxis])[0] < 1.5  # one step of 1 mm / 1 degree at most
    jittered = truth + 2 * world.steps_int[1] * np.array([1, -1, 1, -1, 1, -1])
    assert world.errors_mm(pair, jittered[np.newaxis])[0] > 3.0
    back = BENCH["search_level"](world, pair, oracle, 1, jittered)
    assert world.errors_mm(pair, back[np.newaxis])[0] < 1.5


def test_a_policy_that_always_moves_one_way_drifts_away_from_the_truth(world: RigidWorld) -> None:
    pair = world.pair(1)
    truth = np.rint(pair.truth * UNIT).astype(np.int64)

    def push_x(observations, *context) -> np.ndarray:
        q_values = np.zeros((1, world.n_actions))
        q_values[0, 0] = 1.0  # action 0: + the level's step on the first parameter
        return q_values

    final = BENCH["search_level"](world, pair, push_x, 1, truth)
    assert final[0] - truth[0] == BENCH["MAX_STEPS"] * world.steps_int[1, 0]
    assert world.errors_mm(pair, final[np.newaxis])[0] > 50.0
