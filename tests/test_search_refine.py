"""Landmark search below the grid, consensus over starts, confidence AUROC, absent landmarks scored."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from search_support import exact_q, whole_and_cropped_phantom

from agents.experiments import compute_metrics, metrics_from_rows
from agents.experiments.metrics import auroc
from agents.search import OraclePolicy, SearchConfig, detect_landmarks, scored_detections, subvoxel_offset
from envs.data import AugmentConfig, Dataset
from envs.phantom import LANDMARK_NAMES
from envs.tasks import LandmarkWorld

LEVELS = (8.0, 4.0, 2.0)
FINEST_MM = LEVELS[-1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """One phantom whole and its lower 60 slices (the carina and the upper vertebrae outside)."""
    return whole_and_cropped_phantom(tmp_path_factory.mktemp("phantom"), 60)


@pytest.fixture(scope="module")
def world(dataset: Dataset) -> LandmarkWorld:
    # Augmented variants: rotated, scaled and warped, so no landmark sits on a voxel centre.
    augment = AugmentConfig(
        variants_per_case=1, rotation_deg=10, scale=0.08, translation_mm=10, elastic_mm=3.0
    )
    return LandmarkWorld(dataset, "test", LANDMARK_NAMES, LEVELS, 25, 1, None, augment, case_ids=["full"])


# ---------------------------------------------------------------------- sub-voxel offset
def test_subvoxel_offset_inverts_exact_immediate_rewards() -> None:
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-0.5, 0.5, size=(500, 3))
    offsets[:4] = [[0.5, 0.5, 0.5], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.49, -0.49, 0.01]]
    recovered = subvoxel_offset(exact_q(offsets))
    np.testing.assert_allclose(recovered, offsets, atol=1e-6)
    # Half the difference of opposite moves (the on-axis formula) is off by up to ~15 % off axis.
    q = exact_q(offsets)
    naive = (q[:, 0::2] - q[:, 1::2]) / 2
    assert np.abs(naive - offsets).max() > 0.05


def test_subvoxel_offset_stays_in_the_voxel_and_refuses_bad_shapes() -> None:
    rng = np.random.default_rng(1)
    noisy = rng.normal(0.0, 3.0, size=(200, 6))
    offsets = subvoxel_offset(noisy)
    assert offsets.shape == (200, 3)
    assert np.all(np.abs(offsets) <= 0.5)
    np.testing.assert_array_equal(subvoxel_offset([10.0, -10.0, -10.0, 10.0, 0.0, 0.0]), [0.5, -0.5, 0.0])
    np.testing.assert_array_equal(subvoxel_offset(np.full(6, np.nan)), np.zeros(3))
    with pytest.raises(ValueError, match=r"expected Q-values \(\.\.\., 6\), got shape \(4,\)"):
        subvoxel_offset(np.zeros(4))


def test_search_config_names_the_bad_field() -> None:
    with pytest.raises(
        ValueError, match=r"search.final_point: expected one of 'min_q'.*'q_subvoxel', got 'mean'"
    ):
        SearchConfig(final_point="mean")
    with pytest.raises(ValueError, match=r"search\.consensus_radius_vox: expected >= 0"):
        SearchConfig(consensus_radius_vox=-1.0)


def test_oracle_q_subvoxel_goes_below_the_grid_floor(world: LandmarkWorld) -> None:
    variant = world.variant(world.variant_index("full", 1))
    errors = {}
    for final_point in ("min_q", "q_subvoxel"):
        detections = detect_landmarks(
            world, variant, OraclePolicy(), config=SearchConfig(final_point=final_point), seed=0
        )
        scored = scored_detections(world.landmark_names, variant.landmarks_lps_mm, detections)
        assert len(scored) == len(LANDMARK_NAMES)
        assert all(found for *_, found in scored)
        errors[final_point] = np.array([error for *_, error, _ in scored])
    # On the grid: the nearest finest voxel, so up to half a voxel per axis; median ~1 mm at 2 mm.
    assert np.all(errors["min_q"] <= np.sqrt(3) * FINEST_MM / 2 + 1e-6)
    assert np.median(errors["min_q"]) > 0.5
    # Below it: the oracle's Q-values are exact, so the offset is too, except along an axis where
    # the nearest voxel is on the grid's border (a move out has no distance): no offset there.
    nearest = np.rint(variant.targets_zyx[-1])
    on_border = np.any(
        (nearest == 0) | (nearest == np.array(variant.pyramid.levels[-1].shape_zyx) - 1), axis=1
    )
    assert np.median(errors["q_subvoxel"]) < 0.01
    assert np.all(errors["q_subvoxel"][~on_border] < 0.05)
    assert np.all(errors["q_subvoxel"][on_border] <= errors["min_q"][on_border] + 1e-9)


def test_trajectories_walk_one_voxel_a_step_from_the_start_to_the_answer(world: LandmarkWorld) -> None:
    variant = world.variant(world.variant_index("full", 1))
    start = variant.pyramid.lps_of_index(0, np.array(variant.pyramid.levels[0].shape_zyx) // 2)
    config = SearchConfig(final_point="q_subvoxel")
    detections = detect_landmarks(world, variant, OraclePolicy(), config=config, starts_lps_mm=start[None])
    spacings = np.array(LEVELS)
    for name, detection in detections.items():
        (path,) = detection.trajectories_lps_mm
        assert path.shape[1] == 3, name
        assert len(path) >= 2, name
        np.testing.assert_allclose(path[0], start, atol=1e-9)
        # Within a level each step moves one voxel of that level along one axis. The few others
        # end a level: back into the oscillation cycle (at most 2 voxels), then re-snapped to the
        # finer grid (at most half a coarser voxel per axis) and one finer step.
        steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
        one_voxel = np.isclose(steps[:, None], spacings[None], atol=1e-6).any(axis=1)
        assert np.count_nonzero(~one_voxel) <= 2 * len(LEVELS), name
        assert np.all(steps[~one_voxel] <= 2 * spacings[0] + 1e-6), name
        for spacing in spacings:
            assert np.isclose(steps, spacing, atol=1e-6).any(), f"{name}: no step of {spacing} mm"
        # The sub-voxel answer lies within half a finest voxel (per axis) of the path's last voxel.
        assert np.all(np.abs(detection.position_lps_mm - path[-1]) <= FINEST_MM / 2 + 1e-6), name


# ---------------------------------------------------------------------- consensus and confidence
def _decoy_policy(decoy_starts: set[int], n_starts: int, shift_mm: float):
    """The oracle, except that starts in ``decoy_starts`` seek a point ``shift_mm`` off in x."""

    def policy(observations, variant, state, active):
        q = np.empty((len(active), 6))
        for row, agent in enumerate(active):
            level = state.level[agent]
            target = variant.targets_zyx[level][state.landmark[agent]].copy()
            if agent % n_starts in decoy_starts:
                target[2] += shift_mm / LEVELS[level]
            position = state.position_zyx[agent]
            q[row] = exact_q(target - position)
        return q

    return policy


def test_consensus_drops_an_outlier_start_and_confidence_counts_agreement(world: LandmarkWorld) -> None:
    variant = world.variant(0)
    truth = variant.landmarks_lps_mm[LANDMARK_NAMES.index("carina")]
    starts = np.repeat(variant.pyramid.lps_of_index(0, variant.body_centre_zyx)[np.newaxis], 3, axis=0)
    config = SearchConfig(starts=3, final_point="q_subvoxel")
    agreeing = detect_landmarks(
        world, variant, _decoy_policy(set(), 3, 0.0), ["carina"], config, starts_lps_mm=starts
    )["carina"]
    one_off = detect_landmarks(
        world, variant, _decoy_policy({2}, 3, 30.0), ["carina"], config, starts_lps_mm=starts
    )["carina"]
    two_off = detect_landmarks(
        world, variant, _decoy_policy({1, 2}, 3, 30.0), ["carina"], config, starts_lps_mm=starts
    )["carina"]
    assert np.linalg.norm(agreeing.position_lps_mm - truth) < 0.05
    assert agreeing.confidence == pytest.approx(1.0)
    # The decoy start ended ~30 mm away: dropped from the answer, ~0 weight in the confidence.
    assert np.linalg.norm(one_off.start_positions_lps_mm[2] - truth) > 25.0
    assert np.linalg.norm(one_off.position_lps_mm - truth) < 0.05
    assert one_off.confidence == pytest.approx(2 / 3)
    # Two of three at the decoy: the consensus is the decoy, and the confidence says only 2/3.
    assert np.linalg.norm(two_off.position_lps_mm - truth) > 25.0
    assert two_off.confidence == pytest.approx(2 / 3)
    # Two starts that disagree: no start near their median, no confidence.
    config_two = SearchConfig(starts=2, final_point="q_subvoxel")
    split = detect_landmarks(
        world, variant, _decoy_policy({1}, 2, 30.0), ["carina"], config_two, starts_lps_mm=starts[:2]
    )["carina"]
    assert split.confidence < 0.01  # each 7.5 finest voxels from their midpoint
    assert split.end_q_values is not None
    assert split.end_q_values.shape == (2, 6)


# ---------------------------------------------------------------------- AUROC
def _pairwise_auroc(scores: list[float], positive: list[bool]) -> float:
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p, n in itertools.product(
            [s for s, y in zip(scores, positive, strict=True) if y],
            [s for s, y in zip(scores, positive, strict=True) if not y],
        )
    ]
    return float(np.mean(pairs))


def test_auroc_perfect_inverted_tied_and_one_class() -> None:
    labels = [True, True, True, False, False]
    assert auroc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 1.0
    assert auroc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 0.0
    assert auroc([0.5] * 5, labels) == 0.5
    # One tie across the classes (0.7 vs 0.7): half a pair of six.
    assert auroc([0.9, 0.7, 0.8, 0.7, 0.1], labels) == pytest.approx(5.5 / 6)
    assert np.isnan(auroc([0.1, 0.2], [True, True]))
    assert np.isnan(auroc([], []))
    with pytest.raises(ValueError, match="finite"):
        auroc([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="equal-length"):
        auroc([0.1, 0.2], [True])


def test_auroc_matches_the_pairwise_count_with_many_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = list(rng.integers(0, 4, size=17) / 4)  # many ties
        positive = list(rng.random(17) < 0.4)
        if all(positive) or not any(positive):
            continue
        assert auroc(scores, positive) == pytest.approx(_pairwise_auroc(scores, positive))


def test_confidence_metrics_flag_misses() -> None:
    errors = [0.5, 1.0, 2.0, 30.0, 50.0, np.nan]
    confidence = [0.9, 0.8, 0.3, 0.6, 0.1, 0.0]  # one miss (30 mm) above a hit (2 mm)
    metrics = compute_metrics(errors, [True] * 5 + [False], [0.01] * 6, confidence=confidence)
    assert metrics["confidence_auroc"] == pytest.approx(5 / 6)  # the NaN error (no answer) is left out
    assert metrics["kept_at_conf_0.5"] == pytest.approx(3 / 5)
    assert metrics["miss_rate_at_conf_0.5"] == pytest.approx(1 / 3)
    assert metrics["miss_rate_at_conf_0.75"] == 0.0
    assert np.isnan(compute_metrics([1.0], [True], [0.01], confidence=[0.5])["confidence_auroc"])


# ---------------------------------------------------------------------- absent landmarks
@pytest.fixture(scope="module")
def cropped_world(dataset: Dataset) -> LandmarkWorld:
    return LandmarkWorld(dataset, "test", LANDMARK_NAMES, LEVELS, 25, 1, None, None, case_ids=["crop"])


def _stay_policy(observations, variant, state, active):
    """Steps up and down in z where it starts: every level ends there (so it always "finds")."""
    q = np.zeros((len(active), 6))
    odd = state.position_zyx[active, 0] % 2 == 1
    q[odd, 1] = 1.0  # -z from odd slices
    q[~odd, 0] = 1.0  # +z from even ones
    return q


def test_absent_landmarks_are_scored_not_dropped(cropped_world: LandmarkWorld) -> None:
    variant = cropped_world.variant(0)
    absent = [n for n, p in zip(LANDMARK_NAMES, variant.present(), strict=True) if not p]
    assert "carina" in absent
    assert len(absent) < len(LANDMARK_NAMES)
    oracle = detect_landmarks(cropped_world, variant, OraclePolicy(), config=SearchConfig(starts=2))
    # The default skips absent landmarks (what validation scores); include_absent keeps them.
    default = scored_detections(LANDMARK_NAMES, variant.landmarks_lps_mm, oracle)
    assert {name for name, *_ in default} == set(LANDMARK_NAMES) - set(absent)
    scored = scored_detections(LANDMARK_NAMES, variant.landmarks_lps_mm, oracle, include_absent=True)
    assert [name for name, *_ in scored] == list(LANDMARK_NAMES)
    for name, truth, _, _error, found in scored:
        assert (name in absent) == bool(np.isnan(truth[0]))
        assert found == (name not in absent)  # the oracle walks out of the scan for absent ones
    rows = [
        {
            "method": "oracle",
            "landmark": name,
            "error_mm": error,
            "found": found,
            "seconds": 0.01,
            "confidence": detection.confidence,
            "true_x_lps": truth[0],
        }
        for name, truth, detection, error, found in scored
    ]
    # A policy that stops anywhere: false detections of the absent ones, present ones found far off.
    stay = detect_landmarks(cropped_world, variant, _stay_policy, config=SearchConfig(starts=1))
    rows += [
        {
            "method": "stay",
            "landmark": name,
            "error_mm": error,
            "found": found,
            "seconds": 0.01,
            "confidence": detection.confidence,
            "true_x_lps": truth[0],
        }
        for name, truth, detection, error, found in scored_detections(
            LANDMARK_NAMES, variant.landmarks_lps_mm, stay, include_absent=True
        )
    ]
    metrics = metrics_from_rows(rows)
    n_present = len(LANDMARK_NAMES) - len(absent)
    oracle_all, stay_all = metrics["oracle"]["all"], metrics["stay"]["all"]
    assert (oracle_all["n"], oracle_all["n_absent"]) == (n_present, len(absent))
    assert (oracle_all["absent_correct"], oracle_all["false_detections"]) == (len(absent), 0)
    assert oracle_all["misses"] == 0
    assert oracle_all["within_2mm"] == 1.0
    assert (stay_all["absent_correct"], stay_all["false_detections"]) == (0, len(absent))
    assert metrics["stay"]["carina"]["false_detections"] == 1
    # A present landmark the search does not find is a miss of that landmark.
    lost = compute_metrics(
        [np.nan, 1.0, np.nan], [False, True, False], [0.01] * 3, present=[True, True, False]
    )
    assert (lost["n"], lost["not_found"], lost["misses"], lost["absent_correct"]) == (2, 1, 1, 1)


def test_a_landmark_most_starts_leave_is_reported_absent(cropped_world: LandmarkWorld) -> None:
    variant = cropped_world.variant(0)

    def first_start_stays(observations, variant, state, active):
        """Start 0 of each landmark steps in place; starts 1 and 2 walk out through the bottom (-z)."""
        q = _stay_policy(observations, variant, state, active)
        leaving = active % 3 != 0
        q[leaving] = 0.0
        q[leaving, 1] = 1.0
        return q

    starts = np.repeat(variant.pyramid.lps_of_index(0, variant.body_centre_zyx)[np.newaxis], 3, axis=0)
    names = ["L2_body"]
    majority = detect_landmarks(cropped_world, variant, first_start_stays, names, SearchConfig(), starts)
    assert not majority["L2_body"].found  # 2 of 3 starts pushed against the border
    np.testing.assert_allclose(majority["L2_body"].position_lps_mm, starts[0], atol=2 * FINEST_MM)
    every = SearchConfig(absent_share=1.0)  # absent only when every start left (the rule before)
    assert detect_landmarks(cropped_world, variant, first_start_stays, names, every, starts)["L2_body"].found
    assert detect_landmarks(cropped_world, variant, _stay_policy, names, SearchConfig(), starts)[
        "L2_body"
    ].found
    with pytest.raises(ValueError, match=r"search\.absent_share: expected a share in \(0, 1\], got 0"):
        SearchConfig(absent_share=0.0)
