"""The landmarks' shape: one scan's answers checked against the training scans' configuration.

A landmark agent searches each landmark on its own, so a gross miss (a vertebra taken for its
neighbour, a structure of another contrast) usually sits far from where the other answers put
it. :func:`detect_with_shape` fits a similarity transform from the training scans' mean
configuration (:class:`LandmarkShape`) to the answers, robustly: every triple of answers
proposes a fit, the one that most answers agree with wins and is refitted on them. An answer
farther than its tolerance from its fitted point is a suspect: it is searched again from that
point at a finer level (``search.shape_restart_level``) and the new answer is kept when it is
nearer to the fit; when neither is within the tolerance nor near the other, the fitted point
itself is the answer (``search.shape_fallback``, confidence 0); when the fitted point is outside the scan, the
landmark is reported absent. Each answer's confidence is then multiplied by its agreement with
the fit, ``exp(-d^2 / 2 tol^2)`` for ``d`` its distance from its fitted point; when the answers
agree with no fit, every confidence is 0.
The fit needs at least 4 answers that agree (and 15 % of those found; under half of them, tightly);
otherwise nothing changes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from agents.search.landmark import detect_landmarks
from agents.search.landmark_config import Detection, SearchConfig
from agents.search.policies import LandmarkPolicy
from envs.tasks import LandmarkWorld, Variant

__all__ = ["LandmarkShape", "ShapeFit", "detect_with_shape", "fit_answers", "fit_shape", "similarity"]

MAX_TRIPLES = 400
"""proposals of the robust fit: every triple up to this many, else this many random ones"""
MIN_AGREEING = 4
"""answers that must agree with the fit before it is trusted"""
MIN_SHARE = 0.15
"""... and the share of the answers found that must agree: on a cropped real brain scan only 6 of
32 answers were right, yet those 6 put all 32 points within 2.5 mm of the truth"""
TRUSTED_SHARE = 0.5
"""below this share of agreeing answers the fit must also be tight (:data:`TIGHTNESS`)"""
DETECTION_MM = 2.0
"""the agent's own error, added to the shape's spread for the tightness"""
TIGHTNESS = 1.5
"""the most RMS residual of the agreeing answers, in units of their spread + :data:`DETECTION_MM`,
of a fit that fewer than half of the answers agree with: on another cropped brain scan, 6 of 24
wrong answers, pushed off the cut together, agreed with a compressed fit at 2.2 units (the 6
right answers of the first scan: 0.65)"""
SPREAD_FACTOR = 2.0
"""a landmark's tolerance is at least this many times its spread over the training scans"""


