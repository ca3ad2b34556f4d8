"""The shape check of landmark answers: similarity fits, the training shape, suspects searched again."""

from __future__ import annotations

import numpy as np
import pytest
from search_support import exact_q, whole_and_cropped_phantom

from agents.search import (
    LandmarkShape,
    SearchConfig,
    detect_landmarks,
    detect_with_shape,
    fit_answers,
    fit_shape,
)
from agents.search.shape import similarity
from envs.data import AugmentConfig, Dataset
from envs.phantom import LANDMARK_NAMES
from envs.tasks import LandmarkWorld

LEVELS = (8.0, 4.0, 2.0)


def _rotation(angles_rad: tuple[float, float, float]) -> np.ndarray:
    rx, ry, rz = angles_rad
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


BASE = np.random.default_rng(0).normal(0.0, 60.0, (8, 3))
NAMES = [f"p{i}" for i in range(8)]


def test_similarity_recovers_a_known_transform() -> None:
    rotation = _rotation((0.3, -0.2, 1.1))
    target = 1.15 * BASE @ rotation.T + np.array([10.0, -40.0, 300.0])
    scale, fitted, shift = similarity(BASE, target)
    assert scale == pytest.approx(1.15, abs=1e-9)
    np.testing.assert_allclose(fitted, rotation, atol=1e-9)
    np.testing.assert_allclose(shift, [10.0, -40.0, 300.0], atol=1e-6)
    assert np.linalg.det(fitted) == pytest.approx(1.0)  # a mirror image is not a pose


def test_fit_shape_aligns_scans_in_other_poses_and_measures_their_spread() -> None:
    rng = np.random.default_rng(1)
    scans = []
    for k in range(5):
        noisy = BASE + rng.normal(0.0, 2.0, BASE.shape)
        moved = (0.9 + 0.05 * k) * noisy @ _rotation((0.2 * k, 0.1, -0.3 * k)).T + 50.0 * k
        scans.append(dict(zip(NAMES, moved, strict=True)))
    del scans[3]["p2"]  # a scan may lack a landmark
    shape = fit_shape(scans, NAMES)
    assert shape.names == tuple(NAMES)
    assert shape.cases == 5
    assert np.all((shape.spread_mm > 0.5) & (shape.spread_mm < 5.0))  # the 2 mm noise, not the poses
    one = fit_shape(scans[:1], NAMES)
    np.testing.assert_allclose(one.spread_mm, 0.0, atol=1e-9)
    assert LandmarkShape.from_json(shape.to_json()).names == shape.names
    with pytest.raises(ValueError, match="3 or more"):
        fit_shape([{"p0": BASE[0], "p1": BASE[1]}], NAMES)
    with pytest.raises(ValueError, match=r"shape\.json: not a landmark shape"):
        LandmarkShape.from_json('{"names": ["a"]}')


def test_fit_answers_names_the_answer_that_disagrees_and_the_missing_one() -> None:
    shape = fit_shape([dict(zip(NAMES, BASE, strict=True))], NAMES)
    answers = dict(zip(NAMES, 1.1 * BASE @ _rotation((0.0, 0.4, 0.9)).T + 20.0, strict=True))
    answers["p3"] = answers["p3"] + np.array([0.0, 0.0, 25.0])  # a neighbour taken for it
    answers["p5"] = np.full(3, np.nan)  # not found
    fit = fit_answers(shape, answers, tolerance_mm=10.0)
    assert fit is not None
    assert fit.suspects == ["p3", "p5"]
    assert fit.agreeing == 6
    assert fit.scale == pytest.approx(1.1)
    assert fit.residual_mm[3] == pytest.approx(25.0, abs=1e-6)
    # too few answers, or most of them scattered: no fit, nothing is changed
    assert fit_answers(shape, {n: answers[n] for n in NAMES[:3]}, 10.0) is None
    rng = np.random.default_rng(2)
    scattered = {n: p + rng.normal(0, 80, 3) for n, p in answers.items()}
    assert fit_answers(shape, scattered, 10.0) is None


