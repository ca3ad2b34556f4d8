"""The plausibility guard of a rigid answer: bounds, a similarity check, and a SimpleITK fallback.

A learnt search can leave its basin on data unlike its training data (a phantom-trained or
single-scan-trained agent on another patient's CT rotates away by 100-250 degrees), and a
refinement started there stays there. :func:`guard_alignment` checks the final answer:

- **bounds**: no translation may move more than ``max_translation_mm`` and no rotation angle
  more than ``max_rotation_deg`` away from the start (defaults: ``BOUND_FACTOR`` times the
  world's misalignment range, the range its agent was trained on);
- **similarity**: mutual information (32-bin histogram) on the fixed body (the finest
  level's images, the same seeded samples for every pose) at the answer must reach
  ``1 - METRIC_TOLERANCE`` of the better of the start's and SimpleITK's moments
  initialisation's (centres of mass aligned); an answer that maps the samples outside the
  moving image fails;
- **peak**: the answer must sit on a peak of that similarity: ``PEAK_RATIO`` times the median
  over its neighbours at +-``PEAK_STEP`` mm / degrees per parameter.

An implausible answer is replaced by SimpleITK's (versor rigid, Mattes MI, from the moments
initialisation and from the start; the better metric wins) with ``AlignConfig.fallback:
sitk``, or is marked ``"refused"`` with ``fallback: none`` (:func:`agents.search.register`
then raises instead of returning it). The answer's ``fallback`` and ``fallback_reason`` say
which happened and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from agents.search.align_config import AlignConfig, Alignment, with_final_answer
from envs.core import (
    Volume,
    apply_rigid,
    body_mask,
    euler_matrix,
    euler_transform,
    params_from_matrix,
    params_from_transform,
)
from envs.tasks import AlignmentPair, AlignmentWorld, RigidWorld

__all__ = [
    "BOUND_FACTOR",
    "METRIC_TOLERANCE",
    "MIN_BOUND",
    "PEAK_RATIO",
    "PEAK_STEP",
    "Plausibility",
    "check_answer",
    "guard_alignment",
    "guard_bounds",
    "similarity",
]

BOUND_FACTOR = 1.5
"""default bounds: this many times the world's misalignment range (mm, degrees) from the start"""
PEAK_RATIO = 1.3
"""the answer's mutual information must be at least this many times the median over its 12
neighbours (each parameter +-``PEAK_STEP``): a registration sits on a sharp peak of the
similarity, a wrong answer in a flat, dissimilar region (measured on a held-out real CT: about
3.2 at the right answers, 1.00-1.08 at answers 29-152 mm away)"""
PEAK_STEP = 8.0
"""the neighbours' offset (mm and degrees) of the peak test"""
MIN_BOUND = 10.0
"""the default bounds are never tighter than this (mm, degrees)"""
METRIC_TOLERANCE = 0.25
"""an answer may be this fraction worse (mutual information) than the best reference pose and still pass.
Mutual information peaks sharply at an exact copy's identity (no interpolation blur), so a
reference that lands there beats a sub-millimetre answer by a few per cent, while an answer
outside the basin keeps a small fraction of it."""
# Metric samples per evaluation (one shared random set: the poses are compared on the same points).
_METRIC_SAMPLES = 20_000
_METRIC_SEED = 12345
_HISTOGRAM_BINS = 32
# An answer whose pose maps fewer than this share of the samples into the moving image fails.
_MIN_OVERLAP = 0.1


@dataclass(frozen=True)
class Plausibility:
    """The guard's verdict on one answer.

    Attributes:
        plausible: within the bounds and at least as similar as the reference poses.
        reason: why not ("" when plausible).
        translation_mm: the largest change of one translation from the start (mm).
        rotation_deg: the largest change of one rotation angle from the start (degrees).
        metric: negative mutual information at the answer (lower is more similar; inf: no overlap).
        reference_metric: the best of the start's and the moments initialisation's.
        peak: the answer's mutual information over the median of its neighbours' (see
            ``PEAK_RATIO``).
    """

    plausible: bool
    reason: str
    translation_mm: float
    rotation_deg: float
    metric: float
    reference_metric: float
    peak: float


def guard_bounds(
    world: AlignmentWorld, config: AlignConfig, misalignment: tuple[float, float] | None = None
) -> tuple[float, float]:
    """``(max_translation_mm, max_rotation_deg)`` from the start: the config's, or the default.

    The default is ``BOUND_FACTOR`` times the wider of the world's misalignment range and
    ``misalignment`` (e.g. an evaluation's range), and at least ``MIN_BOUND``.
    """
    world_mm, world_deg = getattr(world, "misalignment", (0.0, 0.0))
    given_mm, given_deg = misalignment if misalignment is not None else (0.0, 0.0)
    return (
        config.max_translation_mm or max(MIN_BOUND, BOUND_FACTOR * max(world_mm, given_mm)),
        config.max_rotation_deg or max(MIN_BOUND, BOUND_FACTOR * max(world_deg, given_deg)),
    )


