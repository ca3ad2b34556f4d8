"""Per-episode appearance: a seeded bank of intensity maps and noise cubes applied to patches.

Spatial augmentation needs a resample, so it is drawn per *variant* (:mod:`envs.data.augment`).
Appearance needs none: a patch is re-rendered as ``table[a][patch]`` (one table lookup), so the
landmark env draws an appearance index ``a`` per episode, and the pose that carries ``a``
re-renders exactly what the env returned. The bank is a deterministic function of
``(config, seed, patch edge)``.

An appearance is a uint8 -> uint8 map: an optional non-monotonic CT-to-MR-like remap
(:func:`~envs.data.augment.multimodal_lut`, with probability ``config.contrast``) or random
smooth remap (:func:`random_remap`, with probability ``config.remap``), a gamma curve,
a window shift and stretch, an optional inversion (``config.invert``), and additive noise from
a small bank of fixed noise cubes. Index 0 is the identity. Level 0 (outside the field of view)
always stays 0, and tissue never becomes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.interpolate import PchipInterpolator

from envs.data.augment import AugmentConfig, multimodal_lut

__all__ = ["NOISE_CUBES", "AppearanceBank", "appearance_bank", "random_remap"]

#: Fixed noise cubes in a bank; appearance ``a`` uses cube ``a % NOISE_CUBES``.
NOISE_CUBES = 8
# Noise is quantised to 32 codes (steps of 0.25 std-dev, +-3.9): the code sits in the high byte of
# a uint16 index whose low byte is the voxel, so noise and the intensity map are one lookup.
_CODES = 32
_CODE_VALUES = (np.arange(_CODES) - (_CODES - 1) / 2) / 4.0


@dataclass(frozen=True, repr=False)
class AppearanceBank:
    """``n`` appearances for patches of edge ``edge_vox``; index 0 is the identity.

    Attributes:
        tables: ``(n, 32 * 256)`` uint8: entry ``code * 256 + v`` is the output of voxel value
            ``v`` under noise code ``code``; the first 256 entries are the noise-free map.
        noisy: ``(n,)`` whether appearance ``a`` adds noise.
        codes: ``(NOISE_CUBES, edge, edge, edge)`` uint16 noise codes shifted into the high byte.
    """

    tables: NDArray[np.uint8]
    noisy: NDArray[np.bool_]
    codes: NDArray[np.uint16]

    def __len__(self) -> int:
        return len(self.tables)

    def __repr__(self) -> str:
        return (
            f"AppearanceBank(n={len(self)}, edge_vox={self.codes.shape[-1]}, noisy={int(self.noisy.sum())})"
        )

    @property
    def nbytes(self) -> int:
        return self.tables.nbytes + self.codes.nbytes

    def lut(self, appearance: int) -> NDArray[np.uint8]:
        """The noise-free uint8 -> uint8 map ``(256,)`` of ``appearance``."""
        return self.tables[appearance, :256]

    def render(self, patch: NDArray[np.uint8], appearance: int) -> NDArray[np.uint8]:
        """``patch`` ``(edge, edge, edge)`` uint8 under ``appearance``; appearance 0 returns ``patch``."""
        if appearance == 0:
            return patch
        if not self.noisy[appearance]:
            return np.take(self.tables[appearance, :256], patch)
        index = np.bitwise_or(self.codes[appearance % len(self.codes)], patch, dtype=np.uint16)
        return np.take(self.tables[appearance], index)

    def check(self, appearance: int) -> None:
        """Raise ``ValueError`` unless ``appearance`` indexes this bank."""
        if not 0 <= appearance < len(self):
            raise ValueError(f"appearance: expected an index in 0..{len(self) - 1}, got {appearance}")


def appearance_bank(config: AugmentConfig, seed: int, edge_vox: int) -> AppearanceBank:
    """The bank of ``config.appearances`` appearances (at least the identity) for ``edge_vox`` patches.

    Deterministic in ``(config, seed, edge_vox)``; every appearance draws the same number of
    random values, so appearance ``a`` does not change when ``config.appearances`` grows.
    """
    rng = np.random.default_rng([int(seed), 0xA99E])
    count = max(1, config.appearances)
    values = np.arange(256, dtype=np.float64)
    tables = np.empty((count, _CODES * 256), dtype=np.uint8)
    noisy = np.zeros(count, dtype=np.bool_)
    for appearance in range(count):
        draw = np.random.default_rng(rng.integers(2**63))
        lut, noise_std = _draw_map(config, draw)
        if appearance == 0:
            lut, noise_std = values, 0.0
        noisy[appearance] = noise_std > 0
        table = lut[np.newaxis, :] + 255.0 * noise_std * _CODE_VALUES[:, np.newaxis]
        table = np.clip(np.rint(table), 1, 255)
        table[:, 0] = 0  # outside the field of view stays 0 whatever the noise
        tables[appearance] = table.astype(np.uint8).reshape(-1)
    cubes = rng.standard_normal((NOISE_CUBES, edge_vox, edge_vox, edge_vox))
    codes = np.clip(np.floor(cubes * 4.0 + _CODES / 2), 0, _CODES - 1).astype(np.uint16) << 8
    return AppearanceBank(tables, noisy, codes)


def _draw_map(config: AugmentConfig, rng: np.random.Generator) -> tuple[NDArray[np.float64], float]:
    """One appearance: the float map ``(256,)`` (before rounding) and its noise std (fraction of 255)."""
    values = np.arange(256, dtype=np.float64)
    remapped = multimodal_lut(rng, jitter=0.1).astype(np.float64)
    base = remapped if rng.random() < config.contrast else values
    low, high = config.appearance_gamma
    gamma = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    shift = rng.uniform(-1, 1) * config.window * 255.0
    stretch = float(np.exp(rng.uniform(-1, 1) * np.log1p(config.window)))
    inverted = bool(rng.random() < config.invert)
    mapped = _window(base, gamma, shift, stretch, inverted)
    noise_std = float(rng.uniform(0.0, config.appearance_noise))
    # Drawn last and only when enabled, so that banks without it stay byte-identical.
    if config.remap > 0 and rng.random() < config.remap:
        # Not inverted: the curve is already arbitrary, and inversion would turn air bright.
        mapped = _window(random_remap(rng, config.remap_knots), gamma, shift, stretch, False)
    return mapped, noise_std


def random_remap(rng: np.random.Generator, knots: int = 4) -> NDArray[np.float64]:
    """A random smooth, usually non-monotonic map ``(256,)`` of uint8 levels (floats in 0..255).

    Domain randomisation for contrasts never seen in training (T1w -> T2w-like orderings, where
    fluid turns bright and white matter dark): a shape-preserving cubic (PCHIP, no overshoot)
    through ``(0, 0)``, a dark anchor ``(b, y_b)`` with ``b`` uniform in 2..12 and ``y_b <= b``
    (air and the dimmest background stay dim, so a patch's air never turns into tissue), and
    ``knots`` interior knots at random levels above ``b`` with outputs uniform in 24..255, then
    ``(255, y)`` with ``y`` uniform in 24..255. Level 0 maps to 0.

    Example:
        >>> curve = random_remap(np.random.default_rng(0), knots=4)
        >>> curve.shape, float(curve[0]), bool(curve.max() <= 255)
        ((256,), 0.0, True)
    """
    anchor = float(rng.uniform(2.0, 12.0))
    inner = np.sort(rng.uniform(anchor + 1.0, 254.0, knots))
    xs = np.concatenate([[0.0, anchor], inner, [255.0]])
    ys = np.concatenate([[0.0, rng.uniform(0.0, anchor)], rng.uniform(24.0, 255.0, knots + 1)])
    # Knots drawn at (almost) the same level would make PCHIP's slopes blow up: keep them apart.
    xs = np.maximum.accumulate(xs + np.arange(len(xs)) * 1e-3)
    curve = PchipInterpolator(xs, ys)(np.arange(256, dtype=np.float64))
    curve[0] = 0.0
    return np.clip(curve, 0.0, 255.0)


def _window(base: NDArray[np.float64], gamma: float, shift: float, stretch: float, inverted: bool) -> NDArray:
    """``base`` ``(256,)`` under a gamma curve, a window shift and stretch, and an optional inversion."""
    mapped = 255.0 * (base / 255.0) ** gamma
    mapped = (mapped - 127.5) * stretch + 127.5 + shift
    return 256.0 - mapped if inverted else mapped
