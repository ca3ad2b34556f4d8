"""What every SimpleITK baseline shares: argument checks, image preparation, the registration
pipeline (multi-resolution Mattes MI with random sampling, the optimisers), its execution
and the error text that says what to try.

Points are physical LPS millimetres; a registration's transform maps FIXED points to MOVING
points (SimpleITK's convention: the fixed image is sampled, the moving one resampled).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from agents.baselines.foreground import auto_window
from envs.core import Volume, rigid_parts

__all__ = ["RegistrationResult", "StageReport"]

# Fewer voxels than this along an axis cannot hold a 3-D structure through a [4, 2, 1]
# pyramid (and Mattes' B-spline Parzen window); such input is a 2-D slice stored as 3-D.
MIN_VOXELS_PER_AXIS = 4
INITIALIZERS = ("moments", "geometry", "none")
# How the error text names the two images of a registration baseline (atlas_transfer says
# "atlas and target").
PAIR = "fixed and moving volumes"
# How far (mm) a fitted rigid `initial` may be from the transform it came from.
RIGID_FIT_TOLERANCE_MM = 1e-3
# SimpleITK reads a sampling seed of 0 as "seed from the wall clock" (sitk.sitkWallClock), so a
# config seed of 0 is passed on as this fixed seed instead; the largest one its uint32 takes.
SITK_SEED_FOR_ZERO = 2**32 - 1
MAX_SEED = SITK_SEED_FOR_ZERO - 1


def sitk_seed(seed: int) -> int:
    """The SimpleITK metric-sampling seed of a config seed: 0 maps to ``SITK_SEED_FOR_ZERO``.

    SimpleITK would otherwise seed from the wall clock on 0 and results would change from run
    to run; every other seed (1 .. ``MAX_SEED``) is passed on as it is.

    >>> sitk_seed(0) == SITK_SEED_FOR_ZERO, sitk_seed(7)
    (True, 7)
    """
    return SITK_SEED_FOR_ZERO if int(seed) == 0 else int(seed)


def check_seed(owner: str, seed: int) -> None:
    """A config seed must be an integer in ``0 .. MAX_SEED`` (SimpleITK seeds are uint32)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"{owner}: seed must be an integer in 0..{MAX_SEED}, got {seed!r}")


@dataclass(frozen=True)
class StageReport:
    """How one registration stage ended.

    Args:
        name: ``"search"`` (the atlas baseline's rotation search; ``iterations`` counts the
            rotations tried), ``"rigid"``, ``"similarity"``, ``"affine"`` or ``"bspline"``.
        metric_value: final Mattes MI at the finest level (negative; lower is better).
        iterations: optimiser iterations at the last level.
        stop_condition: SimpleITK's description of why the optimiser stopped.
        seconds: wall-clock time of the stage.
    """

    name: str
    metric_value: float
    iterations: int
    stop_condition: str
    seconds: float


@dataclass(frozen=True)
class RegistrationResult:
    """The outcome of one registration baseline.

    Args:
        transform: maps FIXED physical LPS points (mm) to MOVING points (SimpleITK's
            convention: ``fixed(p)`` corresponds to ``moving(transform(p))``). A
            ``VersorRigid3DTransform`` (SimpleITK rigid), an ``Euler3DTransform`` (elastix
            rigid) or a ``CompositeTransform`` ``[initial, bspline]`` (B-spline).
        seconds: wall-clock time of the whole call.
        metric_value: the optimiser's final metric at the finest level (Mattes MI is negative,
            lower is better; comparable only between runs on the same pair and settings).
        method: ``"sitk-rigid"``, ``"sitk-bspline"`` or ``"elastix-rigid"``.
        displacement_lps_mm: deformable methods only: ``(z, y, x, 3)`` float32 on the FIXED
            grid, LPS x, y, z components; fixed voxel centre ``p`` maps to moving point
            ``p + u(p)`` (the total mapping, ``initial`` included, minus identity).
    """

    transform: sitk.Transform
    seconds: float
    metric_value: float
    method: str
    displacement_lps_mm: NDArray[np.float32] | None = None


