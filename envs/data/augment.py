"""Training-time augmentation: random rigid/affine + elastic warps and intensity changes.

An augmentation is a *variant* of a subject: a deterministic function of (subject, seed), so a
replay buffer that stores only poses can rebuild any observation later. Two recipes draw from
the pieces here:

* :func:`augmented_pyramid` (landmark tasks): one SimpleITK transform ``T`` that maps a point
  of the augmented image to the original image (``augmented(p) = original(T(p))``, SimpleITK's
  resampling convention; landmarks move with the image through the exact inverse of ``T``),
  then a gamma curve, a smooth bias field and noise, then (each with a probability) a random
  field-of-view box and a skull-stripping-like mask; landmarks they remove become absent.
* :func:`varied_pyramid` (registration tasks, on the moving side of a pair): a change of
  contrast (:func:`multimodal_lut`, chosen per variant by :func:`is_multimodal`), noise on the
  foreground (:func:`foreground_noise`) and a partial field of view (:func:`draw_slab`,
  :func:`crop_slab`); geometry untouched.

Intensities are uint8 (0 = outside the field of view, never tissue).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

from envs.core import (
    IntensityPreset,
    Pyramid,
    Volume,
    body_mask,
    build_pyramid,
    empty_grid,
    field_transform,
)

__all__ = [
    "APPEARANCE_FIELDS",
    "CONTRASTS",
    "AugmentConfig",
    "augmented_pyramid",
    "crop_slab",
    "draw_slab",
    "foreground_noise",
    "invert_point",
    "is_multimodal",
    "multimodal_lut",
    "random_transform",
    "varied_pyramid",
]

CONTRASTS = ("same", "multimodal", "mixed")
#: The :class:`AugmentConfig` fields of per-episode appearances (rendering only, no variant).
APPEARANCE_FIELDS = (
    "appearances",
    "appearance_gamma",
    "window",
    "contrast",
    "invert",
    "appearance_noise",
    "remap",
    "remap_knots",
)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (all drawn uniformly in ``[-x, x]`` unless stated).

    Attributes:
        variants_per_case: augmented copies per training case (0 disables augmentation); the
            original is always variant 0.
        rotation_deg: rotation about each axis through the volume centre.
        scale: relative scale change per axis (0.1 = +-10 %).
        translation_mm: shift per axis.
        elastic_mm: std-dev of the smooth elastic displacement (per component).
        elastic_grid_mm: spacing of the elastic control grid (smoothness).
        gamma: range (low, high) of the intensity gamma, drawn log-uniformly.
        bias: amplitude of a smooth multiplicative bias field (0.2 = +-20 %).
        noise: std-dev of additive noise as a fraction of the uint8 range.
        fov_crop: probability that a variant keeps only a random box (field of view); voxels
            outside it are 0 and landmarks outside it are absent from the variant.
        fov_keep: range (low, high) of the fraction of each axis the box keeps.
        fov_targets: landmarks that a ``fov_crop`` box cuts away stay targets (in the zeroed
            part of the grid) instead of becoming absent, so the agent learns to walk out of the
            kept box towards them; on a scan cut there, it pushes against the border and the
            search reports the landmark as outside the field of view (``search.max_blocked``).
        mask: probability that a variant keeps only its eroded, hole-filled body (like skull
            stripping); landmarks in the removed rim are absent from the variant.
        mask_erosion_mm: range (low, high) of the erosion radius in mm.
        appearances: per-episode appearances (:mod:`envs.data.appearance`): each reset draws an
            index in ``[0, appearances)`` (0 = identity); 0 turns them off.
        appearance_gamma: range (low, high) of an appearance's gamma, drawn log-uniformly.
        window: an appearance's window shift (fraction of 255) and log-stretch range.
        contrast: probability that an appearance is a non-monotonic (CT-to-MR-like) remap.
        invert: probability that an appearance inverts the intensities.
        appearance_noise: largest std-dev of an appearance's noise (fraction of 255).
        remap: probability that an appearance's base map is a random smooth non-monotonic
            curve through ``remap_knots`` random knots (domain randomisation for unseen
            contrasts such as T2w; :func:`envs.data.appearance.random_remap`); 0 (the default)
            leaves every bank byte-identical to one without this field.
        remap_knots: interior knots of a ``remap`` curve (more knots: wigglier curves).
    """

    variants_per_case: int = 4
    rotation_deg: float = 10.0
    scale: float = 0.08
    translation_mm: float = 10.0
    elastic_mm: float = 3.0
    elastic_grid_mm: float = 40.0
    gamma: tuple[float, float] = (0.7, 1.4)
    bias: float = 0.15
    noise: float = 0.02
    fov_crop: float = 0.0
    fov_keep: tuple[float, float] = (0.5, 0.9)
    fov_targets: bool = False
    mask: float = 0.0
    mask_erosion_mm: tuple[float, float] = (2.0, 10.0)
    appearances: int = 0
    appearance_gamma: tuple[float, float] = (0.5, 2.0)
    window: float = 0.15
    contrast: float = 0.25
    invert: float = 0.1
    appearance_noise: float = 0.03
    remap: float = 0.0
    remap_knots: int = 4

    def spatial(self) -> AugmentConfig:
        """This config with the per-episode appearance fields at their defaults: what a variant
        depends on (a cache key that stays valid when only the appearances change)."""
        defaults = {f.name: f.default for f in fields(AugmentConfig) if f.name in APPEARANCE_FIELDS}
        return replace(self, **defaults)

    def __post_init__(self) -> None:
        if self.variants_per_case < 0:
            raise ValueError(f"augment.variants_per_case: expected >= 0, got {self.variants_per_case}")
        if self.appearances < 0:
            raise ValueError(f"augment.appearances: expected >= 0 (0: off), got {self.appearances}")
        for name in ("gamma", "appearance_gamma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"augment.{name}: expected 0 < low <= high, got {getattr(self, name)}")
        low, high = self.fov_keep
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"augment.fov_keep: expected 0 < low <= high <= 1 (fractions), got {self.fov_keep}"
            )
        low, high = self.mask_erosion_mm
        if not 0 <= low <= high:
            raise ValueError(
                f"augment.mask_erosion_mm: expected 0 <= low <= high, got {self.mask_erosion_mm}"
            )
        knots = self.remap_knots
        if isinstance(knots, bool) or not isinstance(knots, (int, np.integer)) or not 1 <= knots <= 16:
            raise ValueError(
                f"augment.remap_knots: expected an integer in 1..16 (knots of a random remap), "
                f"got {self.remap_knots!r}"
            )
        for name in ("fov_crop", "mask", "contrast", "invert", "remap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"augment.{name}: expected a probability in [0, 1], got {getattr(self, name)}"
                )
        for name in (
            "rotation_deg",
            "scale",
            "translation_mm",
            "elastic_mm",
            "bias",
            "noise",
            "window",
            "appearance_noise",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}: expected >= 0, got {getattr(self, name)}")
        if not self.elastic_grid_mm > 0:
            raise ValueError(f"augment.elastic_grid_mm: expected > 0 mm, got {self.elastic_grid_mm}")
        if self.scale >= 0.5:
            raise ValueError(f"augment.scale: expected < 0.5 (relative), got {self.scale}")