def test_a_fit_that_few_answers_agree_with_must_be_tight() -> None:
    base = np.random.default_rng(3).normal(0.0, 60.0, (12, 3))
    names = [f"q{i}" for i in range(12)]
    shape = fit_shape([dict(zip(names, base, strict=True))], names)
    rng = np.random.default_rng(4)
    answers = {n: p + rng.normal(0.0, 80.0, 3) for n, p in zip(names, base, strict=True)}  # 8 scattered
    for name, point in list(zip(names, base, strict=True))[:4]:
        answers[name] = point + rng.normal(0.0, 0.3, 3)  # 4 of 12 right, tightly
    fit = fit_answers(shape, answers, 10.0)
    assert fit is not None
    assert fit.agreeing == 4
    for name, point in list(zip(names, base, strict=True))[:5]:
        answers[name] = point + rng.normal(0.0, 4.0, 3)  # 5 loosely: a coincidence of wrong answers
    assert fit_answers(shape, answers, 10.0) is None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """One phantom whole and its lower 110 slices (the carina and T6 outside)."""
    return whole_and_cropped_phantom(tmp_path_factory.mktemp("shape_phantom"), 110)


@pytest.fixture(scope="module")
def shape(dataset: Dataset) -> LandmarkShape:
    return fit_shape([dataset.load("full").landmarks], LANDMARK_NAMES)


def _world(dataset: Dataset, case: str) -> LandmarkWorld:
    augment = AugmentConfig(
        variants_per_case=1, rotation_deg=10, scale=0.08, translation_mm=10, elastic_mm=3.0
    )
    return LandmarkWorld(dataset, "test", LANDMARK_NAMES, LEVELS, 25, 1, None, augment, case_ids=[case])


def _seeking(target_of):
    """A policy with the immediate rewards of moves towards ``target_of(variant, state, agent)``
    (voxels of the agent's level): the oracle when that is the landmark itself."""

    def policy(observations, variant, state, active):
        return np.stack(
            [exact_q(target_of(variant, state, agent) - state.position_zyx[agent]) for agent in active]
        )

    return policy


def _basin_policy(landmark: int, basin_mm: float, decoy_mm: float):
    """The oracle, except that one landmark is seen only within ``basin_mm`` of it: from farther
    away its agents seek a decoy ``decoy_mm`` above it (a neighbouring vertebra, say)."""

    def target_of(variant, state, agent):
        level = state.level[agent]
        target = variant.targets_zyx[level][state.landmark[agent]].copy()
        far = np.linalg.norm(state.position_zyx[agent] - target) * LEVELS[level] > basin_mm
        if state.landmark[agent] == landmark and far:
            target[0] += decoy_mm / LEVELS[level]
        return target

    return _seeking(target_of)


def test_a_miss_far_from_the_shape_is_searched_again_from_where_the_others_put_it(
    dataset: Dataset, shape: LandmarkShape
) -> None:
    world = _world(dataset, "full")
    variant = world.variant(0)
    index = LANDMARK_NAMES.index("T6_body")
    truth = variant.landmarks_lps_mm[index]
    policy = _basin_policy(index, basin_mm=15.0, decoy_mm=30.0)
    config = SearchConfig(starts=1, shape_check=True)
    plain = detect_landmarks(world, variant, policy, config=config)
    assert np.linalg.norm(plain["T6_body"].position_lps_mm - truth) > 25.0  # the decoy
    checked = detect_with_shape(world, variant, policy, config, shape)
    assert np.linalg.norm(checked["T6_body"].position_lps_mm - truth) < 2.0
    for name in LANDMARK_NAMES:  # the others keep their answers
        if name != "T6_body":
            np.testing.assert_array_equal(checked[name].position_lps_mm, plain[name].position_lps_mm)
    assert checked["T6_body"].steps > plain["T6_body"].steps  # the first search and the second
    # off (the default) or without a shape: the plain search
    off = detect_with_shape(world, variant, policy, SearchConfig(starts=1), shape)
    np.testing.assert_array_equal(off["T6_body"].position_lps_mm, plain["T6_body"].position_lps_mm)


def _two_decoys(landmark: int, decoy_mm: float):
    """The oracle, except that one landmark's first search seeks a point ``decoy_mm`` above it and
    any later search (started at the finest level) one as far below it."""
    later = {"search": False}

    def target_of(variant, state, agent):
        level = state.level[agent]
        if state.steps[agent] == 0 and level == len(LEVELS) - 1:
            later["search"] = True
        target = variant.targets_zyx[level][state.landmark[agent]].copy()
        if state.landmark[agent] == landmark:
            target[0] += (-decoy_mm if later["search"] else decoy_mm) / LEVELS[level]
        return target

    return _seeking(target_of)


