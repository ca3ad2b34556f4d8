"""Intensity windows and foreground masks for the SimpleITK baselines.

A registration metric should be computed where both images hold data. A skull-stripped MR
scan is 0 outside the brain, while an unstripped atlas shows skull and scalp there; a CT
phantom is air around the body. :func:`foreground_mask` finds the data (Otsu threshold, the
largest connected piece, holes filled, dilated by a few mm so that the boundary itself still
counts), and :func:`set_masks` restricts a registration's metric to it. :func:`auto_window`
picks an intensity window per image (CT in HU, or MR in any scanner unit).

Masks are built on a coarse copy of the image (about ``MASK_SPACING_MM``): ITK evaluates a
mask at physical LPS points, so it need not share the image's grid, and a 2 mm mask is
8 times cheaper to dilate than a 1 mm one.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

# The CT intensity window (HU) of the baselines, and the 1st-percentile intensity at or below
# which intensity_window="auto" takes an image for CT (air is -1000 HU; MR is >= 0).
CT_WINDOW = (-1000.0, 2000.0)
CT_AIR_BELOW_HU = -500.0
# Spacing (mm) of the grid the masks are built on.
MASK_SPACING_MM = 2.0
# A mask that keeps less than this fraction of its image is taken as a failed threshold.
MIN_MASK_FRACTION = 0.01


def auto_window(voxels: NDArray) -> tuple[float, float]:
    """The window ``intensity_window="auto"`` picks for ``voxels``.

    CT (the 1st percentile at or below ``CT_AIR_BELOW_HU``: air in Hounsfield units) gets
    ``CT_WINDOW``; anything else (MR, arbitrary scanner units) is clipped to
    ``[minimum, 99.5th percentile of the voxels above the minimum]``, so that a few bright
    vessels or fat voxels do not squeeze the tissue into a handful of Mattes histogram bins
    (and a 0..10000 template is not cut at 2000 like CT would be).

    >>> auto_window(np.array([-1000.0, -1000.0, 40.0, 300.0]))
    (-1000.0, 2000.0)
    >>> low, high = auto_window(np.r_[np.zeros(50), np.linspace(1.0, 100.0, 1000)])
    >>> low, round(high, 1)
    (0.0, 99.5)
    """
    sample = np.asarray(voxels, dtype=np.float32).reshape(-1)
    sample = sample[:: max(1, sample.size // 2_000_000)]  # percentiles of <= ~2M voxels
    if float(np.percentile(sample, 1.0)) <= CT_AIR_BELOW_HU:
        return CT_WINDOW
    low = float(sample.min())
    above = sample[sample > low]
    high = float(np.percentile(above, 99.5)) if above.size else low + 1.0
    return low, max(high, low + 1e-3)


def foreground_mask(image: sitk.Image, dilation_mm: float) -> sitk.Image | None:
    """uint8 mask (1 = data) of ``image`` on a coarse grid, dilated by ``dilation_mm``.

    Args:
        image: a prepared (windowed, >= 0) 3-D image; any spacing and direction.
        dilation_mm: how far (mm) the mask reaches beyond the thresholded foreground.

    Returns:
        The mask, or ``None`` when the threshold finds no usable foreground (less than
        ``MIN_MASK_FRACTION`` of the image, or all of it): no mask is better than a wrong one.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    factors = [max(1, round(MASK_SPACING_MM / s)) for s in spacing]
    coarse = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)  # below the threshold: background
    otsu.SetOutsideValue(1)
    mask = otsu.Execute(coarse)
    # The largest connected piece drops noise specks; filling holes keeps dark tissue inside
    # (CSF and skull in T1w MR, lungs in CT) that Otsu puts with the background.
    mask = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1
    mask = sitk.BinaryFillhole(mask)
    coarse_spacing = np.asarray(mask.GetSpacing(), dtype=np.float64)
    radius = [int(np.ceil(dilation_mm / s)) for s in coarse_spacing]
    if max(radius) > 0:
        mask = sitk.BinaryDilate(mask, radius, sitk.sitkBall)
    fraction = float(np.mean(sitk.GetArrayViewFromImage(mask)))
    if not MIN_MASK_FRACTION <= fraction < 1.0:
        return None
    return sitk.Cast(mask, sitk.sitkUInt8)


def set_masks(
    method: sitk.ImageRegistrationMethod, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None
) -> None:
    """Sample the metric inside ``fixed_mask`` only; count a sample only if it maps into ``moving_mask``."""
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
