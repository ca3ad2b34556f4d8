"""A robust start for the atlas registration: moments of the foreground masks, then a coarse
search over initial rotations.

Gradient descent on mutual information only finds the optimum it starts near. Aligning the
centres of mass of the *foreground masks* (not of the intensities, which in MR depend on the
scanner's units, and in CT on the window) puts the two volumes on top of each other whatever
their headers say; a rotation of more than ~20-30 degrees between atlas and target can still
trap the rigid stage in a wrong optimum (a head upside down, a torso turned). So the metric is
evaluated at the coarsest pyramid level for a grid of rotations about the atlas's centre of
mass, the best few are refined by a short rigid optimisation at that level, and the one with
the best final metric starts the pipeline. The grid includes the unrotated start, so the
search can only improve on it (as judged by the metric).

Points are LPS mm; transforms map FIXED (atlas) points to MOVING (target) points.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import SimpleITK as sitk

from agents.baselines.foreground import set_masks
from agents.baselines.sitk_common import StageReport, execute, pyramid_method, set_gradient_descent

# Candidates refined by a short rigid optimisation after the grid's metric values are ranked.
REFINED_CANDIDATES = 3


def moments_of_masks(
    fixed_mask: sitk.Image, moving_mask: sitk.Image, caller: str = "atlas_transfer"
) -> sitk.VersorRigid3DTransform:
    """Rigid start that maps the fixed mask's centre of mass onto the moving mask's."""
    initial = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed_mask, sitk.sitkFloat32),
        sitk.Cast(moving_mask, sitk.sitkFloat32),
        sitk.VersorRigid3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    return sitk.VersorRigid3DTransform(initial)


def coarse_copy(image: sitk.Image, shrink: int, sigma_mm: float) -> sitk.Image:
    """``image`` smoothed by ``sigma_mm`` (physical units) and shrunk by ``shrink`` per axis."""
    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, float(sigma_mm))
    return sitk.Shrink(image, [int(shrink)] * 3) if shrink > 1 else image


def rotation_grid(step_deg: float, steps: int) -> list[tuple[float, float, float]]:
    """Euler angles (radians, about x, y, z) on a grid of ``2 * steps + 1`` values per axis.

    >>> len(rotation_grid(30.0, 1)), rotation_grid(30.0, 0)
    (27, [(0.0, 0.0, 0.0)])
    """
    values = np.deg2rad(float(step_deg)) * np.arange(-steps, steps + 1)
    return [tuple(float(a) for a in angles) for angles in itertools.product(values, repeat=3)]


def search_rotation(
    fixed: sitk.Image,
    moving: sitk.Image,
    start: sitk.VersorRigid3DTransform,
    *,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    step_deg: float,
    steps: int,
    shrink: int,
    sigma_mm: float,
    samples: int,
    histogram_bins: int,
    seed: int,
    threads: int | None,
    iterations: int,
    max_step_mm: float,
    caller: str = "atlas_transfer",
) -> tuple[sitk.VersorRigid3DTransform, StageReport]:
    """The best rigid start among ``start`` turned by every rotation of :func:`rotation_grid`.

    Args:
        fixed, moving: prepared images (the atlas and the target).
        start: the centred start (its rotation is composed with each candidate's).
        fixed_mask, moving_mask: foreground masks or ``None``.
        step_deg, steps: the rotation grid (see :func:`rotation_grid`).
        shrink, sigma_mm: the coarse level the search runs at (voxels, mm).
        samples: metric samples drawn from the coarse fixed image.
        histogram_bins, seed, threads: as in the atlas configuration.
        iterations: rigid optimiser iterations spent refining each of the best candidates.
        max_step_mm: largest first step of that refinement (mm).

    Returns:
        The chosen versor-rigid transform and a ``"search"`` :class:`StageReport` (its
        ``iterations`` counts the candidates evaluated).
    """
    began = time.perf_counter()
    fixed_small = coarse_copy(fixed, shrink, sigma_mm)
    moving_small = coarse_copy(moving, shrink, sigma_mm)
    fraction = min(1.0, samples / float(np.prod(fixed_small.GetSize())))

    def method() -> sitk.ImageRegistrationMethod:
        registration = pyramid_method(
            [1], [0.0], [fraction], histogram_bins=histogram_bins, seed=seed, threads=threads
        )
        set_masks(registration, fixed_mask, moving_mask)
        return registration

    start_matrix = np.asarray(start.GetMatrix()).reshape(3, 3)
    centre, translation = start.GetCenter(), start.GetTranslation()
    scored: list[tuple[float, sitk.VersorRigid3DTransform]] = []
    evaluator = method()
    saved_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(evaluator.GetNumberOfThreads()))
    try:
        for angles in rotation_grid(step_deg, steps):
            turn = sitk.Euler3DTransform()
            turn.SetRotation(*angles)
            candidate = sitk.VersorRigid3DTransform()
            candidate.SetCenter(centre)
            candidate.SetMatrix((start_matrix @ np.asarray(turn.GetMatrix()).reshape(3, 3)).ravel().tolist())
            candidate.SetTranslation(translation)
            evaluator.SetInitialTransform(candidate, inPlace=False)
            try:
                value = float(evaluator.MetricEvaluate(fixed_small, moving_small))
            except RuntimeError:  # too few samples map into the target: not a candidate
                continue
            scored.append((value, candidate))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_threads)
    if not scored:
        return start, StageReport(
            "search", float("nan"), 0, "no candidate overlapped", time.perf_counter() - began
        )
    scored.sort(key=lambda item: item[0])
    best: tuple[float, sitk.VersorRigid3DTransform] | None = None
    for _, candidate in scored[:REFINED_CANDIDATES]:
        refine = method()
        set_gradient_descent(refine, iterations, max_step_mm)
        refine.SetInitialTransform(candidate, inPlace=True)
        try:
            report = execute("search", refine, fixed_small, moving_small, "moments", caller)
        except ValueError:
            continue
        if best is None or report.metric_value < best[0]:
            best = (report.metric_value, candidate)
    if best is None:
        best = scored[0]
    return best[1], StageReport(
        name="search",
        metric_value=best[0],
        iterations=len(scored),
        stop_condition=f"best of {len(scored)} rotations, {REFINED_CANDIDATES} refined",
        seconds=time.perf_counter() - began,
    )
