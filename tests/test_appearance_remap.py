"""The random intensity remap of the appearance bank (``augment.remap``): off by default and then
byte-identical to the banks made before it existed; on, a family of smooth non-monotonic maps
that keep "outside the field of view" at 0, never turn tissue into 0 and keep air dim."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from envs.data import AugmentConfig, appearance_bank
from envs.data.appearance import random_remap

# SHA-256 of (tables, noisy, codes) of banks made by the code before ``augment.remap`` existed
# (edge 9, seed 0): old runs' appearance indices must keep rendering what they were trained on.
BANKS_BEFORE_REMAP = {
    64: (AugmentConfig(appearances=64), "8df74674f6acd85edebe9275a7bd909466a8edf8be0e876a18d90a8936c84c43"),
    16: (
        AugmentConfig(appearances=16, contrast=0.5, invert=0.3),
        "930d662a4926b375465201364e69c03bd07d1659f9babd4febc8edde3282af99",
    ),
}


def _digest(config: AugmentConfig) -> str:
    bank = appearance_bank(config, seed=0, edge_vox=9)
    return hashlib.sha256(bank.tables.tobytes() + bank.noisy.tobytes() + bank.codes.tobytes()).hexdigest()


@pytest.mark.parametrize("count", sorted(BANKS_BEFORE_REMAP))
def test_banks_without_remap_are_byte_identical_to_the_banks_before_it(count: int) -> None:
    config, digest = BANKS_BEFORE_REMAP[count]
    assert config.remap == 0.0  # the default is off
    assert _digest(config) == digest


def test_remap_changes_only_the_appearances_that_draw_it() -> None:
    off = appearance_bank(AugmentConfig(appearances=64), seed=2, edge_vox=9)
    on = appearance_bank(AugmentConfig(appearances=64, remap=0.5), seed=2, edge_vox=9)
    np.testing.assert_array_equal(on.lut(0), np.arange(256))  # index 0 stays the identity
    np.testing.assert_array_equal(on.codes, off.codes)
    np.testing.assert_array_equal(on.noisy, off.noisy)  # the noise draws come before the remap's
    changed = [a for a in range(64) if not np.array_equal(on.tables[a], off.tables[a])]
    assert 16 <= len(changed) <= 48  # about half of 63, not all, not none
    # a remapped appearance keeps its noise: the noisy tables differ from the clean map by code
    noisy = next(a for a in changed if on.noisy[a])
    assert not np.array_equal(on.tables[noisy, :256], on.tables[noisy, 256 * 31 : 256 * 32])


def test_remapped_appearances_reorder_tissues_and_keep_zero_and_air() -> None:
    config = AugmentConfig(appearances=48, remap=1.0, appearance_noise=0.0, window=0.0)
    bank = appearance_bank(config, seed=5, edge_vox=9)
    patch = np.random.default_rng(0).integers(0, 256, (9, 9, 9)).astype(np.uint8)
    patch[:2] = 0
    non_monotonic = 0
    for appearance in range(1, len(bank)):
        lut = bank.lut(appearance).astype(int)
        rendered = bank.render(patch, appearance)
        np.testing.assert_array_equal(rendered == 0, patch == 0)  # 0 stays 0, tissue never 0
        assert lut[1] <= 60  # the dimmest level (air) stays dim under any gamma of the default range
        non_monotonic += bool(np.any(np.diff(lut[1:]) < 0))
    assert non_monotonic >= 0.7 * (len(bank) - 1)  # most maps reorder the tissues


def test_random_remap_is_a_seeded_smooth_curve_through_its_knots() -> None:
    curve = random_remap(np.random.default_rng(3), knots=4)
    np.testing.assert_array_equal(curve, random_remap(np.random.default_rng(3), knots=4))
    assert curve.shape == (256,)
    assert curve[0] == 0.0
    assert np.all((curve >= 0) & (curve <= 255))
    # PCHIP is smooth (no jumps between neighbouring levels) and does not overshoot its knots
    assert np.max(np.abs(np.diff(curve[12:]))) < 64
    curves = np.stack([random_remap(np.random.default_rng(seed), knots=6) for seed in range(20)])
    assert np.std(curves[:, 128]) > 30  # the family spreads over the range, not one shape


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"remap": 1.5}, r"augment\.remap: expected a probability in \[0, 1\], got 1\.5"),
        ({"remap": -0.1}, r"augment\.remap: expected a probability"),
        ({"remap_knots": 0}, r"augment\.remap_knots: expected an integer in 1\.\.16"),
        ({"remap_knots": 2.5}, r"augment\.remap_knots: expected an integer in 1\.\.16 .*got 2\.5"),
        ({"remap_knots": True}, r"augment\.remap_knots"),
    ],
)
def test_bad_remap_settings_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**change)


def test_remap_is_an_appearance_field_so_cached_variants_stay_valid() -> None:
    config = AugmentConfig(remap=0.7, remap_knots=6)
    assert config.spatial() == AugmentConfig().spatial()
    assert replace(config, remap=0.0).spatial() == config.spatial()