# ---------------------------------------------------------------------- config checks
def check_pyramid(owner: str, shrinks: Sequence[int], sigmas: Sequence[float], what: str = "") -> None:
    if len(shrinks) == 0 or any(int(f) < 1 for f in shrinks):
        raise ValueError(f"{owner}: {what}shrink_factors must be >= 1, got {shrinks}")
    if len(sigmas) != len(shrinks) or any(s < 0 for s in sigmas):
        raise ValueError(
            f"{owner}: {what}smoothing_sigmas_mm needs one value >= 0 per level "
            f"({len(shrinks)}), got {sigmas}"
        )


def _fractions_given(fraction: float | Sequence[float], levels: int) -> tuple[float, ...]:
    if isinstance(fraction, (int, float)):
        return (float(fraction),) * levels
    return tuple(float(f) for f in fraction)


def check_fractions(owner: str, fraction: float | Sequence[float], levels: int) -> None:
    fractions = _fractions_given(fraction, levels)
    if len(fractions) != levels or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(
            f"{owner}: sampling_fraction must be in (0, 1], one value or one per level "
            f"({levels}), got {fraction}"
        )


def sampling_fractions(
    size_xyz: Sequence[int],
    shrinks: Sequence[int],
    fraction: float | Sequence[float] | None,
    metric_samples: int,
) -> tuple[float, ...]:
    """Per-level sampling fractions: the given ones, or ``metric_samples`` points per level."""
    if fraction is not None:
        return _fractions_given(fraction, len(shrinks))
    fractions = []
    for factor in shrinks:
        # ShrinkImageFilter rounds each axis down (never below one voxel).
        voxels = float(np.prod([max(1, int(n) // int(factor)) for n in size_xyz]))
        fractions.append(min(1.0, metric_samples / voxels))
    return tuple(fractions)


def check_window(owner: str, window: tuple[float, float] | str | None) -> None:
    if isinstance(window, str):
        if window != "auto":
            raise ValueError(f"{owner}: intensity_window must be (low, high), 'auto' or None, got {window!r}")
        return
    if window is not None and not (len(window) == 2 and window[0] < window[1]):
        raise ValueError(f"{owner}: intensity_window must be (low, high) with low < high, got {window}")


def check_initializer(owner: str, initializer: str) -> None:
    if initializer not in INITIALIZERS:
        raise ValueError(f"{owner}: initializer must be 'moments', 'geometry' or 'none', got {initializer!r}")


def check_common(config: Any) -> str:
    """The checks shared by the registration baselines' configs; returns the config's name.

    ``config`` has the fields of the rigid and B-spline baseline configs: ``shrink_factors``,
    ``smoothing_sigmas_mm``, ``iterations``, ``histogram_bins``, ``sampling_fraction``,
    ``metric_samples``, ``threads``, ``seed`` and ``intensity_window``.
    """
    owner = type(config).__name__
    check_pyramid(owner, config.shrink_factors, config.smoothing_sigmas_mm)
    if int(config.iterations) < 1:
        raise ValueError(f"{owner}: iterations must be >= 1, got {config.iterations}")
    if int(config.histogram_bins) < 4:
        raise ValueError(f"{owner}: histogram_bins must be >= 4, got {config.histogram_bins}")
    if config.sampling_fraction is not None:
        check_fractions(owner, config.sampling_fraction, len(config.shrink_factors))
    elif int(config.metric_samples) < 100:
        raise ValueError(f"{owner}: metric_samples must be >= 100, got {config.metric_samples}")
    if config.threads is not None and int(config.threads) < 1:
        raise ValueError(f"{owner}: threads must be >= 1 or None (all cores), got {config.threads}")
    check_seed(owner, config.seed)
    check_window(owner, config.intensity_window)
    return owner


def check_config(config: object, expected: type, caller: str) -> None:
    if not isinstance(config, expected):
        raise ValueError(
            f"{caller}: config must be a {expected.__name__}, got {type(config).__name__}; "
            f"build one with {expected.__name__}(...)"
        )


# ---------------------------------------------------------------------- input checks
def check_volume(volume: object, role: str, caller: str = "atlas_transfer") -> Volume:
    """``volume`` as a :class:`Volume` (a 3-D SimpleITK image is converted); ValueError otherwise."""
    if isinstance(volume, sitk.Image):
        if volume.GetDimension() != 3:
            raise ValueError(
                f"{caller}: the {role} must be a 3-D image, got a {volume.GetDimension()}-D "
                "SimpleITK image; register volumes, not slices"
            )
        volume = Volume.from_sitk(volume, name=role)
    if not isinstance(volume, Volume):
        raise ValueError(
            f"{caller}: the {role} must be an envs.core.Volume (or a 3-D SimpleITK image), "
            f"got {type(volume).__name__}; wrap arrays with Volume(voxels_zyx, spacing_xyz_mm, ...) "
            "so that they carry their physical geometry"
        )
    if min(volume.size_xyz) < MIN_VOXELS_PER_AXIS:
        raise ValueError(
            f"{caller}: the {role} is not a 3-D volume: its size (x, y, z) is {volume.size_xyz}, "
            f"need >= {MIN_VOXELS_PER_AXIS} voxels along every axis (a 2-D slice stored as 3-D?)"
        )
    return volume


def check_pair(fixed: object, moving: object, caller: str) -> tuple[Volume, Volume]:
    return check_volume(fixed, "fixed image", caller), check_volume(moving, "moving image", caller)


def prepare_image(
    volume: Volume, role: str, window: tuple[float, float] | str | None, caller: str = "atlas_transfer"
) -> sitk.Image:
    """float32 SimpleITK image with intensities clipped to the window and shifted to >= 0.

    ``window="auto"`` picks it per image (:func:`auto_window`: the CT window for CT, robust
    percentiles for MR).
    """
    voxels = volume.voxels.astype(np.float32)
    if isinstance(window, str):
        window = auto_window(voxels)
    if window is not None:
        low, high = window
        # Clipping keeps scanner padding (-3024 HU) and metal from stretching Mattes' histogram
        # range; shifting low to 0 makes the intensities a non-negative "mass" for the moments
        # initialiser (raw HU would give air a negative weight). MI ignores the shift itself.
        np.clip(voxels, low, high, out=voxels)
        voxels -= np.float32(low)
    if float(voxels.max()) <= float(voxels.min()):
        raise ValueError(
            f"{caller}: the {role} ({volume.name or 'unnamed'}) is constant after clipping to "
            f"{window} (e.g. all air): there is nothing to register; check the volume "
            "or widen intensity_window"
        )
    return volume.with_voxels(voxels).to_sitk()


def image_centre(image: sitk.Image) -> tuple[float, ...]:
    """LPS mm of the centre of ``image``'s voxel grid."""
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])


def rigid_parts_of_initial(
    transform: object, centre: Sequence[float], caller: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(R, b)`` with ``initial(p) == R @ p + b``; ValueError unless ``initial`` is rigid.

    Fitted from mapped points, so any SimpleITK transform that is rigid in effect qualifies
    (Euler, versor, a rotation-only affine, a composite of those, an identity).
    """
    if not isinstance(transform, sitk.Transform):
        raise ValueError(
            f"{caller}: initial must be a SimpleITK transform (fixed -> moving points) or None, "
            f"got {type(transform).__name__}"
        )
    if transform.GetDimension() != 3:
        raise ValueError(f"{caller}: initial must be a 3-D transform, got {transform.GetDimension()}-D")
    try:
        return rigid_parts(transform, centre, tolerance_mm=RIGID_FIT_TOLERANCE_MM)
    except RuntimeError as error:
        raise ValueError(f"{caller}: initial cannot map points ({sitk_reason(error)})") from error
    except ValueError as error:
        raise ValueError(
            f"{caller}: initial must be rigid ({error}); pass an Euler3DTransform or "
            "VersorRigid3DTransform, or start a deformable registration with bspline_baseline"
        ) from error


# ---------------------------------------------------------------------- the pipeline
def sitk_reason(error: RuntimeError) -> str:
    """The last meaningful line of a SimpleITK exception (the rest is C++ file names)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else repr(error)
    for line in reversed(lines):
        if not line.startswith(("sitk::ERROR", "ITK ERROR")) or ":" in line:
            reason = line.split("): ")[-1]
            break
    # Some ITK messages append whole parameter vectors (thousands of numbers).
    return reason if len(reason) <= 200 else reason[:200] + " ..."


def _registration_error(
    stage: str,
    error: RuntimeError,
    initializer: str,
    caller: str = "atlas_transfer",
    pair: str = "atlas and target",
    advice: str | None = None,
) -> ValueError:
    if advice is None:
        advice = (
            f"probably do not overlap after the {initializer!r} initialisation. Try "
            "initializer='moments' or 'geometry', check that both volumes show the same body region "
            "and that their origin/direction headers are right, or raise sampling_fraction"
        )
    return ValueError(f"{caller}: the {stage} stage failed ({sitk_reason(error)}). The {pair} {advice}")


def pyramid_method(
    shrinks: Sequence[int],
    sigmas_mm: Sequence[float],
    fractions: Sequence[float],
    *,
    histogram_bins: int,
    seed: int,
    threads: int | None,
    metric: str = "mattes",
) -> sitk.ImageRegistrationMethod:
    """Mattes MI (or mean squares), random sampling, linear interpolation and the pyramid."""
    method = sitk.ImageRegistrationMethod()
    if metric == "meansquares":
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(histogram_bins))
    # RANDOM sampling in ITK v4 draws voxels and jitters each sample inside its voxel, i.e.
    # it samples physical space, which avoids the grid-aliasing bias of a regular grid. The
    # fixed seed (never 0, which SimpleITK reads as the wall clock) makes runs reproducible.
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel([float(f) for f in fractions], sitk_seed(seed))
    # With a few 10^4 samples, gradients by finite differences at the samples are cheaper than
    # precomputing gradient images of both full volumes at every level.
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([int(f) for f in shrinks])
    method.SetSmoothingSigmasPerLevel([float(s) for s in sigmas_mm])
    # Sigmas in mm, so anisotropic voxels are smoothed by the same physical amount per axis.
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    return method


def set_gradient_descent(method: sitk.ImageRegistrationMethod, iterations: int, max_step_mm: float) -> None:
    """Regular-step gradient descent whose first step moves no point more than ``max_step_mm``."""
    # Regular-step gradient descent halves its step whenever the gradient direction flips, so
    # it converges without a hand-tuned learning rate; the initial step is estimated once per
    # level so that no point moves more than max_step_mm. Scales from physical shift make one
    # unit of rotation and one mm of translation comparable.
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-3,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
        estimateLearningRate=method.Once,
        maximumStepSizeInPhysicalUnits=float(max_step_mm),
    )
    method.SetOptimizerScalesFromPhysicalShift()


def set_lbfgsb(method: sitk.ImageRegistrationMethod, iterations: int) -> None:
    """L-BFGS-B, the usual optimiser for B-spline coefficients: no scales or learning rate to tune."""
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=int(iterations),
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=2 * int(iterations),
        costFunctionConvergenceFactor=1e7,
    )