def _canonical_angles(params: NDArray) -> NDArray[np.float64]:
    """Rotation angles of ``params`` in the one decomposition :func:`params_from_matrix` gives."""
    return params_from_matrix(euler_matrix(params[3:6]), np.zeros(3))[3:6]


def _changes(start: NDArray, params: NDArray) -> tuple[float, float]:
    """The largest translation (mm) and rotation-angle (deg, wrapped to +-180) change."""
    shift = float(np.max(np.abs(params[:3] - start[:3])))
    turn = (_canonical_angles(params) - _canonical_angles(start) + 180.0) % 360.0 - 180.0
    return shift, float(np.max(np.abs(turn)))


class _Similarity:
    """Mutual information of the finest level's images under rigid poses, on one fixed sample set.

    ``_METRIC_SAMPLES`` points drawn (seeded, jittered inside their voxels) from the fixed
    body; the moving image is interpolated (linear) where each pose maps them. The value is
    negative MI (lower is more similar, as SimpleITK's Mattes metric), ``inf`` when fewer than
    ``_MIN_OVERLAP`` of the points land inside the moving image.
    """

    def __init__(self, world: AlignmentWorld, pair: AlignmentPair) -> None:
        finest = world.n_levels - 1
        self.fixed_volume: Volume = pair.fixed.levels[finest]
        self.moving_volume: Volume = pair.moving.levels[finest]
        self.center = np.asarray(pair.center_lps_mm, np.float64)
        rng = np.random.default_rng(_METRIC_SEED)
        # Samples from the body on every 2nd voxel, jittered over the 2-voxel cell: the same
        # spread as all voxels at an eighth of the mask's cost.
        body_zyx = np.argwhere(body_mask(self.fixed_volume.voxels[::2, ::2, ::2])) * 2.0
        picked = body_zyx[rng.choice(len(body_zyx), min(_METRIC_SAMPLES, len(body_zyx)), replace=False)]
        index_zyx = np.clip(
            picked + rng.uniform(-1.0, 1.0, picked.shape), 0, np.asarray(self.fixed_volume.voxels.shape) - 1
        )
        self.points = self.fixed_volume.index_to_lps(index_zyx[:, ::-1])
        self.fixed_values = ndimage.map_coordinates(
            self.fixed_volume.voxels, index_zyx.T, order=1, output=np.float32
        )
        self.shape_zyx = np.asarray(self.moving_volume.voxels.shape)

    def __call__(self, params: NDArray) -> float:
        """Negative MI at rigid ``params`` (mm, degrees about the pair's centre)."""
        index_zyx = self.moving_volume.lps_to_index(apply_rigid(params, self.center, self.points))[:, ::-1]
        inside = np.all((index_zyx >= 0) & (index_zyx <= self.shape_zyx - 1), axis=1)
        if inside.sum() < _MIN_OVERLAP * len(inside):
            return float("inf")
        moving = ndimage.map_coordinates(
            self.moving_volume.voxels, index_zyx[inside].T, order=1, output=np.float32
        )
        joint, _, _ = np.histogram2d(
            self.fixed_values[inside], moving, bins=_HISTOGRAM_BINS, range=[[0.0, 256.0], [0.0, 256.0]]
        )
        joint /= joint.sum()
        outer = joint.sum(axis=1, keepdims=True) @ joint.sum(axis=0, keepdims=True)
        nonzero = joint > 0
        return -float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))

    def moments_params(self) -> NDArray[np.float64]:
        """SimpleITK's moments initialisation as parameters: intensity centres of mass aligned."""
        centres = []
        for volume in (self.fixed_volume, self.moving_volume):
            weights = volume.voxels[::2, ::2, ::2]  # every 2nd voxel: the centre moves < 1 voxel
            if not np.any(weights > 0):
                return np.zeros(6)
            centre_zyx = np.array(ndimage.center_of_mass(weights)) * 2.0
            centres.append(volume.index_to_lps(centre_zyx[::-1]))
        return np.concatenate([centres[1] - centres[0], np.zeros(3)])


def similarity(world: AlignmentWorld, pair: AlignmentPair) -> _Similarity:
    """The guard's measure for ``pair``: called with rigid parameters (mm, degrees about the
    pair's centre) it returns the negative mutual information there (lower is more similar)."""
    return _Similarity(world, pair)


