"""Atlas-based landmark detection: what a user would run instead of a landmark agent.

:func:`atlas_transfer` registers one *atlas* (a training volume whose landmarks are known)
to a *target* volume with SimpleITK and carries the landmarks over;
:func:`agents.baselines.multi_atlas.multi_atlas_transfer` does that for several atlases and
fuses the estimates with a per-landmark coordinate-wise median. All points are LPS
millimetres (SimpleITK's world frame, see :mod:`envs.core`).

The registration is a standard intensity-based pipeline, started robustly:

1. intensities windowed per image (``"auto"``: the CT window for CT, robust percentiles for MR,
   whose units are arbitrary);
2. foreground masks of both images (:mod:`~agents.baselines.foreground`): the metric samples
   the atlas only where it has data and counts a sample only where it lands in the target's
   data, so a skull-stripped target (0 outside the brain) is not pulled onto the atlas's
   skull and scalp;
3. a centred start (moments of the foreground masks, or of the intensities, or the grid
   centres) and a coarse search over initial rotations (:mod:`~agents.baselines.start`);
4. multi-resolution stages with Mattes mutual information (which also handles a T1w atlas
   against a T2w target): similarity (rigid + isotropic scale; versor rigid with
   ``similarity=False``), affine, and optionally a coarse cubic B-spline (which absorbs shape
   differences that the linear stages cannot).

:meth:`AtlasConfig.legacy` gives the former pipeline (moments of the CT-windowed intensities,
rigid -> affine -> B-spline, no masks, no search), kept for comparisons.

Example:
    >>> from agents.baselines import AtlasConfig, atlas_transfer
    >>> result = atlas_transfer(atlas, atlas_landmarks, target)  # doctest: +SKIP
    >>> result.landmarks["carina"]  # LPS mm in the target  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from agents.baselines.foreground import CT_WINDOW, foreground_mask, set_masks
from agents.baselines.sitk_common import (
    StageReport,
    check_fractions,
    check_initializer,
    check_pyramid,
    check_seed,
    check_volume,
    check_window,
    execute,
    initial_rigid,
    prepare_image,
    pyramid_method,
    sampling_fractions,
    set_gradient_descent,
    set_lbfgsb,
)
from agents.baselines.start import moments_of_masks, search_rotation
from envs.core import Volume

__all__ = ["AtlasConfig", "AtlasResult", "atlas_transfer"]


@dataclass(frozen=True)
class AtlasConfig:
    """Settings of the atlas registration (defaults tuned on 2 mm torso CT phantoms and 1 mm brain MR).

    Args:
        initializer: ``"moments"`` aligns the centres of mass of the foreground masks (of the
            window-normalised intensities if ``foreground_masks`` is off), ``"geometry"``
            aligns the centres of the two grids, ``"none"`` trusts the scanner coordinates.
        rigid_iterations: maximum optimiser iterations per pyramid level, first (similarity
            or rigid) stage.
        similarity: the first stage optimises rigid motion and one isotropic scale
            (``Similarity3DTransform``, stage ``"similarity"``); ``False``: rigid only
            (``VersorRigid3DTransform``, stage ``"rigid"``).
        foreground_masks: restrict the metric to the foreground of both images
            (:func:`agents.baselines.foreground.foreground_mask`).
        mask_dilation_mm: how far the masks reach beyond the thresholded foreground (mm), so
            that the edge of the data still guides the alignment.
        rotation_search_deg, rotation_search_steps: the coarse search over initial rotations:
            ``2 * steps + 1`` angles per axis ``rotation_search_deg`` apart (the default
            ``steps=2``: 125 rotations of up to +-60 deg about each axis, a few seconds at the
            coarsest level); ``steps=0`` skips the search.
        rotation_search_iterations: rigid iterations spent refining each of the best
            rotations at the coarsest level.
        affine_iterations: maximum optimiser iterations per pyramid level, affine stage
            (0 skips the stage).
        deformable: add a cubic B-spline stage after the affine one.
        bspline_mesh_size: B-spline control-point mesh cells per axis over the atlas grid
            (coarse on purpose: the mesh is the only regulariser).
        bspline_iterations: maximum L-BFGS-B iterations per pyramid level, B-spline stage.
        bspline_shrink_factors: pyramid of the B-spline stage, coarse to fine. It stops short
            of full resolution by default: a coarse control-point mesh needs no finest detail.
        bspline_smoothing_sigmas_mm: smoothing per B-spline pyramid level in mm.
        shrink_factors: pyramid shrink factors, coarse to fine (voxels).
        smoothing_sigmas_mm: Gaussian smoothing per pyramid level in mm, coarse to fine.
        metric_samples: number of atlas points Mattes MI samples at each pyramid level
            (turned into a sampling percentage of the shrunk atlas, capped at 100 %), so the
            cost per iteration does not grow with the volume size.
        sampling_fraction: fraction of the (shrunk) atlas voxels to sample instead, one value
            or one per pyramid level; ``None`` uses ``metric_samples``.
        histogram_bins: Mattes mutual-information histogram bins.
        max_step_mm: largest point displacement of one rigid/affine optimiser step in mm
            at the start of each level (the learning rate is estimated from it).
        intensity_window: intensities are clipped to ``[low, high]`` (HU for CT) and shifted
            so that ``low`` becomes 0 before registering; ``"auto"`` picks the window per image
            (:func:`agents.baselines.foreground.auto_window`: ``(-1000, 2000)`` HU for CT, the
            minimum to the 99.5th percentile for MR); ``None`` keeps intensities as they are.
        seed: seed of the metric's random sampling (0 .. 2**32 - 2); the same seed gives the
            same result. SimpleITK reads 0 as "seed from the wall clock", so 0 is passed to it
            as 2**32 - 1 (:func:`agents.baselines.sitk_common.sitk_seed`).
        threads: SimpleITK threads for the registration; ``None`` keeps SimpleITK's default
            (all cores).
    """

    initializer: Literal["moments", "geometry", "none"] = "moments"
    rigid_iterations: int = 200
    similarity: bool = True
    foreground_masks: bool = True
    mask_dilation_mm: float = 5.0
    rotation_search_deg: float = 30.0
    rotation_search_steps: int = 2
    rotation_search_iterations: int = 30
    affine_iterations: int = 100
    deformable: bool = True
    bspline_mesh_size: int | tuple[int, int, int] = 4
    bspline_iterations: int = 30
    bspline_shrink_factors: tuple[int, ...] = (4, 2)
    bspline_smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0)
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    metric_samples: int = 20_000
    sampling_fraction: float | tuple[float, ...] | None = None
    histogram_bins: int = 32
    max_step_mm: float = 4.0
    intensity_window: tuple[float, float] | Literal["auto"] | None = "auto"
    seed: int = 0
    threads: int | None = None

    @classmethod
    def legacy(cls, **changes: object) -> AtlasConfig:
        """The former pipeline: CT window, moments of intensities, rigid -> affine -> B-spline.

        No masks, no rotation search, no scale in the first stage. Kept so that benchmarks can
        report old against new on the same data; ``changes`` override fields.
        """
        settings: dict[str, object] = {
            "similarity": False,
            "foreground_masks": False,
            "rotation_search_steps": 0,
            "intensity_window": CT_WINDOW,
        }
        settings.update(changes)
        return cls(**settings)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        check_pyramid("AtlasConfig", self.shrink_factors, self.smoothing_sigmas_mm)
        check_pyramid(
            "AtlasConfig", self.bspline_shrink_factors, self.bspline_smoothing_sigmas_mm, "bspline_"
        )
        if self.sampling_fraction is not None:
            check_fractions("AtlasConfig", self.sampling_fraction, len(self.shrink_factors))
        elif self.metric_samples < 100:
            raise ValueError(f"AtlasConfig: metric_samples must be >= 100, got {self.metric_samples}")
        if self.rotation_search_steps < 0 or not 0 < self.rotation_search_deg <= 180:
            raise ValueError(
                "AtlasConfig: need rotation_search_steps >= 0 and 0 < rotation_search_deg <= 180, got "
                f"{self.rotation_search_steps}, {self.rotation_search_deg}"
            )
        if self.mask_dilation_mm < 0 or self.rotation_search_iterations < 1:
            raise ValueError(
                "AtlasConfig: need mask_dilation_mm >= 0 and rotation_search_iterations >= 1, got "
                f"{self.mask_dilation_mm}, {self.rotation_search_iterations}"
            )
        if self.rigid_iterations < 1 or self.affine_iterations < 0 or self.bspline_iterations < 1:
            raise ValueError(
                "AtlasConfig: iteration counts must be >= 1 (affine_iterations may be 0), got "
                f"rigid={self.rigid_iterations}, affine={self.affine_iterations}, "
                f"bspline={self.bspline_iterations}"
            )
        if any(int(m) < 1 for m in self.mesh_size_xyz):
            raise ValueError(f"AtlasConfig: bspline_mesh_size must be >= 1, got {self.bspline_mesh_size}")
        check_window("AtlasConfig", self.intensity_window)
        check_initializer("AtlasConfig", self.initializer)
        check_seed("AtlasConfig", self.seed)
        if not self.max_step_mm > 0 or self.histogram_bins < 4:
            raise ValueError(
                f"AtlasConfig: need max_step_mm > 0 and histogram_bins >= 4, got "
                f"{self.max_step_mm}, {self.histogram_bins}"
            )

    def sampling_fractions(
        self, size_xyz: Sequence[int], shrink_factors: Sequence[int] | None = None
    ) -> tuple[float, ...]:
        """Metric sampling fraction per level for an atlas of ``size_xyz`` voxels.

        ``shrink_factors`` defaults to the rigid/affine pyramid. A ``sampling_fraction`` tuple
        applies to that pyramid only; other pyramids use ``metric_samples`` (or the float).
        """
        shrinks = self.shrink_factors if shrink_factors is None else tuple(shrink_factors)
        given = self.sampling_fraction
        if (
            given is not None
            and not isinstance(given, (int, float))
            and shrinks != tuple(self.shrink_factors)
        ):
            given = None  # a per-level tuple belongs to the rigid/affine pyramid only
        return sampling_fractions(size_xyz, shrinks, given, self.metric_samples)

    @property
    def mesh_size_xyz(self) -> tuple[int, int, int]:
        """B-spline mesh cells along x, y, z."""
        if isinstance(self.bspline_mesh_size, (int, np.integer)):
            return (int(self.bspline_mesh_size),) * 3
        return tuple(int(m) for m in self.bspline_mesh_size)  # type: ignore[return-value]


@dataclass(frozen=True)
class AtlasResult:
    """Landmarks carried from one atlas to the target.

    Args:
        landmarks: name -> LPS point in the target, mm, shape ``(3,)``.
        transform: maps atlas LPS points (mm) to target LPS points (mm);
            ``landmarks[k] == transform.TransformPoint(atlas_landmarks[k])``.
        seconds: wall-clock time of the whole transfer.
        metric_value: final Mattes mutual information of the last stage (negative; lower
            is better; comparable only between runs on the same pair of images).
        stages: one report per stage that ran, in order (by default ``search``,
            ``similarity``, ``affine``, ``bspline``).
    """

    landmarks: dict[str, NDArray[np.float64]]
    transform: sitk.Transform
    seconds: float
    metric_value: float
    stages: tuple[StageReport, ...] = ()


def _check_landmarks(landmarks: Mapping[str, ArrayLike]) -> dict[str, NDArray[np.float64]]:
    checked: dict[str, NDArray[np.float64]] = {}
    for name, point in landmarks.items():
        vector = np.asarray(point, dtype=np.float64).reshape(-1)
        if vector.shape != (3,) or not np.all(np.isfinite(vector)):
            raise ValueError(
                f"atlas_transfer: atlas landmark {name!r} must be 3 finite LPS coordinates in mm, "
                f"got {np.asarray(point).tolist()}"
            )
        checked[str(name)] = vector
    return checked


def _registration_method(
    config: AtlasConfig,
    fixed: sitk.Image,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    *,
    bspline: bool = False,
) -> sitk.ImageRegistrationMethod:
    """Mattes MI, linear interpolation, the masks and the pyramid (the B-spline one if ``bspline``)."""
    shrinks = config.bspline_shrink_factors if bspline else config.shrink_factors
    sigmas = config.bspline_smoothing_sigmas_mm if bspline else config.smoothing_sigmas_mm
    method = pyramid_method(
        shrinks,
        sigmas,
        config.sampling_fractions(fixed.GetSize(), shrinks),
        histogram_bins=config.histogram_bins,
        seed=config.seed,
        threads=config.threads,
    )
    set_masks(method, fixed_mask, moving_mask)
    return method


def atlas_transfer(
    atlas: Volume,
    atlas_landmarks: Mapping[str, ArrayLike],
    target: Volume,
    *,
    config: AtlasConfig = AtlasConfig(),
) -> AtlasResult:
    """Register ``atlas`` to ``target`` and carry the atlas landmarks into the target.

    Args:
        atlas: a volume with known landmarks (e.g. CT in HU); any spacing and orientation.
        atlas_landmarks: name -> LPS point in mm in the atlas.
        target: the volume to find the landmarks in; same modality as the atlas.
        config: registration settings (see :class:`AtlasConfig`).

    Returns:
        An :class:`AtlasResult` with every atlas landmark mapped to target LPS mm.

    Raises:
        ValueError: an input is not a 3-D volume, is constant, a landmark is not a finite
            3-vector, or SimpleITK fails (typically: no overlap after initialisation).
    """
    start = time.perf_counter()
    atlas = check_volume(atlas, "atlas")
    target = check_volume(target, "target")
    points = _check_landmarks(atlas_landmarks)

    # SimpleITK estimates T mapping *fixed* points to *moving* points (it resamples the moving
    # image on the fixed grid through T). With fixed = atlas and moving = target, T maps an
    # atlas point straight to the corresponding target point: landmarks are carried forward
    # by T exactly, with no inversion (a B-spline has no closed-form inverse).
    fixed = prepare_image(atlas, "atlas", config.intensity_window)
    moving = prepare_image(target, "target", config.intensity_window)
    fixed_mask = moving_mask = None
    if config.foreground_masks:
        fixed_mask = foreground_mask(fixed, config.mask_dilation_mm)
        moving_mask = foreground_mask(moving, config.mask_dilation_mm)
    stages: list[StageReport] = []

    if config.initializer == "moments" and fixed_mask is not None and moving_mask is not None:
        rigid = moments_of_masks(fixed_mask, moving_mask)
    else:
        rigid = initial_rigid(fixed, moving, config.initializer)
    if config.rotation_search_steps > 0:
        rigid, report = search_rotation(
            fixed,
            moving,
            rigid,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            step_deg=config.rotation_search_deg,
            steps=config.rotation_search_steps,
            shrink=config.shrink_factors[0],
            sigma_mm=config.smoothing_sigmas_mm[0],
            samples=config.metric_samples,
            histogram_bins=config.histogram_bins,
            seed=config.seed,
            threads=config.threads,
            iterations=config.rotation_search_iterations,
            max_step_mm=config.max_step_mm,
        )
        stages.append(report)

    linear: sitk.Transform = rigid
    if config.similarity:
        linear = sitk.Similarity3DTransform()
        linear.SetCenter(rigid.GetCenter())
        linear.SetMatrix(rigid.GetMatrix())
        linear.SetTranslation(rigid.GetTranslation())
    method = _registration_method(config, fixed, fixed_mask, moving_mask)
    set_gradient_descent(method, config.rigid_iterations, config.max_step_mm)
    method.SetInitialTransform(linear, inPlace=True)
    name = "similarity" if config.similarity else "rigid"
    stages.append(execute(name, method, fixed, moving, config.initializer))

    # The affine stage starts from the similarity (or rigid) result (same centre), so it only
    # refines anisotropic scale and shear; one affine transform avoids stacking composites.
    transform: sitk.Transform = linear
    if config.affine_iterations > 0:
        affine = sitk.AffineTransform(3)
        affine.SetCenter(linear.GetCenter())
        affine.SetMatrix(linear.GetMatrix())
        affine.SetTranslation(linear.GetTranslation())
        method = _registration_method(config, fixed, fixed_mask, moving_mask)
        set_gradient_descent(method, config.affine_iterations, config.max_step_mm)
        method.SetInitialTransform(affine, inPlace=True)
        stages.append(execute("affine", method, fixed, moving, config.initializer))
        transform = affine

    if config.deformable:
        # The B-spline lives on the atlas (fixed) grid; the affine result is the moving-side
        # initial transform, so the full mapping is affine(bspline(x)) =
        # CompositeTransform([affine, bspline]) (SimpleITK applies the last transform first).
        bspline = sitk.BSplineTransformInitializer(fixed, list(config.mesh_size_xyz), order=3)
        method = _registration_method(config, fixed, fixed_mask, moving_mask, bspline=True)
        set_lbfgsb(method, config.bspline_iterations)
        method.SetMovingInitialTransform(transform)
        method.SetInitialTransform(bspline, inPlace=True)
        stages.append(execute("bspline", method, fixed, moving, config.initializer))
        transform = sitk.CompositeTransform([transform, bspline])

    landmarks = {
        name: np.asarray(transform.TransformPoint([float(c) for c in point]), dtype=np.float64)
        for name, point in points.items()
    }
    return AtlasResult(
        landmarks=landmarks,
        transform=transform,
        seconds=time.perf_counter() - start,
        metric_value=stages[-1].metric_value,
        stages=tuple(stages),
    )