def random_transform(volume: Volume, config: AugmentConfig, rng: np.random.Generator) -> sitk.Transform:
    """A random affine (about the volume centre) composed with a smooth elastic field."""
    center = volume.center_lps_mm
    rotation = Rotation.from_euler("xyz", rng.uniform(-1, 1, 3) * config.rotation_deg, degrees=True)
    scales = 1.0 + rng.uniform(-1, 1, 3) * config.scale
    affine = sitk.AffineTransform(3)
    affine.SetCenter(center.tolist())
    affine.SetMatrix((rotation.as_matrix() @ np.diag(scales)).reshape(-1).tolist())
    affine.SetTranslation((rng.uniform(-1, 1, 3) * config.translation_mm).tolist())
    if config.elastic_mm <= 0:
        return affine
    lower, upper = volume.extent_lps_mm
    # The field reaches two control spacings past the volume so it fades out smoothly.
    margin = 2 * config.elastic_grid_mm
    size = np.ceil((upper - lower + 2 * margin) / config.elastic_grid_mm).astype(int) + 1
    field = rng.normal(0.0, config.elastic_mm, size=(*size[::-1], 3))
    elastic = field_transform(field, empty_grid(size, [config.elastic_grid_mm] * 3, lower - margin))
    # CompositeTransform([a, b]) maps p -> a(b(p)): warp elastically first, then the affine.
    return sitk.CompositeTransform([affine, elastic])