@dataclass(frozen=True)
class LandmarkShape:
    """The training scans' landmark configuration: mean points (mm, any frame) and spreads.

    ``spread_mm`` is each landmark's RMS distance from its mean point over the training scans
    after each scan's similarity alignment to the mean (0 with one training scan).
    """

    names: tuple[str, ...]
    mean_mm: NDArray[np.float64]  # (n, 3)
    spread_mm: NDArray[np.float64]  # (n,)
    cases: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "names": list(self.names),
                "mean_mm": np.round(self.mean_mm, 4).tolist(),
                "spread_mm": np.round(self.spread_mm, 4).tolist(),
                "cases": self.cases,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "shape.json") -> LandmarkShape:
        try:
            data = json.loads(text)
            shape = cls(
                tuple(data["names"]),
                np.asarray(data["mean_mm"], dtype=np.float64).reshape(-1, 3),
                np.asarray(data["spread_mm"], dtype=np.float64),
                int(data["cases"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{source}: not a landmark shape ({error}); delete it to rebuild it") from None
        if not len(shape.names) == len(shape.mean_mm) == len(shape.spread_mm):
            raise ValueError(f"{source}: names, mean_mm and spread_mm differ in length; delete it")
        return shape

    @classmethod
    def load(cls, path: Path) -> LandmarkShape:
        return cls.from_json(Path(path).read_text(), str(path))


def similarity(
    source: ArrayLike, target: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The least-squares similarity ``target ~ scale * R @ source + t`` (Umeyama; a proper rotation).

    ``source`` and ``target`` are ``(..., k, 3)``: one fit per leading index (a stack of point
    sets at once); returns ``scale (...)``, ``R (..., 3, 3)`` and ``t (..., 3)``.
    """
    src, dst = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=-2), dst.mean(axis=-2)
    a, b = src - mu_s[..., np.newaxis, :], dst - mu_d[..., np.newaxis, :]
    covariance = np.einsum("...ki,...kj->...ij", b, a) / src.shape[-2]
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    d = np.ones(singular.shape)
    d[..., 2] = sign
    rotation = (u * d[..., np.newaxis, :]) @ vt
    variance = np.mean(np.sum(a**2, axis=-1), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(variance > 0, np.sum(singular * d, axis=-1) / variance, 1.0)
    shift = mu_d - scale[..., np.newaxis] * np.einsum("...ij,...j->...i", rotation, mu_s)
    return scale, rotation, shift


def _apply(fit: tuple[NDArray, NDArray, NDArray], points: NDArray) -> NDArray[np.float64]:
    """``points (n, 3)`` through one fit, or through a stack of fits: ``(..., n, 3)``."""
    scale, rotation, shift = fit
    moved = np.einsum("...ij,nj->...ni", rotation, points)
    return np.asarray(scale)[..., np.newaxis, np.newaxis] * moved + np.asarray(shift)[..., np.newaxis, :]


def fit_shape(configurations: Sequence[Mapping[str, ArrayLike]], names: Sequence[str]) -> LandmarkShape:
    """Generalised Procrustes (similarity) over the training scans' landmarks (LPS mm).

    A scan may lack some landmarks; each is aligned on those it shares with the mean (at least 3).
    """
    names = list(names)
    stack = np.full((len(configurations), len(names), 3), np.nan)
    for row, points in enumerate(configurations):
        for column, name in enumerate(names):
            if name in points:
                stack[row, column] = np.asarray(points[name], dtype=np.float64)
    counts = np.sum(~np.isnan(stack[..., 0]), axis=1)
    if len(stack) == 0 or counts.max() < 3:
        raise ValueError("fit_shape: no training scan has 3 or more of the landmarks")
    mean = stack[int(np.argmax(counts))].copy()
    reference_size = float(np.sqrt(np.nansum((mean - np.nanmean(mean, axis=0)) ** 2)))
    aligned = stack.copy()
    for _ in range(10):
        for row in range(len(stack)):
            common = ~np.isnan(stack[row, :, 0]) & ~np.isnan(mean[:, 0])
            if common.sum() >= 3:
                fit = similarity(stack[row, common], mean[common])
                aligned[row] = _apply(fit, stack[row])
            else:
                aligned[row] = np.nan
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a landmark no scan aligned: NaN
            updated = np.nanmean(aligned, axis=0)
        present = ~np.isnan(updated[:, 0])
        # keep the reference scan's size: averaging aligned copies shrinks the mean a little each round
        centre = np.nanmean(updated, axis=0)
        size = np.sqrt(np.nansum((updated[present] - centre) ** 2))
        mean = centre + (updated - centre) * (reference_size / size) if size > 0 else updated
    distance_sq = np.sum((aligned - mean) ** 2, axis=2)
    present = ~np.isnan(distance_sq)
    spread = np.sqrt(np.nansum(distance_sq, axis=0) / np.maximum(present.sum(axis=0), 1))
    keep = ~np.isnan(mean[:, 0])
    return LandmarkShape(
        tuple(n for n, k in zip(names, keep, strict=True) if k), mean[keep], spread[keep], len(stack)
    )


@dataclass(frozen=True)
class ShapeFit:
    """The fit of a shape to one scan's answers: where each landmark should be, and who disagrees."""

    names: tuple[str, ...]
    expected_lps_mm: NDArray[np.float64]  # (n, 3) the mean shape through the fitted similarity
    residual_mm: NDArray[np.float64]  # (n,) answer to expected point; NaN: no answer
    tolerance_mm: NDArray[np.float64]  # (n,)
    agreeing: int
    scale: float

    @property
    def suspects(self) -> list[str]:
        """Landmarks whose answer is missing or farther than its tolerance from the fit."""
        bad = np.isnan(self.residual_mm) | (self.residual_mm > self.tolerance_mm)
        return [name for name, flag in zip(self.names, bad, strict=True) if flag]


def fit_answers(
    shape: LandmarkShape, answers: Mapping[str, ArrayLike], tolerance_mm: float
) -> ShapeFit | None:
    """The robust similarity fit of ``shape`` to ``answers`` (name -> LPS mm; NaN: none), or None
    when fewer than :data:`MIN_AGREEING` answers (or :data:`MIN_SHARE` of them) agree with any fit."""
    points = np.array([np.asarray(answers.get(n, np.full(3, np.nan)), dtype=np.float64) for n in shape.names])
    have = np.flatnonzero(~np.isnan(points[:, 0]))
    if len(have) < MIN_AGREEING:
        return None
    tolerance = np.maximum(tolerance_mm, SPREAD_FACTOR * shape.spread_mm)
    triples = list(itertools.combinations(have, 3))
    if len(triples) > MAX_TRIPLES:
        rng = np.random.default_rng(0)
        triples = [tuple(rng.choice(have, 3, replace=False)) for _ in range(MAX_TRIPLES)]
    index = np.array(triples, dtype=np.int64)  # (T, 3)
    source = shape.mean_mm[index]
    area = np.linalg.norm(np.cross(source[:, 1] - source[:, 0], source[:, 2] - source[:, 0]), axis=1)
    fits = similarity(source, points[index])  # every proposal at once
    residual = np.linalg.norm(_apply(fits, shape.mean_mm[have]) - points[have], axis=2)  # (T, have)
    inside = residual <= tolerance[have]
    # collinear triples fix no rotation; an implausible scale is no anatomy
    valid = (area >= 1e-3) & (fits[0] >= 0.5) & (fits[0] <= 2.0)
    if not valid.any():
        return None
    counts = np.where(valid, inside.sum(axis=1), -1)
    spill = np.sum(np.minimum(residual, tolerance[have]), axis=1)
    best = np.lexsort((np.arange(len(index)), spill, -counts))[0]  # most agree, then the tightest
    chosen = inside[best]
    agreeing = have[chosen]
    for _ in range(3):  # refit on the answers that agree
        if len(agreeing) < 3:
            return None
        fit = similarity(shape.mean_mm[agreeing], points[agreeing])
        residual_have = np.linalg.norm(_apply(fit, shape.mean_mm[have]) - points[have], axis=1)
        agreeing = have[residual_have <= tolerance[have]]
    if len(agreeing) < max(MIN_AGREEING, MIN_SHARE * len(have)):
        return None
    if len(agreeing) < TRUSTED_SHARE * len(have):
        noise = fit[0] * shape.spread_mm[agreeing] + DETECTION_MM
        residual_agreeing = np.linalg.norm(_apply(fit, shape.mean_mm[agreeing]) - points[agreeing], axis=1)
        if np.sqrt(np.mean((residual_agreeing / noise) ** 2)) > TIGHTNESS:
            return None
    expected = _apply(fit, shape.mean_mm)
    residual = np.linalg.norm(expected - points, axis=1)
    return ShapeFit(shape.names, expected, residual, tolerance * fit[0], len(agreeing), float(fit[0]))


def _inside(variant: Variant, point: NDArray) -> bool:
    level = len(variant.pyramid.levels) - 1
    index = variant.pyramid.index_zyx(level, point)
    return bool(np.all(index >= 0) and np.all(index < np.array(variant.pyramid.levels[level].shape_zyx)))


def detect_with_shape(
    world: LandmarkWorld,
    variant: Variant,
    policy: LandmarkPolicy,
    config: SearchConfig,
    shape: LandmarkShape | None,
    seed: int = 0,
    landmarks: Sequence[str] | None = None,
) -> dict[str, Detection]:
    """:func:`~agents.search.landmark.detect_landmarks`, then the shape check when
    ``config.shape_check`` is on and a shape is given (see the module's text)."""
    detections = detect_landmarks(world, variant, policy, landmarks=landmarks, config=config, seed=seed)
    if shape is None or not config.shape_check:
        return detections
    began = time.perf_counter()
    answers = {name: d.position_lps_mm if d.found else np.full(3, np.nan) for name, d in detections.items()}
    fit = fit_answers(shape, answers, config.shape_tolerance_mm)
    if fit is None:
        if sum(d.found for d in detections.values()) < MIN_AGREEING:
            return detections  # too few answers to try a fit
        # the answers form no anatomy together (a cropped scan's, say): none is to be trusted
        return {name: dataclasses.replace(d, confidence=0.0) for name, d in detections.items()}
    row = {name: i for i, name in enumerate(fit.names)}
    suspects = [name for name in fit.suspects if name in detections]
    outside = [name for name in suspects if not _inside(variant, fit.expected_lps_mm[row[name]])]
    again = [name for name in suspects if name not in outside]
    checked = dict(detections)
    for name in outside:
        checked[name] = dataclasses.replace(detections[name], found=False, confidence=0.0)
    if again:
        level = config.shape_restart_level
        level = min(max(level + world.n_levels if level < 0 else level, 0), world.n_levels - 1)
        starts = np.stack([fit.expected_lps_mm[row[name]][np.newaxis] for name in again])
        redone = detect_landmarks(
            world, variant, policy, landmarks=again, config=config, starts_lps_mm=starts, first_level=level
        )
        for name in again:
            new, old = redone[name], detections[name]
            expected = fit.expected_lps_mm[row[name]]
            new_residual = float(np.linalg.norm(new.position_lps_mm - expected)) if new.found else np.inf
            old_residual = fit.residual_mm[row[name]] if old.found else np.inf
            if new_residual < old_residual:
                checked[name] = new
            tolerance = fit.tolerance_mm[row[name]]
            consistent = (
                new.found
                and old.found
                and np.linalg.norm(new.position_lps_mm - old.position_lps_mm) <= tolerance / 2.0
            )
            if config.shape_fallback and min(new_residual, old_residual) > tolerance and not consistent:
                # neither search agrees with the others, nor with each other: answer where the
                # others put it, with no confidence (when both searches end at one point, the agent
                # is taken at its word: on phantoms the shape, not the agent, was off there)
                checked[name] = dataclasses.replace(
                    checked[name], position_lps_mm=expected.copy(), found=True, confidence=0.0
                )
    for name, detection in checked.items():  # an answer far from the fit is a likely miss
        if detection.found and name in row:
            distance = float(np.linalg.norm(detection.position_lps_mm - fit.expected_lps_mm[row[name]]))
            agreement = float(np.exp(-0.5 * (distance / fit.tolerance_mm[row[name]]) ** 2))
            checked[name] = dataclasses.replace(detection, confidence=detection.confidence * agreement)
    extra = (time.perf_counter() - began) / max(len(checked), 1)
    # each answer's time and steps: its first search, plus its share of the check and re-search
    return {
        name: dataclasses.replace(
            d,
            seconds=detections[name].seconds + extra,
            steps=d.steps + (detections[name].steps if d is not detections[name] else 0),
        )
        for name, d in checked.items()
    }