def execute(
    name: str,
    method: sitk.ImageRegistrationMethod,
    fixed: sitk.Image,
    moving: sitk.Image,
    initializer: str,
    caller: str = "atlas_transfer",
    pair: str = "atlas and target",
    advice: str | None = None,
) -> StageReport:
    """Run ``method``; a SimpleITK failure becomes a ValueError that says what to try.

    ITK's metric runs on the global default thread count whatever the method says, so that
    count is set to the method's for the call (and restored): with ``threads=1`` in a config
    the result is bit-identical from run to run, with more threads the order of the
    multithreaded sums varies (a drift of about 1e-4 mm).
    """
    start = time.perf_counter()
    saved_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(method.GetNumberOfThreads()))
    try:
        method.Execute(fixed, moving)
    except RuntimeError as error:
        raise _registration_error(name, error, initializer, caller, pair, advice) from error
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_threads)
    return StageReport(
        name=name,
        metric_value=float(method.GetMetricValue()),
        iterations=int(method.GetOptimizerIteration()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
        seconds=time.perf_counter() - start,
    )


def initial_rigid(
    fixed: sitk.Image, moving: sitk.Image, initializer: str, caller: str = "atlas_transfer"
) -> sitk.VersorRigid3DTransform:
    """The starting versor-rigid transform of an initialiser (see :data:`INITIALIZERS`)."""
    rigid = sitk.VersorRigid3DTransform()
    if initializer == "none":
        # Rotate about the fixed image's centre (better conditioned than the LPS origin), no offset.
        rigid.SetCenter(image_centre(fixed))
        return rigid
    operation = (
        sitk.CenteredTransformInitializerFilter.MOMENTS
        if initializer == "moments"
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    try:
        initial = sitk.CenteredTransformInitializer(fixed, moving, rigid, operation)
    except RuntimeError as error:
        raise ValueError(
            f"{caller}: the {initializer!r} initialisation failed ({sitk_reason(error)}); "
            "try initializer='geometry'"
        ) from error
    return sitk.VersorRigid3DTransform(initial)
