"""The SimpleITK rigid registration baseline: what a user would run instead of a rigid agent.

:func:`rigid_baseline` aligns two volumes with a multi-resolution versor-rigid registration
(Mattes mutual information, regular-step gradient descent), optionally after a coarse
rotation pre-search that widens its capture range. Its transform maps FIXED LPS points (mm)
to MOVING points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from agents.baselines.sitk_common import (
    PAIR,
    RegistrationResult,
    check_common,
    check_config,
    check_initializer,
    check_pair,
    execute,
    image_centre,
    initial_rigid,
    prepare_image,
    pyramid_method,
    rigid_parts_of_initial,
    sampling_fractions,
    set_gradient_descent,
)
from envs.core import Volume, compose_rigid, matrix_offset, rigid_transform

__all__ = ["RigidBaselineConfig", "rigid_baseline"]

# Rotation candidates of the pre-search that are refined at the coarsest level before the
# best one seeds the full pyramid (the best raw grid point alone is often a neighbour of the
# right basin, not inside it).
_PRESEARCH_CANDIDATES = 4
# Iterations of each candidate's refinement: enough to fall into the nearest basin (measured:
# 30-50), while a candidate that oscillates cannot use up the full per-level budget.
_PRESEARCH_REFINE_ITERATIONS = 100
# Metric samples of the pre-search (fewer than the registration's: it ranks coarse poses).
_PRESEARCH_SAMPLES = 10_000


@dataclass(frozen=True)
class RigidBaselineConfig:
    """Settings of :func:`rigid_baseline` (defaults chosen on 2 mm torso CT phantoms).

    Multi-resolution versor-rigid registration with Mattes mutual information and regular-step
    gradient descent. Why these defaults: heavier smoothing at the coarse levels widens the
    capture range for large rotations at no cost in final accuracy; a sample count per level
    (rather than one fraction) keeps the coarsest level from running short of samples; the
    pre-search (off by default) widens the capture range further, up to right-angle turns.

    Args:
        shrink_factors: pyramid shrink factors in voxels, coarse to fine.
        smoothing_sigmas_mm: Gaussian smoothing per level in mm, coarse to fine.
        iterations: maximum optimiser iterations per level.
        histogram_bins: Mattes mutual-information histogram bins.
        sampling_fraction: fraction of the (shrunk) fixed voxels the metric samples, one value
            or one per level; ``None`` samples ``metric_samples`` points per level instead
            (capped at all voxels), so the cost does not grow with the volume size.
        metric_samples: metric sample points per level when ``sampling_fraction`` is None.
        initializer: ``"geometry"`` aligns the grid centres, ``"moments"`` the intensity centres
            of mass, ``"none"`` trusts the headers (identity). Ignored when ``initial`` is given.
        rotation_presearch_deg: > 0 evaluates the metric at the coarsest level on a grid of
            rotations (``-deg .. +deg`` about each axis, in ``rotation_presearch_step_deg``
            steps, about the fixed centre), refines the best few and starts from the best.
        rotation_presearch_step_deg: grid step of the pre-search in degrees.
        max_step_mm: largest point displacement of one optimiser step at the start of a level.
        intensity_window: intensities are clipped to ``[low, high]`` (HU for CT) before
            registering; ``None`` keeps them as they are (e.g. MR).
        threads: SimpleITK threads; ``None`` uses all cores.
        seed: seed of the metric's random sampling (0 .. 2**32 - 2); the same seed gives the
            same result. SimpleITK reads 0 as "seed from the wall clock", so 0 is passed to it
            as 2**32 - 1 (:func:`agents.baselines.sitk_common.sitk_seed`).
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (8.0, 4.0, 1.0)
    iterations: int = 500
    histogram_bins: int = 32
    sampling_fraction: float | tuple[float, ...] | None = None
    metric_samples: int = 50_000
    initializer: Literal["geometry", "moments", "none"] = "geometry"
    rotation_presearch_deg: float = 0.0
    rotation_presearch_step_deg: float = 30.0
    max_step_mm: float = 4.0
    intensity_window: tuple[float, float] | None = (-1000.0, 2000.0)
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        owner = check_common(self)
        check_initializer(owner, self.initializer)
        if not 0.0 <= self.rotation_presearch_deg <= 180.0:
            raise ValueError(
                f"{owner}: rotation_presearch_deg must be in [0, 180] (0 = no pre-search), "
                f"got {self.rotation_presearch_deg}"
            )
        if self.rotation_presearch_deg > 0 and not (
            0.0 < self.rotation_presearch_step_deg <= self.rotation_presearch_deg
        ):
            raise ValueError(
                f"{owner}: rotation_presearch_step_deg must be in (0, rotation_presearch_deg="
                f"{self.rotation_presearch_deg}], got {self.rotation_presearch_step_deg}"
            )
        if not self.max_step_mm > 0:
            raise ValueError(f"{owner}: max_step_mm must be > 0, got {self.max_step_mm}")