def test_when_no_search_agrees_the_fitted_point_is_the_answer(dataset: Dataset, shape: LandmarkShape) -> None:
    world = _world(dataset, "full")
    variant = world.variant(0)
    index = LANDMARK_NAMES.index("T6_body")
    truth = variant.landmarks_lps_mm[index]
    config = SearchConfig(starts=1, shape_check=True)
    checked = detect_with_shape(world, variant, _two_decoys(index, 30.0), config, shape)["T6_body"]
    assert np.linalg.norm(checked.position_lps_mm - truth) < 6.0  # the shape's point: the scan's warp
    assert checked.confidence == 0.0
    assert checked.found
    off = SearchConfig(starts=1, shape_check=True, shape_fallback=False)
    kept = detect_with_shape(world, variant, _two_decoys(index, 30.0), off, shape)["T6_body"]
    assert np.linalg.norm(kept.position_lps_mm - truth) > 25.0
    # both searches at one point: the agent is taken at its word, whatever the shape says
    same = detect_with_shape(world, variant, _basin_policy(index, basin_mm=0.0, decoy_mm=30.0), config, shape)
    assert np.linalg.norm(same["T6_body"].position_lps_mm - truth) > 25.0
    assert 0.0 < same["T6_body"].confidence < 0.1  # kept, but flagged by its distance from the fit


def _grid_centre_if_absent(variant, state, agent):
    """The landmark for landmarks in the scan; the grid's centre for the others (a false detection)."""
    level = state.level[agent]
    target = variant.targets_zyx[level][state.landmark[agent]]
    if np.isnan(target[0]):
        return (np.array(variant.pyramid.levels[level].shape_zyx) - 1) / 2.0
    return target


_stay_inside = _seeking(_grid_centre_if_absent)


def test_an_answer_whose_shape_point_is_outside_the_scan_is_reported_absent(
    dataset: Dataset, shape: LandmarkShape
) -> None:
    world = _world(dataset, "crop")
    variant = world.variant(0)
    absent = [n for n, p in zip(LANDMARK_NAMES, variant.landmarks_lps_mm, strict=True) if np.isnan(p[0])]
    assert 2 <= len(absent) <= len(LANDMARK_NAMES) // 2
    config = SearchConfig(starts=1, shape_check=True)
    plain = detect_landmarks(world, variant, _stay_inside, config=config)
    assert all(plain[name].found for name in absent)  # the plain search reports them found
    checked = detect_with_shape(world, variant, _stay_inside, config, shape)
    assert [name for name in absent if checked[name].found] == []
    present = [name for name in LANDMARK_NAMES if name not in absent]
    assert all(checked[name].found for name in present)


def test_search_config_refuses_a_bad_tolerance() -> None:
    with pytest.raises(ValueError, match="shape_tolerance_mm"):
        SearchConfig(shape_tolerance_mm=0.0)


def test_answers_that_form_no_anatomy_keep_their_places_with_no_confidence(
    dataset: Dataset, shape: LandmarkShape
) -> None:
    world = _world(dataset, "full")
    variant = world.variant(0)
    offsets = np.random.default_rng(5).normal(0.0, 12.0, (len(LANDMARK_NAMES), 3))  # voxels at 2 mm

    def scattered(variant, state, agent):
        level = state.level[agent]
        shift = offsets[state.landmark[agent]] * LEVELS[-1] / LEVELS[level]
        return variant.targets_zyx[level][state.landmark[agent]] + shift

    config = SearchConfig(starts=1, shape_check=True)
    plain = detect_landmarks(world, variant, _seeking(scattered), config=config)
    checked = detect_with_shape(world, variant, _seeking(scattered), config, shape)
    assert any(d.confidence > 0.5 for d in plain.values())
    for name in LANDMARK_NAMES:
        np.testing.assert_array_equal(checked[name].position_lps_mm, plain[name].position_lps_mm)
        assert checked[name].confidence == 0.0
