"""Rigid registration (Liao et al., AAAI 2017): the rigid world and its env.

12 actions of +-translation (mm) and +-rotation (degrees) about each LPS axis through the
body centre; conventions (transform direction, TRE, integer parameters) are those of
:mod:`envs.tasks.alignment`. The rigid maths is :mod:`envs.core.rigid`'s; the contrast, noise
and field-of-view changes of the moving volume are :mod:`envs.data.augment`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from envs.core import (
    Pyramid,
    Volume,
    apply_rigid,
    body_centre_lps,
    build_pyramid,
    control_points,
    euler_matrix,
    euler_transform,
    rigid_fit,
    stable_hash,
)
from envs.core.pyramid import edge_pyramid
from envs.data import (
    CONTRASTS,
    AugmentConfig,
    Dataset,
    Subject,
    is_multimodal,
    random_transform,
    varied_pyramid,
)
from envs.phantom import phantom_dataset
from envs.tasks.alignment import UNIT, AlignmentEnv, AlignmentPair, AlignmentWorld
from envs.tasks.base import resolve_dataset

__all__ = [
    "RIGID_ACTION_NAMES",
    "RIGID_PARAM_NAMES",
    "RigidRegistrationEnv",
    "RigidWorld",
]

RIGID_PARAM_NAMES = ("tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg")
RIGID_ACTION_NAMES: tuple[str, ...] = tuple(
    f"{sign}{name}" for name in ("tx", "ty", "tz", "rx", "ry", "rz") for sign in ("+", "-")
)


class RigidWorld(AlignmentWorld):
    """Rigid pairs: a volume and a rigidly moved, optionally re-contrasted copy, or two volumes.

    Args:
        dataset, split, case_ids: the cases.
        levels_mm: observation spacings, coarse to fine.
        obs_size: edge of the cubic observation grid (voxels).
        translation_steps_mm, rotation_steps_deg: action sizes per level.
        misalignment_mm, misalignment_deg: range (uniform, per parameter) of the initial
            misalignment drawn at the coarsest level.
        preset: intensity preset, ``None`` to pick it from each case's modality.
        contrast: ``"same"``, ``"multimodal"`` (moving re-contrasted by
            :func:`envs.data.multimodal_lut`) or ``"mixed"`` (odd variants re-contrasted); the
            moving side of a variant is :func:`envs.data.varied_pyramid`'s.
        partial_fov: probability that a variant's moving volume keeps only a 40-70 % slab.
        pairing: ``"self"`` (each case with a moved copy of itself; ground truth exact) or
            ``"landmarks"`` (each case with the next case of its split; ground truth from their
            shared landmarks, >= 3 needed).
        variants_per_case: moved copies per case (variant 0 is unmoved; the rest carry a
            random rigid ground truth within ``variant_motion``, new noise and contrast).
        variant_motion: ``(mm, deg)`` range of the variants' ground-truth motion.
        frame_motion, frame_scale, frame_elastic_mm: self pairs: variants > 0 also resample the
            FIXED volume (and so its copy) through a random frame: rigid motion up to ``(mm, deg)``,
            scale up to ``+-frame_scale`` and an elastic field of this std-dev per axis. A policy
            then has to compare the two volumes rather than read the answer off the moving one
            (which it does with one training scan in one frame, and then fails on other patients).
        control_spacing_mm: lattice of the control points over the body (self pairs).
        seed: base seed of the variants.
        observation: ``"intensity"`` (fixed, moving), ``"gradient"`` (their contrast-robust edge
            maps, :func:`envs.core.pyramid.edge_map` of each level, the moving one resampled
            exactly like the moving intensities) or ``"both"`` (4 channels).
    """

    param_names = RIGID_PARAM_NAMES
    family = "rigid"

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        levels_mm: Sequence[float] = (8.0, 4.0, 2.0),
        obs_size: int = 25,
        translation_steps_mm: Sequence[float] = (6.0, 2.0, 0.5),
        rotation_steps_deg: Sequence[float] = (6.0, 2.0, 0.5),
        misalignment_mm: float = 30.0,
        misalignment_deg: float = 30.0,
        preset: str | None = None,
        contrast: str = "same",
        partial_fov: float = 0.0,
        pairing: str = "self",
        variants_per_case: int = 1,
        variant_motion: tuple[float, float] = (20.0, 15.0),
        control_spacing_mm: float = 40.0,
        seed: int = 0,
        case_ids: Sequence[str] | None = None,
        observation: str = "intensity",
        frame_motion: tuple[float, float] = (0.0, 0.0),
        frame_scale: float = 0.0,
        frame_elastic_mm: float = 0.0,
    ) -> None:
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast: expected one of {CONTRASTS}, got {contrast!r}")
        if pairing not in ("self", "landmarks"):
            raise ValueError(f"pairing: expected 'self' or 'landmarks', got {pairing!r}")
        if not 0.0 <= partial_fov <= 1.0:
            raise ValueError(f"partial_fov: expected a probability in [0, 1], got {partial_fov}")
        if not (misalignment_mm >= 0 and misalignment_deg >= 0):
            raise ValueError(
                f"misalignment: expected ranges >= 0, got {misalignment_mm} mm, {misalignment_deg} deg"
            )
        if not control_spacing_mm > 0:
            raise ValueError(f"control_spacing_mm: expected > 0, got {control_spacing_mm}")
        frame = (*(float(v) for v in frame_motion), float(frame_scale), float(frame_elastic_mm))
        if len(frame) != 4 or min(frame) < 0 or frame[2] >= 0.5 or (any(frame) and pairing != "self"):
            raise ValueError(
                "frame_motion / frame_scale / frame_elastic_mm (pairing='self' only): expected (mm, deg) "
                f">= 0, a scale in [0, 0.5), an elastic std-dev >= 0 mm, got {list(frame_motion)}, "
                f"{frame_scale}, {frame_elastic_mm} with pairing={pairing!r}"
            )
        translation = [float(v) for v in translation_steps_mm]
        rotation = [float(v) for v in rotation_steps_deg]
        if len(translation) != len(levels_mm) or len(rotation) != len(levels_mm):
            raise ValueError(
                f"translation_steps_mm / rotation_steps_deg: expected one step per level ({len(levels_mm)}), "
                f"got {len(translation)} and {len(rotation)}"
            )
        steps = [[t, t, t, r, r, r] for t, r in zip(translation, rotation, strict=True)]
        super().__init__(
            dataset, split, levels_mm, obs_size, steps, preset, variants_per_case, seed, case_ids, observation
        )
        self.misalignment = (float(misalignment_mm), float(misalignment_deg))
        self.contrast = contrast
        self.partial_fov = float(partial_fov)
        self.pairing = pairing
        self.variant_motion = (float(variant_motion[0]), float(variant_motion[1]))
        self.control_spacing_mm = float(control_spacing_mm)
        self.frame = frame
        if pairing == "landmarks" and len(self.cases) < 2:
            raise ValueError(
                f"pairing='landmarks': split {split!r} needs >= 2 cases with shared landmarks, "
                f"has {len(self.cases)}"
            )

    def _pair_key(self) -> tuple:
        return (
            *super()._pair_key(),
            self.contrast,
            self.partial_fov,
            self.pairing,
            self.variant_motion,
            self.control_spacing_mm,
            *((self.frame,) if any(self.frame) else ()),  # keys of frameless worlds stay as they were
        )

    # ------------------------------------------------------------------ building pairs
    def build_pair(self, subject: Subject, variant: int) -> AlignmentPair:
        volume = subject.volume
        self.check_resolution(volume, f"case {subject.case.case_id!r}")
        preset = self.preset_for(subject)
        fixed = self.dataset.derived(
            subject.case,
            ("rigid-fixed", self.levels_mm, preset),
            lambda s: build_pyramid(s.volume, self.levels_mm, preset, progressive=True),
        )
        center = body_centre_lps(fixed.levels[0])
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, stable_hash(subject.case.case_id), variant])
        )
        frame = None
        if self.pairing == "landmarks":
            moving_subject = self._partner(subject)
            self.check_resolution(moving_subject.volume, f"case {moving_subject.case.case_id!r}")
            names = [n for n in subject.landmarks if n in moving_subject.landmarks]
            if len(names) < 3:
                raise ValueError(
                    f"pairing='landmarks': cases {subject.case.case_id!r} and "
                    f"{moving_subject.case.case_id!r} "
                    f"share {len(names)} landmark(s); at least 3 are needed to define the ground truth"
                )
            fixed_points = np.stack([subject.landmarks[n] for n in names])
            moving_points = np.stack([moving_subject.landmarks[n] for n in names])
            moving = build_pyramid(
                moving_subject.volume, self.levels_mm, self.preset_for(moving_subject), progressive=True
            )
            case_id = f"{subject.case.case_id}->{moving_subject.case.case_id}"
        else:
            truth = np.zeros(6)
            if variant > 0:
                mm, deg = self.variant_motion
                truth = np.concatenate([rng.uniform(-mm, mm, 3), rng.uniform(-deg, deg, 3)])
            frame = self._frame(subject, variant)
            if frame is not None:  # a new fixed volume: the case seen through a random frame
                fixed = build_pyramid(volume, self.levels_mm, preset, transform=frame, progressive=True)
                center = body_centre_lps(fixed.levels[0])
            truth_transform = euler_transform(truth, center)
            # moving(T(p)) == fixed(p): the moving volume samples the fixed one through T^-1
            # (and, with a frame F, the case through F(T^-1(p))).
            inverse = truth_transform.GetInverse()
            warp = inverse if frame is None else sitk.CompositeTransform([frame, inverse])
            moving = build_pyramid(volume, self.levels_mm, preset, transform=warp, progressive=True)
            fixed_points = control_points(fixed.levels[0], self.control_spacing_mm)
            moving_points = apply_rigid(truth, center, fixed_points)
            case_id = subject.case.case_id
        moving = self._vary(moving, variant, rng)
        truth, _ = rigid_fit(fixed_points, moving_points, center)
        origins, patches = self.observation_grids(fixed, center)
        pair = AlignmentPair(
            case_id, fixed, moving, center, origins, patches, fixed_points, moving_points, truth
        )
        if self.observation_kind == "intensity":
            return pair
        if frame is not None:
            return self.with_edges(pair)
        fixed_edges = self.dataset.derived(
            subject.case, ("rigid-fixed-edges", self.levels_mm, preset), lambda s: edge_pyramid(fixed)
        )
        return self.with_edges(pair, fixed_edges)

    def _frame(self, subject: Subject, variant: int) -> sitk.Transform | None:
        """A self pair's random frame (None: variant 0 or none asked); its own draws, so the
        variant's truth, noise and crops are the same with or without it."""
        if variant == 0 or not any(self.frame):
            return None
        mm, deg, scale, elastic = self.frame
        config = AugmentConfig(
            rotation_deg=deg, scale=scale, translation_mm=mm, elastic_mm=elastic, elastic_grid_mm=40.0
        )
        draw = np.random.default_rng(
            np.random.SeedSequence([self.seed, stable_hash(subject.case.case_id), variant, 0xF4A3E])
        )
        return random_transform(subject.volume, config, draw)

    def _partner(self, subject: Subject) -> Subject:
        ids = [case.case_id for case in self.cases]
        position = ids.index(subject.case.case_id)
        return self.dataset.load(self.cases[(position + 1) % len(self.cases)])

    def _vary(self, moving: Pyramid, variant: int, rng: np.random.Generator) -> Pyramid:
        """Contrast, noise and field of view of the moving volume (deterministic per variant)."""
        return varied_pyramid(
            moving,
            rng,
            multimodal=is_multimodal(self.contrast, variant),
            perturbed=variant > 0,
            partial_fov=self.partial_fov,
        )

    # ------------------------------------------------------------------ rendering and errors
    def render_moving(
        self, pair: AlignmentPair, level: int, params: NDArray[np.int64], edges: bool = False
    ) -> NDArray[np.uint8]:
        """``moving(T(p))`` on the observation grid (trilinear; 0 outside the moving volume);
        ``edges``: the moving edge map, resampled the same way."""
        values = np.asarray(params, dtype=np.float64) / UNIT
        spacing = self.levels_mm[level]
        source = pair.moving_edges if edges else pair.moving
        if source is None:
            raise ValueError(f"render_moving(edges=True): pair {pair.case_id!r} has no edge maps")
        moving_level = source.levels[level]
        rotation = euler_matrix(values[3:6])
        center = pair.center_lps_mm
        # Moving index (x, y, z) = (R (o + s i - c) + c + t - o_m) / s_m, affine in grid index i.
        matrix_xyz = rotation * (spacing / self.levels_mm[level])
        offset_xyz = (
            rotation @ (pair.grid_origins_lps_mm[level] - center)
            + center
            + values[:3]
            - moving_level.origin_lps_mm
        ) / spacing
        out = ndimage.affine_transform(
            moving_level.voxels,
            matrix_xyz[::-1, ::-1],
            offset=offset_xyz[::-1],
            output_shape=(self.obs_size,) * 3,
            output=np.float32,
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
        )
        return np.rint(out).astype(np.uint8)

    def errors_mm(self, pair: AlignmentPair, params: NDArray) -> NDArray[np.float64]:
        rows = np.atleast_2d(np.asarray(params, dtype=np.float64)) / UNIT
        errors = np.empty(len(rows))
        for i, values in enumerate(rows):
            mapped = apply_rigid(values, pair.center_lps_mm, pair.control_fixed_lps_mm)
            errors[i] = float(np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm, axis=1)))
        return errors

    def start_params(self, pair: AlignmentPair, level: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """The truth plus a random misalignment: the full range at level 0, else ~2 coarser steps."""
        if level == 0:
            mm, deg = self.misalignment
        else:
            mm = 1.5 * self.steps_int[level - 1, 0] / UNIT
            deg = 1.5 * self.steps_int[level - 1, 3] / UNIT
        offset = np.concatenate([rng.uniform(-mm, mm, 3), rng.uniform(-deg, deg, 3)])
        return np.rint((pair.truth + offset) * UNIT).astype(np.int64)

    def reward_scale(self, level: int) -> float:
        return float(self.steps_int[level, 0]) / UNIT

    def pair_from_volumes(
        self,
        fixed: Volume,
        moving: Volume,
        fixed_points: NDArray | None = None,
        moving_points: NDArray | None = None,
        preset: str = "ct",
        moving_preset: str | None = None,
    ) -> AlignmentPair:
        """A pair of two volumes outside any dataset (test-time registration).

        Control points with known correspondences give the error; without them the error is NaN
        and the truth is unknown (the identity parameters stand in for it).
        """
        self.check_resolution(fixed, "the fixed volume")
        self.check_resolution(moving, "the moving volume")
        fixed_pyramid = build_pyramid(fixed, self.levels_mm, preset, progressive=True)
        moving_pyramid = build_pyramid(moving, self.levels_mm, moving_preset or preset, progressive=True)
        center = body_centre_lps(fixed_pyramid.levels[0])
        if fixed_points is None or moving_points is None:
            fixed_points = control_points(fixed_pyramid.levels[0], self.control_spacing_mm)
            moving_points = np.full_like(fixed_points, np.nan)
            truth = np.zeros(6)
        else:
            fixed_points = np.asarray(fixed_points, np.float64).reshape(-1, 3)
            moving_points = np.asarray(moving_points, np.float64).reshape(-1, 3)
            if len(fixed_points) != len(moving_points) or len(fixed_points) < 3:
                raise ValueError(
                    f"control points: expected >= 3 matching fixed/moving points, got "
                    f"{len(fixed_points)} and {len(moving_points)}"
                )
            truth, _ = rigid_fit(fixed_points, moving_points, center)
        origins, patches = self.observation_grids(fixed_pyramid, center)
        pair = AlignmentPair(
            fixed.name or "fixed",
            fixed_pyramid,
            moving_pyramid,
            center,
            origins,
            patches,
            fixed_points,
            moving_points,
            truth,
        )
        return self.with_edges(pair)

    def transform(self, pair: AlignmentPair, params: NDArray[np.int64]) -> sitk.Euler3DTransform:
        """The SimpleITK transform (fixed -> moving points) of integer parameters."""
        return euler_transform(np.asarray(params, dtype=np.float64) / UNIT, pair.center_lps_mm)


class RigidRegistrationEnv(AlignmentEnv):
    """Rigidly align a moving volume to a fixed one with 12 discrete actions (Liao et al. 2017).

    ## Observation Space
    ``Dict`` with ``"patch"``: ``Box(0, 255, (C, S, S, S), uint8)``: channel 0 the fixed volume,
    channel 1 the moving volume under the current transform, both on an ``S^3`` grid (axes
    z, y, x; +z superior, +y posterior, +x patient left) centred on the body at the current
    level's spacing (``levels_mm``); 0 outside a field of view. ``observation="gradient"``
    replaces both by their contrast-robust edge maps (``C = 2``); ``"both"`` appends the edge
    maps after the intensities (``C = 4``). ``"level"``: ``Discrete``.

    ## Action Space
    ``Discrete(12)``: ``2i`` adds and ``2i + 1`` subtracts the level's step on parameter ``i``
    of ``(tx, ty, tz, rx, ry, rz)``: translations in mm along LPS x, y, z and rotations in
    degrees about axes through the body centre (see ``RIGID_ACTION_NAMES``). Steps shrink
    level by level (``translation_steps_mm``, ``rotation_steps_deg``).

    ## Rewards
    The decrease of the target registration error (mean control-point distance, mm) divided
    by the level's translation step: about ``[-1, 1]``.

    ## Starting State
    A pair is drawn; with ``schedule="random"`` so is the level: at the coarsest level the
    transform is the truth plus a uniform misalignment of up to ``misalignment_mm`` /
    ``misalignment_deg`` per parameter, at finer levels within 1.5 steps of the coarser
    level. ``reset`` options ``case_id``, ``variant``, ``level`` and ``params`` (absolute) or
    ``offset`` (from the truth) fix any of these; any other option is a ``ValueError``.

    ## Episode End
    ``schedule="random"`` (training): terminated when the error at the finest level is below
    ``tre_threshold_mm``, else truncated by the time limit (``max_episode_steps``).
    ``schedule="coarse"`` (test): revisiting one of the last 4 transforms (oscillation) moves
    to the next finer level; oscillating at the finest level terminates.

    ## Info
    ``error_mm`` (TRE), ``level``, ``params`` (mm and degrees), ``case_id``, ``pose`` and
    ``previous_pose`` (int32 ``[pair, level, params in thousandths]``, from which
    :meth:`observations_from_poses` rebuilds observations exactly).

    ## Arguments
    ``dataset`` (a :class:`~envs.data.Dataset`, a manifest path, ``None`` for in-memory
    phantoms: 8 train, 2 val, 2 test at 2 mm, or an existing :class:`RigidWorld` to share,
    then without ``split`` and world arguments; see :meth:`from_world`), ``split``,
    ``schedule``, ``tre_threshold_mm``,
    ``render_mode`` (``"rgb_array"``: fixed/moving overlay), and every :class:`RigidWorld`
    argument (``levels_mm``, ``obs_size``, steps, misalignment, ``contrast``, ``partial_fov``,
    ``pairing``, ``variants_per_case``, ...).

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        dataset: Dataset | str | RigidWorld | None = None,
        split: str = "train",
        schedule: str = "random",
        tre_threshold_mm: float = 1.0,
        render_mode: str | None = None,
        **world_kwargs: Any,
    ) -> None:
        if isinstance(dataset, RigidWorld):
            if world_kwargs:
                raise ValueError(
                    "RigidRegistrationEnv: given a world, whose arguments are fixed; "
                    f"got world arguments {sorted(world_kwargs)}"
                )
            world = dataset
        else:
            dataset = resolve_dataset(dataset, lambda: phantom_dataset(8, 2, 2, seed=0))
            world = RigidWorld(dataset, split, **world_kwargs)
        super().__init__(world, schedule, tre_threshold_mm, render_mode)

    def transform(self) -> sitk.Euler3DTransform:
        """The current transform (fixed -> moving points) as a SimpleITK transform."""
        assert self._pair is not None
        return self.world.transform(self._pair, self._params)  # type: ignore[attr-defined]