def _rotation_presearch(
    fixed: sitk.Image, moving: sitk.Image, start: sitk.VersorRigid3DTransform, config: RigidBaselineConfig
) -> sitk.VersorRigid3DTransform:
    """Best start among rotations of ``start`` about the fixed centre (coarsest level only).

    The metric is evaluated on the full grid of rotations (SimpleITK's exhaustive optimiser over
    the three Euler angles, translation fixed); the best few grid points are then refined with
    a short gradient descent at the same level and the one with the best metric wins. The
    candidates share one random sample set, so their metric values are comparable.
    """
    caller = "rigid_baseline"
    # The coarsest pyramid level, built once: every Execute would otherwise smooth and shrink
    # both full-size volumes again, which costs more than the whole search at that level.
    shrink, sigma = int(config.shrink_factors[0]), float(config.smoothing_sigmas_mm[0])
    fixed, moving = (
        sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, sigma) if sigma > 0 else image, [shrink] * 3)
        for image in (fixed, moving)
    )
    given = config.sampling_fraction
    if given is not None and not isinstance(given, (int, float)):
        given = given[0]  # the coarsest level's
    samples = min(config.metric_samples, _PRESEARCH_SAMPLES)
    fraction = sampling_fractions(fixed.GetSize(), (1,), given, samples)

    def coarse_method() -> sitk.ImageRegistrationMethod:
        return pyramid_method(
            (1,),
            (0.0,),
            fraction,
            histogram_bins=config.histogram_bins,
            seed=config.seed,
            threads=config.threads,
        )

    steps = int(np.floor(config.rotation_presearch_deg / config.rotation_presearch_step_deg + 1e-9))
    centre = start.GetCenter()
    search = sitk.Euler3DTransform()
    search.SetCenter(centre)
    method = coarse_method()
    method.SetOptimizerAsExhaustive([steps] * 3 + [0] * 3, np.deg2rad(config.rotation_presearch_step_deg))
    method.SetOptimizerScales([1.0] * 6)
    method.SetMovingInitialTransform(start)
    method.SetInitialTransform(search, inPlace=True)
    grid: list[tuple[float, tuple[float, ...]]] = []
    method.AddCommand(
        sitk.sitkIterationEvent,
        lambda: grid.append((method.GetMetricValue(), tuple(method.GetOptimizerPosition()))),
    )
    execute("rotation pre-search", method, fixed, moving, config.initializer, caller, PAIR)

    start_parts = matrix_offset(start)
    best: tuple[float, sitk.VersorRigid3DTransform] | None = None
    for _, angles in sorted(grid)[:_PRESEARCH_CANDIDATES]:
        turn = sitk.Euler3DTransform(centre, *angles[:3], (0.0, 0.0, 0.0))
        # start(turn(p)): rotate about the fixed centre first, then apply the start pose.
        candidate = rigid_transform(*compose_rigid(start_parts, matrix_offset(turn)), centre)
        refine = coarse_method()
        iterations = min(config.iterations, _PRESEARCH_REFINE_ITERATIONS)
        set_gradient_descent(refine, iterations, config.max_step_mm)
        refine.SetInitialTransform(candidate, inPlace=True)
        report = execute("rotation pre-search", refine, fixed, moving, config.initializer, caller, PAIR)
        if best is None or report.metric_value < best[0]:
            best = (report.metric_value, candidate)
    assert best is not None  # the grid always holds the start itself
    return best[1]


def rigid_baseline(
    fixed: Volume,
    moving: Volume,
    *,
    initial: sitk.Transform | None = None,
    config: RigidBaselineConfig = RigidBaselineConfig(),
) -> RegistrationResult:
    """Rigidly register ``moving`` to ``fixed`` with SimpleITK (versor rigid, Mattes MI).

    Args:
        fixed: the reference volume (any spacing and orientation).
        moving: the volume to align to it (same modality for best results).
        initial: a rigid starting pose mapping fixed to moving points (e.g. an agent's
            estimate); replaces ``config.initializer`` when given.
        config: see :class:`RigidBaselineConfig`.

    Returns:
        A :class:`RegistrationResult` whose ``transform`` is a ``VersorRigid3DTransform``.

    Raises:
        ValueError: an input is not a 3-D volume or is constant, ``initial`` is not rigid, the
            config is not a :class:`RigidBaselineConfig`, or the registration fails (typically:
            no overlap).
    """
    start_time = time.perf_counter()
    caller = "rigid_baseline"
    check_config(config, RigidBaselineConfig, caller)
    fixed_volume, moving_volume = check_pair(fixed, moving, caller)
    fixed_image = prepare_image(fixed_volume, "fixed image", config.intensity_window, caller)
    moving_image = prepare_image(moving_volume, "moving image", config.intensity_window, caller)

    if initial is None:
        rigid = initial_rigid(fixed_image, moving_image, config.initializer, caller)
    else:
        centre = image_centre(fixed_image)
        rigid = rigid_transform(*rigid_parts_of_initial(initial, centre, caller), centre)
    if config.rotation_presearch_deg > 0:
        rigid = _rotation_presearch(fixed_image, moving_image, rigid, config)

    method = pyramid_method(
        config.shrink_factors,
        config.smoothing_sigmas_mm,
        sampling_fractions(
            fixed_image.GetSize(), config.shrink_factors, config.sampling_fraction, config.metric_samples
        ),
        histogram_bins=config.histogram_bins,
        seed=config.seed,
        threads=config.threads,
    )
    set_gradient_descent(method, config.iterations, config.max_step_mm)
    method.SetInitialTransform(rigid, inPlace=True)
    report = execute("rigid", method, fixed_image, moving_image, config.initializer, caller, PAIR)
    return RegistrationResult(
        transform=rigid,
        seconds=time.perf_counter() - start_time,
        metric_value=report.metric_value,
        method="sitk-rigid",
    )