def invert_point(transform: sitk.Transform, point_lps: NDArray, tolerance_mm: float = 1e-3) -> NDArray:
    """The point ``p`` with ``transform(p) == point_lps`` (fixed-point iteration, smooth fields)."""
    target = np.asarray(point_lps, dtype=np.float64)
    guess = target.copy()
    for _ in range(100):
        residual = np.asarray(transform.TransformPoint(guess.tolist())) - target
        if np.linalg.norm(residual) < tolerance_mm:
            return guess
        # Undo the residual through the affine part's inverse Jacobian approximation: the
        # elastic part is small and smooth, so plain subtraction of the mapped residual converges.
        guess = guess - _approximate_inverse_jacobian(transform, guess) @ residual
    raise ValueError(
        f"augmentation: could not invert the transform at {target.tolist()} (residual "
        f"{np.linalg.norm(residual):.3g} mm); lower augment.elastic_mm or augment.scale"
    )


def _approximate_inverse_jacobian(transform: sitk.Transform, point: NDArray, step_mm: float = 1.0) -> NDArray:
    base = np.asarray(transform.TransformPoint(point.tolist()))
    jacobian = np.empty((3, 3))
    for axis in range(3):
        shifted = point.copy()
        shifted[axis] += step_mm
        jacobian[:, axis] = (np.asarray(transform.TransformPoint(shifted.tolist())) - base) / step_mm
    return np.linalg.inv(jacobian)


