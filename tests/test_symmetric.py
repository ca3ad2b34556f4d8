"""The symmetric rigid search: the inverse registration searched too, the two answers averaged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from search_support import SMALL_RIGID, small_rigid_dataset

from agents.experiments import ConfigError, SdmExperiment
from agents.search import AlignConfig, AlignmentOracle, align, swapped_pair
from agents.search.symmetric import body_coverage, inverse_points
from envs.core import apply_rigid, rigid_fit
from envs.data import Dataset
from envs.tasks import UNIT, RigidWorld

RIGID = SMALL_RIGID
SYMMETRIC = AlignConfig(symmetric=True)
BIAS = np.array([3.0, -2.0, 0.0, 0.0, 0.0, 0.0])  # a network's habit: 3 mm off in x, 2 mm in y


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return small_rigid_dataset()


@pytest.fixture(scope="module")
def world(dataset: Dataset) -> RigidWorld:
    return RigidWorld(dataset, "test", variants_per_case=2, **RIGID)


def aiming_at(world: RigidWorld, offset_of: object) -> object:
    """A policy that walks to its pair's truth + ``offset_of(pair)`` (mm, degrees): a biased agent.
    Q(a) = how much closer move ``a`` brings the parameters (integer units) to that target."""
    moves = [np.repeat(np.diag(steps), 2, axis=0) * np.tile([1, -1], 6)[:, None] for steps in world.steps_int]

    def policy(batch, pair, params, level) -> np.ndarray:
        target = np.rint((pair.truth + offset_of(pair)) * UNIT)
        before = np.linalg.norm(params - target)
        return (before - np.linalg.norm(params + moves[level] - target, axis=1))[np.newaxis]

    return policy


def starts(world: RigidWorld, n: int) -> list[tuple[object, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [
        (pair := world.pair(index % world.n_variants), pair.truth + rng.uniform(-15.0, 15.0, 6))
        for index in range(n)
    ]


def test_inverse_points_undo_the_transform() -> None:
    rng = np.random.default_rng(0)
    params, center = rng.uniform(-40, 40, 6), rng.uniform(-50, 50, 3)
    points = rng.uniform(-100, 100, (20, 3))
    np.testing.assert_allclose(
        inverse_points(params, center, apply_rigid(params, center, points)), points, atol=1e-9
    )


def test_the_swapped_pair_registers_the_inverse(world: RigidWorld) -> None:
    pair = world.pair(1)
    inverse = swapped_pair(world, pair)
    assert inverse.fixed is pair.moving
    assert inverse.moving is pair.fixed
    # its truth maps the moving volume's control points back onto the fixed volume's
    mapped = apply_rigid(inverse.truth, inverse.center_lps_mm, pair.control_moving_lps_mm)
    np.testing.assert_allclose(mapped, pair.control_fixed_lps_mm, atol=0.05)
    assert world.errors_mm(inverse, np.rint(inverse.truth * UNIT))[0] < 0.05


def test_opposite_biases_of_the_two_searches_cancel(world: RigidWorld) -> None:
    biased = aiming_at(world, lambda pair: BIAS)  # the same habit in both directions
    for pair, start in starts(world, 3):
        forward = align(world, pair, biased, start)
        both = align(world, pair, biased, start, SYMMETRIC)
        assert forward.error_mm > 3.0  # the bias: |(3, -2, 0)| = 3.6 mm
        # the inverse's bias points (nearly: turned by the pair's rotation) the other way
        assert both.error_mm < 1.0
        assert both.steps > forward.steps  # both searches are counted
        np.testing.assert_array_equal(both.trajectory_params[:-1], forward.trajectory_params)
        assert both.trajectory_levels[-1] == world.n_levels - 1


def test_the_oracle_stays_below_a_millimetre(dataset: Dataset, world: RigidWorld) -> None:
    for pair, start in starts(world, 2):
        assert align(world, pair, AlignmentOracle(world), start, SYMMETRIC).error_mm < 1.0
    edges = RigidWorld(dataset, "test", variants_per_case=2, observation="both", **RIGID)
    pair = edges.pair(1)
    inverse = swapped_pair(edges, pair)  # edge channels both ways: the fixed ones are the moving pyramid's
    assert inverse.moving_edges is not None
    assert inverse.fixed_edges[0].shape == pair.fixed_edges[0].shape
    assert align(edges, pair, AlignmentOracle(edges), pair.truth + 8.0, SYMMETRIC).error_mm < 1.0


def test_a_backward_search_that_leaves_its_basin_is_outvoted(world: RigidWorld) -> None:
    """The inverse search ends 40 mm off (more than the tolerance): averaging would put the answer
    20 mm off; the forward answer, more similar by mutual information, is kept instead."""
    astray = np.array([40.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    policy = aiming_at(world, lambda pair: astray if pair.case_id.endswith("(inverse)") else np.zeros(6))
    pair, start = starts(world, 1)[0]
    forward = align(world, pair, policy, start)
    both = align(world, pair, policy, start, SYMMETRIC)
    assert forward.error_mm < 1.0
    assert both.error_mm == pytest.approx(forward.error_mm, abs=0.01)
    loose = align(world, pair, policy, start, dataclasses.replace(SYMMETRIC, symmetric_tolerance_mm=100.0))
    assert loose.error_mm > 15.0  # with a tolerance that wide the two are averaged


def test_the_combined_answer_is_the_mean_of_the_mapped_points(world: RigidWorld) -> None:
    """Without the search's grid: the average of T and the inverse of T^-1 is T itself."""
    pair = world.pair(0)
    inverse = swapped_pair(world, pair)
    points = pair.control_fixed_lps_mm
    ahead = apply_rigid(pair.truth, pair.center_lps_mm, points)
    back = inverse_points(inverse.truth, inverse.center_lps_mm, points)
    params, rms = rigid_fit(points, (ahead + back) / 2.0, pair.center_lps_mm)
    assert rms < 0.05
    np.testing.assert_allclose(params, pair.truth, atol=0.05)


def test_a_slab_is_never_searched_as_the_fixed_volume(dataset: Dataset, world: RigidWorld) -> None:
    """Partial overlap: the moving volume is a 40-70 % slab; the inverse search (the slab as the fixed
    volume, which the agent never trained on) is skipped and the forward answer stands."""
    slabs = RigidWorld(dataset, "test", variants_per_case=2, partial_fov=1.0, **RIGID)
    pair = slabs.pair(1)  # variant 1: cropped
    assert body_coverage(pair) < SYMMETRIC.symmetric_min_coverage
    assert body_coverage(world.pair(1)) > SYMMETRIC.symmetric_min_coverage  # a whole moved copy
    biased = aiming_at(slabs, lambda pair: BIAS)
    start = pair.truth + 10.0
    forward = align(slabs, pair, biased, start)
    both = align(slabs, pair, biased, start, SYMMETRIC)
    assert both.steps == forward.steps
    assert both.error_mm == forward.error_mm
    always = dataclasses.replace(SYMMETRIC, symmetric_min_coverage=0.0)
    assert align(slabs, pair, biased, start, always).steps > forward.steps


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="symmetric_tolerance_mm: expected > 0"):
        AlignConfig(symmetric=True, symmetric_tolerance_mm=0.0)
    with pytest.raises(ValueError, match=r"symmetric_min_coverage: expected 0\.\.1"):
        AlignConfig(symmetric_min_coverage=1.5)
    with pytest.raises(ConfigError, match=r"search\.symmetric: rigid runs only"):
        SdmExperiment(search=SYMMETRIC)
