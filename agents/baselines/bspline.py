"""The SimpleITK B-spline registration baseline: what a user would run instead of an SDM agent.

:func:`bspline_baseline` refines any global alignment (e.g. :func:`rigid_baseline`'s) with a
cubic B-spline on the fixed grid. Its transform maps FIXED LPS points (mm) to MOVING points;
the result also holds that mapping as a displacement field on the fixed grid.
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
    check_pair,
    execute,
    prepare_image,
    pyramid_method,
    sampling_fractions,
    set_lbfgsb,
)
from envs.core import Volume, field_from_transform

__all__ = ["BSplineBaselineConfig", "bspline_baseline"]


@dataclass(frozen=True)
class BSplineBaselineConfig:
    """Settings of :func:`bspline_baseline` (defaults chosen on 2 mm torso CT phantoms).

    SimpleITK's metrics use dense B-spline Jacobians, so one metric evaluation costs
    ~ samples x control points, and the samples must well outnumber the control points or the
    fit follows the noise. The defaults are the best trade-off found on a smooth bump
    deformation: a finer mesh cost more for no gain, L-BFGS-B was no better at a similar or
    higher cost, and a full-resolution level added time for nothing (the mesh needs no
    finest detail).

    Args:
        mesh_spacing_mm: B-spline control-point spacing in mm (the mesh is the only
            regulariser: smaller follows finer deformations and more noise).
        shrink_factors: pyramid shrink factors in voxels, coarse to fine.
        smoothing_sigmas_mm: Gaussian smoothing per level in mm, coarse to fine.
        iterations: maximum optimiser iterations per level.
        histogram_bins: Mattes mutual-information histogram bins.
        sampling_fraction: fraction of the (shrunk) fixed voxels the metric samples, one value
            or one per level; ``None`` samples ``metric_samples`` points per level.
        metric_samples: metric sample points per level when ``sampling_fraction`` is None.
        optimizer: ``"gradient_descent"`` (regular-step gradient descent on unit scales) or
            ``"lbfgsb"`` (L-BFGS-B).
        metric: ``"mattes"`` mutual information (any intensity relation) or
            ``"meansquares"`` (same modality and calibration only).
        max_step_mm: length (mm) of the first gradient-descent step of the coefficient vector
            per level; later steps halve on every reversal (that optimiser only).
        intensity_window: clip intensities to ``[low, high]`` first; ``None`` keeps them.
        threads: SimpleITK threads; ``None`` uses all cores.
        seed: seed of the metric's random sampling (0 .. 2**32 - 2); the same seed gives the
            same result. SimpleITK reads 0 as "seed from the wall clock", so 0 is passed to it
            as 2**32 - 1 (:func:`agents.baselines.sitk_common.sitk_seed`).
    """

    mesh_spacing_mm: float = 60.0
    shrink_factors: tuple[int, ...] = (4, 2)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0)
    iterations: int = 30
    histogram_bins: int = 32
    sampling_fraction: float | tuple[float, ...] | None = None
    metric_samples: int = 20_000
    optimizer: Literal["lbfgsb", "gradient_descent"] = "gradient_descent"
    metric: Literal["mattes", "meansquares"] = "mattes"
    max_step_mm: float = 2.0
    intensity_window: tuple[float, float] | None = (-1000.0, 2000.0)
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        owner = check_common(self)
        if not (np.isfinite(self.mesh_spacing_mm) and self.mesh_spacing_mm > 0):
            raise ValueError(f"{owner}: mesh_spacing_mm must be > 0, got {self.mesh_spacing_mm}")
        if self.optimizer not in ("lbfgsb", "gradient_descent"):
            raise ValueError(
                f"{owner}: optimizer must be 'lbfgsb' or 'gradient_descent', got {self.optimizer!r}"
            )
        if self.metric not in ("mattes", "meansquares"):
            raise ValueError(f"{owner}: metric must be 'mattes' or 'meansquares', got {self.metric!r}")
        if not self.max_step_mm > 0:
            raise ValueError(f"{owner}: max_step_mm must be > 0, got {self.max_step_mm}")


def bspline_baseline(
    fixed: Volume,
    moving: Volume,
    *,
    initial: sitk.Transform | None = None,
    config: BSplineBaselineConfig = BSplineBaselineConfig(),
) -> RegistrationResult:
    """Deformably register ``moving`` to ``fixed`` with a cubic B-spline (SimpleITK).

    The B-spline only refines: it does not align the volumes globally. Pass the result of
    :func:`rigid_baseline` (or any transform) as ``initial``; it is composed under the B-spline,
    so the total mapping is ``initial(bspline(p))``.

    Args:
        fixed: the reference volume; the control-point mesh covers its grid.
        moving: the volume to align to it.
        initial: any fixed -> moving transform to start from; ``None`` trusts the headers.
        config: see :class:`BSplineBaselineConfig`.

    Returns:
        A :class:`RegistrationResult` with ``transform = CompositeTransform([initial, bspline])``
        (just ``[bspline]`` without ``initial``) and ``displacement_lps_mm`` of that total
        mapping on the fixed grid.

    Raises:
        ValueError: an input is not a 3-D volume or is constant, the config is not a
            :class:`BSplineBaselineConfig`, or the registration fails (typically: no overlap).
    """
    start_time = time.perf_counter()
    caller = "bspline_baseline"
    check_config(config, BSplineBaselineConfig, caller)
    fixed_volume, moving_volume = check_pair(fixed, moving, caller)
    if initial is not None and not isinstance(initial, sitk.Transform):
        raise ValueError(
            f"{caller}: initial must be a SimpleITK transform (fixed -> moving points) or None, "
            f"got {type(initial).__name__}"
        )
    fixed_image = prepare_image(fixed_volume, "fixed image", config.intensity_window, caller)
    moving_image = prepare_image(moving_volume, "moving image", config.intensity_window, caller)

    # Mesh cells per axis so that the control points are ~mesh_spacing_mm apart.
    extent = [n * s for n, s in zip(fixed_image.GetSize(), fixed_image.GetSpacing(), strict=True)]
    mesh = [max(1, round(e / config.mesh_spacing_mm)) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed_image, mesh, order=3)

    method = pyramid_method(
        config.shrink_factors,
        config.smoothing_sigmas_mm,
        sampling_fractions(
            fixed_image.GetSize(), config.shrink_factors, config.sampling_fraction, config.metric_samples
        ),
        histogram_bins=config.histogram_bins,
        seed=config.seed,
        threads=config.threads,
        metric=config.metric,
    )
    if config.optimizer == "lbfgsb":
        set_lbfgsb(method, config.iterations)
    else:
        # Every B-spline coefficient is a control-point displacement in mm, so unit scales are
        # right and the step is set directly: estimating scales by physical shift would move
        # each of the ~1000 coefficients in turn (measured: 4 s per level at 2 mm, 30 % of
        # the run). Regular-step descent normalises the gradient, so the first step moves
        # the coefficient vector by max_step_mm and halves on every reversal.
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(config.max_step_mm),
            minStep=1e-3,
            numberOfIterations=int(config.iterations),
            relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
            estimateLearningRate=method.Never,
        )
    if initial is not None:
        method.SetMovingInitialTransform(initial)
    method.SetInitialTransform(bspline, inPlace=True)
    advice = (
        "probably do not overlap under `initial` (the scanner headers when it is None). Start from "
        "a global alignment, e.g. initial=rigid_baseline(fixed, moving).transform, check that both "
        "volumes show the same body region, or raise sampling_fraction"
    )
    report = execute("bspline", method, fixed_image, moving_image, "none", caller, PAIR, advice)

    # SimpleITK applies the last transform of a composite first: initial(bspline(p)).
    transform = sitk.CompositeTransform([initial, bspline] if initial is not None else [bspline])
    return RegistrationResult(
        transform=transform,
        seconds=time.perf_counter() - start_time,
        metric_value=report.metric_value,
        method="sitk-bspline",
        displacement_lps_mm=field_from_transform(transform, fixed_volume),
    )