def augmented_pyramid(
    volume: Volume,
    landmarks: dict[str, NDArray],
    spacings_mm: tuple[float, ...],
    preset: str | IntensityPreset,
    config: AugmentConfig,
    seed: int,
) -> tuple[Pyramid, dict[str, NDArray]]:
    """A randomly warped and re-contrasted pyramid of ``volume`` and its moved landmarks.

    Deterministic in ``seed``. The levels share the original pyramid's physical grid. With
    ``config.fov_crop`` / ``config.mask`` a variant may keep only a box or an eroded body; the
    landmarks outside what it keeps are left out of the returned dict (absent), except, with
    ``config.fov_targets``, those that only the box cuts away (they stay, in its zeroed part).
    """
    rng = np.random.default_rng(seed)
    transform = random_transform(volume, config, rng)
    pyramid = build_pyramid(volume, spacings_mm, preset, transform=transform)
    moved = {name: invert_point(transform, point) for name, point in landmarks.items()}
    low, high = config.gamma
    gamma = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    lut = np.rint(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    bias_coefficients = rng.uniform(-1, 1, 4) * config.bias
    noise_seed = int(rng.integers(2**31))
    # Drawn after everything above, always: variants without crop or mask are unchanged by them.
    crop = rng.random() < config.fov_crop
    box_lps = _draw_box(volume, config.fov_keep, rng)
    mask = rng.random() < config.mask
    erosion_mm = float(rng.uniform(*config.mask_erosion_mm))
    levels, kept = [], None
    for index, level in enumerate(pyramid.levels):
        voxels = lut[level.voxels].astype(np.float32)
        voxels *= _bias_field(level, bias_coefficients)
        if config.noise > 0:
            noise_rng = np.random.default_rng(noise_seed + index)
            voxels += noise_rng.normal(0.0, 255.0 * config.noise, size=voxels.shape).astype(np.float32)
        # Outside the field of view stays 0 so "no data" never looks like tissue.
        voxels[level.voxels == 0] = 0.0
        kept = _kept_region(level, box_lps if crop else None, erosion_mm if mask else None)
        if kept is not None:
            voxels[~kept] = 0.0
        levels.append(level.with_voxels(np.clip(np.rint(voxels), 0, 255).astype(np.uint8)))
    # ``kept`` is the finest level's region now (the loop's last); landmarks outside it are absent.
    if kept is not None and crop and config.fov_targets:
        kept = _kept_region(pyramid.levels[-1], None, erosion_mm if mask else None)
    if kept is not None:
        finest = pyramid.levels[-1]
        upper = np.array(finest.shape_zyx) - 1
        for name in list(moved):
            index_zyx = np.clip(np.rint(finest.lps_to_index(moved[name])[::-1]), 0, upper).astype(int)
            if not kept[tuple(index_zyx)]:
                del moved[name]
    return Pyramid(tuple(levels), pyramid.spacings_mm), moved


def _draw_box(volume: Volume, keep: tuple[float, float], rng: np.random.Generator) -> NDArray[np.float64]:
    """A random box ``(2, 3)`` (lower, upper LPS mm) inside ``volume``'s extent that keeps a
    uniform fraction in ``keep`` of each axis, placed uniformly."""
    lower, upper = (np.asarray(bound, dtype=np.float64) for bound in volume.extent_lps_mm)
    fraction = rng.uniform(*keep, size=3)
    start = lower + rng.uniform(0.0, 1.0, size=3) * (1.0 - fraction) * (upper - lower)
    return np.stack([start, start + fraction * (upper - lower)])


def _kept_region(
    level: Volume, box_lps: NDArray | None, erosion_mm: float | None
) -> NDArray[np.bool_] | None:
    """Voxels ``(z, y, x)`` of a canonical ``level`` inside ``box_lps`` and inside the body eroded by
    ``erosion_mm``; ``None`` when neither applies."""
    if box_lps is None and erosion_mm is None:
        return None
    kept = np.ones(level.shape_zyx, dtype=np.bool_)
    if box_lps is not None:
        for axis_xyz in range(3):
            # Canonical levels: identity direction, so LPS axis k runs along array axis 2 - k.
            count = level.shape_zyx[2 - axis_xyz]
            centres = level.origin_lps_mm[axis_xyz] + level.spacing_xyz_mm[axis_xyz] * np.arange(count)
            inside = (centres >= box_lps[0, axis_xyz]) & (centres <= box_lps[1, axis_xyz])
            shape = [1, 1, 1]
            shape[2 - axis_xyz] = count
            kept &= inside.reshape(shape)
    if erosion_mm is not None:
        body = body_mask(level.voxels)
        # Fill each axial slice: lungs and bowel gas are dark but inside the body.
        body = np.stack([ndimage.binary_fill_holes(axial) for axial in body])
        iterations = round(erosion_mm / float(level.spacing_xyz_mm[0]))
        if iterations > 0:
            body = ndimage.binary_erosion(body, iterations=iterations, border_value=1)
        kept &= body
    return kept


def _bias_field(level: Volume, coefficients: NDArray) -> NDArray[np.float32]:
    """A smooth multiplicative field: 1 + linear ramps along z, y, x + a quadratic bowl."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in level.shape_zyx]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    field = 1.0 + coefficients[0] * z + coefficients[1] * y + coefficients[2] * x
    field = field + coefficients[3] * (x**2 + y**2 - 0.5)
    return np.clip(field, 0.5, 1.5).astype(np.float32)


# ---------------------------------------------------------------------- registration variants
def is_multimodal(contrast: str, variant: int) -> bool:
    """Whether ``variant`` is re-contrasted under the ``contrast`` setting (one of ``CONTRASTS``):
    always for ``"multimodal"``, odd variants for ``"mixed"``, never for ``"same"``."""
    return contrast == "multimodal" or (contrast == "mixed" and variant % 2 == 1)


def multimodal_lut(rng: np.random.Generator | None = None, jitter: float = 0.0) -> NDArray[np.uint8]:
    """A non-monotonic uint8 -> uint8 intensity map that makes CT levels look like another modality.

    On the ``ct`` preset's scale (-1000..1000 HU -> 0..255): air and lung stay dark, fat
    becomes the brightest tissue, water-like soft tissue mid-grey, contrast-filled blood
    bright and bone dark (a T1-weighted-MR-like ordering). ``jitter`` (0..1) moves each
    control value by up to that fraction of 255 at random, so no two variants share a map.
    Level 0 stays 0: "outside the field of view" never becomes tissue.
    """
    # (input level, output level): -1000 HU 0, lung -850 19, fat -100 115, water 0 128,
    # soft tissue 40-60 133-135, blood 170 150, cancellous bone 250 160, cortical 700 217.
    xs = np.array([0, 10, 40, 100, 115, 122, 128, 136, 150, 165, 200, 255], dtype=np.float64)
    ys = np.array([0, 8, 25, 200, 235, 170, 110, 125, 190, 70, 30, 15], dtype=np.float64)
    if rng is not None and jitter > 0:
        ys[1:] = np.clip(ys[1:] + rng.uniform(-1, 1, len(ys) - 1) * 255 * jitter, 1, 255)
    lut = np.rint(np.interp(np.arange(256), xs, ys)).astype(np.uint8)
    lut[0] = 0
    return lut


def draw_slab(rng: np.random.Generator, keep: tuple[float, float] = (0.4, 0.7)) -> tuple[float, float]:
    """A random slab ``(start, fraction)`` of an axis: ``fraction`` uniform in ``keep``, then
    ``start`` uniform in ``[0, 1 - fraction]`` (both fractions of the axis length)."""
    fraction = rng.uniform(*keep)
    start = rng.uniform(0.0, 1.0 - fraction)
    return start, fraction


def crop_slab(voxels: NDArray, start: float, fraction: float) -> NDArray:
    """A copy of ``voxels`` ``(z, y, x)`` that is 0 outside the slab ``start .. start + fraction``
    of the z axis (fractions of its length, indices truncated)."""
    depth = voxels.shape[0]
    z0, z1 = int(start * depth), int((start + fraction) * depth)
    cropped = voxels.copy()
    cropped[:z0] = 0
    cropped[z1:] = 0
    return cropped


def foreground_noise(
    voxels: NDArray, foreground: NDArray[np.bool_], rng: np.random.Generator, std: float
) -> NDArray[np.float64]:
    """``voxels`` plus Gaussian noise of ``std`` (intensity units), clipped to 1..255 on
    ``foreground`` and 0 elsewhere (float64; the caller casts)."""
    noise = rng.normal(0.0, std, voxels.shape)
    return np.where(foreground, np.clip(voxels + noise, 1, 255), 0)


def varied_pyramid(
    pyramid: Pyramid,
    rng: np.random.Generator,
    *,
    multimodal: bool,
    perturbed: bool,
    partial_fov: float,
    jitter: float = 0.08,
    noise_std: float = 4.0,
) -> Pyramid:
    """A re-contrasted, noisy and/or cropped copy of a uint8 ``pyramid`` (same geometry).

    Args:
        pyramid: the levels to vary (uint8, 0 outside the field of view).
        rng: the variant's generator. Draws, in order: the LUT's jitter (``multimodal`` and
            ``perturbed``), the crop's coin (``perturbed``), the slab and the noise seed (always).
        multimodal: remap by :func:`multimodal_lut`, jittered by ``jitter`` when ``perturbed``.
        perturbed: add :func:`foreground_noise` of ``noise_std`` (uint8 units) to every level,
            and with probability ``partial_fov`` keep only a 40-70 % slab along z
            (:func:`draw_slab`, :func:`crop_slab`).

    Returns:
        A new :class:`Pyramid` on the same grids, or ``pyramid`` itself when nothing applies.
    """
    lut = multimodal_lut(rng, jitter=jitter if perturbed else 0.0) if multimodal else None
    crop = perturbed and rng.random() < partial_fov
    start, fraction = draw_slab(rng)
    noise_seed = int(rng.integers(2**31))
    if lut is None and not crop and not perturbed:
        return pyramid
    levels = []
    for index, level in enumerate(pyramid.levels):
        voxels = level.voxels if lut is None else lut[level.voxels]
        if perturbed:
            noise_rng = np.random.default_rng(noise_seed + index)
            voxels = foreground_noise(voxels, level.voxels > 0, noise_rng, noise_std)
        voxels = np.asarray(voxels, dtype=np.uint8)
        if crop:
            voxels = crop_slab(voxels, start, fraction)
        levels.append(level.with_voxels(voxels))
    return Pyramid(tuple(levels), pyramid.spacings_mm)