def check_answer(
    world: AlignmentWorld,
    pair: AlignmentPair,
    start: NDArray,
    params: NDArray,
    bounds: tuple[float, float],
    similarity: _Similarity | None = None,
) -> Plausibility:
    """Whether rigid ``params`` (mm, degrees) are a plausible answer from ``start`` (see the module)."""
    start = np.asarray(start, np.float64)
    params = np.asarray(params, np.float64)
    similarity = similarity or _Similarity(world, pair)
    shift, turn = _changes(start, params)
    metric = similarity(params)
    reference = min(similarity(start), similarity(similarity.moments_params()))
    offsets = [np.eye(6)[i] * sign * PEAK_STEP for i in range(6) for sign in (1.0, -1.0)]
    neighbours = np.array([similarity(params + offset) for offset in offsets])
    around = float(np.median(-np.where(np.isfinite(neighbours), neighbours, 0.0)))
    peak = -metric / around if around > 0 else float("inf")
    reasons = []
    if shift > bounds[0]:
        reasons.append(f"a translation moved {shift:.1f} mm from the start (bound {bounds[0]:g} mm)")
    if turn > bounds[1]:
        reasons.append(f"a rotation turned {turn:.1f} deg from the start (bound {bounds[1]:g} deg)")
    if not np.isfinite(metric):
        reasons.append("the images do not overlap at the answer")
    elif np.isfinite(reference) and metric > reference + METRIC_TOLERANCE * abs(reference):
        reasons.append(
            f"mutual information at the answer ({-metric:.3f}) is below {1 - METRIC_TOLERANCE:g} times "
            f"the start's / moments initialisation's ({-reference:.3f})"
        )
    elif peak < PEAK_RATIO:
        reasons.append(
            f"the answer is not a similarity peak (mutual information {-metric:.3f}, {peak:.2f} times "
            f"its neighbours' at +-{PEAK_STEP:g} mm/deg; expected >= {PEAK_RATIO:g})"
        )
    return Plausibility(not reasons, "; ".join(reasons), shift, turn, metric, reference, peak)


def _sitk_fallback(
    world: AlignmentWorld, pair: AlignmentPair, start: NDArray, similarity: _Similarity
) -> NDArray:
    """SimpleITK's rigid answer from the moments initialisation and from the start: the more similar."""
    from agents.baselines import RigidBaselineConfig, rigid_baseline

    candidates = []
    for initializer, initial in (("moments", None), ("none", euler_transform(start, pair.center_lps_mm))):
        config = RigidBaselineConfig(initializer=initializer, intensity_window=None)  # type: ignore[arg-type]
        try:
            result = rigid_baseline(
                similarity.fixed_volume, similarity.moving_volume, initial=initial, config=config
            )
        except ValueError:  # no overlap from this start: the other candidate may still work
            continue
        params = params_from_transform(result.transform, pair.center_lps_mm)
        candidates.append((similarity(params), params))
    if not candidates:
        return np.asarray(start, np.float64)
    return min(candidates, key=lambda item: item[0])[1]


def guard_alignment(
    world: AlignmentWorld,
    pair: AlignmentPair,
    start: NDArray,
    result: Alignment,
    config: AlignConfig = AlignConfig(),
    *,
    misalignment: tuple[float, float] | None = None,
) -> Alignment:
    """``result`` checked (rigid worlds with ``config.guard``); an implausible one replaced or refused.

    Returns ``result`` itself when it passes (or is not checked); with ``config.fallback ==
    "sitk"`` SimpleITK's answer (``fallback="sitk"``, appended to the trajectory at level
    ``n_levels + 1``; ``seconds`` includes the check and the fallback); with ``"none"`` the
    unchanged answer marked ``fallback="refused"``. ``misalignment`` widens the default
    bounds (see :func:`guard_bounds`).
    """
    if not config.guard or not isinstance(world, RigidWorld):
        return result
    began = time.perf_counter()
    start = np.asarray(start, np.float64)
    similarity = _Similarity(world, pair)
    verdict = check_answer(
        world, pair, start, result.params, guard_bounds(world, config, misalignment), similarity
    )
    if verdict.plausible:
        return replace(result, seconds=result.seconds + time.perf_counter() - began)
    if config.fallback == "none":
        return replace(
            result,
            seconds=result.seconds + time.perf_counter() - began,
            fallback="refused",
            fallback_reason=verdict.reason,
        )
    params = _sitk_fallback(world, pair, start, similarity)
    return with_final_answer(
        world,
        pair,
        result,
        params,
        began,
        world.n_levels + 1,
        fallback="sitk",
        fallback_reason=verdict.reason,
    )
