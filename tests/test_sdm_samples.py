"""Subjects sampled from an SDM (``sdm.samples``): exact truth, deterministic, learnable by the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from agents.experiments.config import ConfigError, SdmConfig
from agents.search import AlignConfig, AlignmentOracle, align
from envs.phantom import PhantomConfig, mean_phantom
from envs.tasks import UNIT, DeformableWorld, model_sample_dataset, phantom_sdm, sample_subject

EXACT = {"elastic_mm": 0.0, "noise": 0.0, "gain": 0.0}


@pytest.fixture(scope="module")
def model_and_atlas():
    model = phantom_sdm(n_fields=6, k=3, spacing_mm=8.0, seed=2)
    atlas = mean_phantom(PhantomConfig(spacing_mm=4.0)).volume
    return model, atlas


def test_a_sample_is_the_atlas_warped_by_its_coefficients(model_and_atlas) -> None:
    model, atlas = model_and_atlas
    volume, field, coefficients = sample_subject(
        model, atlas, np.random.default_rng(3), spacing_mm=4.0, **EXACT
    )
    assert np.abs(coefficients).max() > 0.1
    np.testing.assert_allclose(field, model.field_on(volume, coefficients), atol=1e-4)
    warped = model.warp(atlas, volume, coefficients)
    np.testing.assert_allclose(volume.voxels, warped.voxels, atol=1e-2)
    mean = model.warp(atlas, volume, np.zeros(model.k))
    assert np.abs(volume.voxels - mean.voxels).mean() > 1.0  # the shape really changed


def test_the_world_reads_the_sampled_coefficients_as_its_truth(model_and_atlas) -> None:
    model, atlas = model_and_atlas
    dataset = model_sample_dataset(model, atlas, 2, 1, seed=5, spacing_mm=4.0, **EXACT)
    world = DeformableWorld(dataset, "train", model, atlas, levels_mm=(8.0, 4.0), obs_size=17)
    for index, case in enumerate(dataset.split("train")):
        pair = world.pair(world.pair_index(case.case_id))
        np.testing.assert_allclose(pair.truth, dataset.load(case).extras["coefficients"], atol=0.02)
        assert world.errors_mm(pair, np.rint(pair.truth * UNIT)[np.newaxis])[0] < 0.1
        start = np.zeros(model.k)
        result = align(world, pair, AlignmentOracle(world), start, AlignConfig(max_steps_per_level=60))
        assert result.initial_error_mm > 1.0, index
        assert result.error_mm < 0.5, index


def test_samples_are_deterministic_and_differ_by_index(model_and_atlas) -> None:
    model, atlas = model_and_atlas
    first = model_sample_dataset(model, atlas, 2, seed=1, spacing_mm=4.0)
    again = model_sample_dataset(model, atlas, 2, seed=1, spacing_mm=4.0)
    a, b = (d.load("sample_000").volume.voxels for d in (first, again))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, first.load("sample_001").volume.voxels)
    residual = first.load("sample_000").extras["truth_field"] - model.field_on(
        first.load("sample_000").volume, first.load("sample_000").extras["coefficients"]
    )
    assert 0.3 < np.abs(residual).mean() < 5.0  # the default residual: outside the model, small
    with_val = model_sample_dataset(model, atlas, 1, 1, seed=1, spacing_mm=4.0)
    val = with_val.load("sample_001")
    assert val.case.split == "val"
    np.testing.assert_allclose(  # validation subjects lie in the model's span: no residual
        val.extras["truth_field"], model.field_on(val.volume, val.extras["coefficients"]), atol=1e-4
    )


@pytest.mark.parametrize(
    ("name", "value"), [("spacing_mm", 0.0), ("noise", -0.1), ("gain", 1.0), ("elastic_mm", -1)]
)
def test_bad_settings_are_refused_by_name(model_and_atlas, name: str, value: float) -> None:
    model, atlas = model_and_atlas
    with pytest.raises(ValueError, match=name):
        model_sample_dataset(model, atlas, 1, **{name: value})


def test_config_refuses_a_negative_sample_count() -> None:
    with pytest.raises(ConfigError, match="samples >= 0"):
        SdmConfig(samples=-1)
    assert SdmConfig(samples=8).samples == 8


def test_a_case_with_only_a_label_map_is_scored_by_dice_at_evaluation_not_in_training(
    model_and_atlas, tmp_path
) -> None:
    from agents.experiments.metrics import sdm_dice, summarise_errors
    from envs import io
    from envs.data import Dataset

    model, atlas = model_and_atlas
    phantom = mean_phantom(PhantomConfig(spacing_mm=4.0))
    io.write_volume(phantom.volume, tmp_path / "case.nii.gz")
    io.write_volume(phantom.labels, tmp_path / "case_labels.nii.gz")
    (tmp_path / "manifest.csv").write_text(
        "case_id,image,landmarks,split,modality,labels\ncase,case.nii.gz,,test,ct,case_labels.nii.gz\n"
    )
    dataset = Dataset.from_manifest(tmp_path / "manifest.csv")
    small = {"levels_mm": (8.0, 4.0), "obs_size": 17}
    with pytest.raises(ValueError, match="label map alone does for evaluation"):
        DeformableWorld(dataset, "test", model, atlas, phantom.labels, **small).pair(0)
    world = DeformableWorld(dataset, "test", model, atlas, phantom.labels, **small, require_truth=False)
    pair = world.pair(0)
    assert np.isnan(world.errors_mm(pair, np.zeros((1, model.k), np.int64))[0])
    # the atlas is this very volume: the model's mean shape is near it; a far shape is not
    near = sdm_dice(world, phantom.labels, np.zeros(model.k), structures={"label 1": (1,)})
    far = sdm_dice(world, phantom.labels, np.full(model.k, 2.5), structures={"label 1": (1,)})
    assert set(near) == {"label 1"}
    assert near["label 1"] > far["label 1"]
    assert summarise_errors([float("nan"), 1.0, 3.0])["n"] == 2  # truthless cases leave TRE alone


def test_the_markdown_table_shows_a_missing_tre_as_a_dash_not_nan() -> None:
    from agents.experiments.reports import markdown_table

    missing = dict.fromkeys(
        ("before_mean_mm", "mean_mm", "median_mm", "p95_mm", "success_rate"), float("nan")
    )
    table = markdown_table(
        {"agent": {"sdm": {"0": {"n": 0, **missing, "median_s": 0.1, "dice_mean": 0.7}}}}, "t"
    )
    assert "| agent | sdm | 0 | 0 | - | - | - | - | - | 0.100 | 0.700 |" in table
    assert "nan" not in table
