"""The landmark-detection world: cases, augmented variants, their pyramids and patch rendering.

Kept apart from the episode logic (:class:`~envs.tasks.landmark_env.LandmarkEnv`), so that a
replay buffer that stores poses and the test-time search can render observations without an
env. Levels are canonical grids (identity direction, isotropic, LPS mm); positions and targets
are voxel indices ``(z, y, x)`` of a level. Per-episode appearances (intensity maps and noise,
:class:`~envs.data.AppearanceBank`) are applied when a patch is rendered, so they cost a table
lookup and need no variant of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core import Pyramid, body_centre_zyx, build_pyramid, crop_patch, stable_hash, start_candidates
from envs.data import AppearanceBank, AugmentConfig, Dataset, Subject, appearance_bank, augmented_pyramid
from envs.tasks.base import TaskWorld

__all__ = ["LandmarkWorld", "Variant"]

# A landmark absent from a case (outside its field of view) has a NaN target.
_ABSENT = np.nan


@dataclass(frozen=True, repr=False)
class Variant:
    """One (case, augmentation) pair ready for episodes: pyramid and targets per level."""

    case_id: str
    pyramid: Pyramid
    landmarks_lps_mm: NDArray[np.float64]  # (n_landmarks, 3), NaN rows for absent landmarks
    targets_zyx: tuple[NDArray[np.float64], ...]  # per level: (n_landmarks, 3) continuous voxel index
    start_candidates: NDArray[np.int64]  # flat indices of body voxels at the coarsest level
    body_centre_zyx: NDArray[np.int64]  # the body voxel nearest the body's centroid, coarsest level

    @property
    def nbytes(self) -> int:
        return self.pyramid.nbytes + self.start_candidates.nbytes

    def present(self) -> NDArray[np.bool_]:
        return ~np.isnan(self.landmarks_lps_mm[:, 0])


class LandmarkWorld(TaskWorld):
    """Cases of one split, their augmented variants and patch rendering.

    Args:
        dataset: the dataset; its cache holds the pyramids.
        split: which split's cases to use.
        landmark_names: the landmarks, in the order of the observation's ``landmark`` index.
        levels_mm: isotropic level spacings, coarse to fine.
        patch_size: edge of the cubic patch in voxels (odd, >= 5).
        frames: number of positions in the observation history (most recent first).
        preset: intensity preset, or ``None`` to pick it from each case's modality.
        augment: augmentation ranges; ``None`` or ``variants_per_case=0`` for no spatial variants,
            ``None`` or ``appearances=0`` for no per-episode appearances.
        seed: base seed of the augmentation variants and of the appearance bank (fixed per world,
            so poses stay valid).
        case_ids: a subset of the split's cases, or ``None`` for all.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        landmark_names: Sequence[str],
        levels_mm: Sequence[float],
        patch_size: int,
        frames: int,
        preset: str | None,
        augment: AugmentConfig | None,
        seed: int = 0,
        case_ids: Sequence[str] | None = None,
    ) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
            raise ValueError(f"patch_size: expected an odd integer >= 5, got {patch_size!r}")
        if patch_size < 5 or patch_size % 2 == 0:
            raise ValueError(f"patch_size: expected an odd integer >= 5 (e.g. 25 or 45), got {patch_size}")
        if not 1 <= int(frames) <= 16:
            raise ValueError(f"frames: expected 1..16 positions of history, got {frames}")
        self.augment = augment if augment is not None and augment.variants_per_case > 0 else None
        per_case = 1 + (self.augment.variants_per_case if self.augment else 0)
        super().__init__(dataset, split, levels_mm, preset, per_case, seed, case_ids)
        self.landmark_names = tuple(landmark_names)
        if not self.landmark_names:
            raise ValueError(f"dataset {dataset.source}: no landmarks to seek; give landmark files or names")
        self.patch_size = int(patch_size)
        self.frames = int(frames)
        self.appearances: AppearanceBank | None = None
        if augment is not None and augment.appearances > 0:
            self.appearances = appearance_bank(augment, self.seed, self.patch_size)
        # What makes two worlds' variants identical; built once, since variant() runs for every
        # pose of every replay sample.
        self._variant_key = (
            "landmark-variant",
            self.levels_mm,
            self.preset,
            self.landmark_names,
            None if self.augment is None else self.augment.spatial(),
            self.seed,
        )

    @property
    def edge_vox(self) -> int:
        return self.patch_size

    @property
    def pose_dim(self) -> int:
        """``[variant, landmark, level, z0, y0, x0, ..., appearance]``: 4 + 3 * frames."""
        return 4 + 3 * self.frames

    @property
    def n_appearances(self) -> int:
        """Appearances an episode may draw (1: the identity only)."""
        return 1 if self.appearances is None else len(self.appearances)

    def observation_space(self) -> spaces.Dict:
        size = self.patch_size
        return spaces.Dict(
            {
                "patch": spaces.Box(0, 255, (self.frames, size, size, size), np.uint8),
                "landmark": spaces.Discrete(len(self.landmark_names)),
                "level": spaces.Discrete(self.n_levels),
            }
        )

    def variant_index(self, case_id: str, aug_id: int = 0) -> int:
        """The :attr:`variant_table` row of ``case_id``'s augmentation ``aug_id`` (0: original)."""
        return self.find_variant(case_id, aug_id, "augmentation")

    def variant(self, index: int) -> Variant:
        case_index, aug_id = (int(v) for v in self.variant_table[index])
        case = self.cases[case_index]
        key = (self._variant_key, aug_id)
        return self.dataset.derived(case, key, lambda subject: self._build_variant(subject, aug_id))

    def _build_variant(self, subject: Subject, aug_id: int) -> Variant:
        volume = subject.volume
        self.check_resolution(volume, f"the data of case {subject.case.case_id!r}")
        preset = self.preset_for(subject)
        landmarks = {
            name: subject.landmarks[name] for name in self.landmark_names if name in subject.landmarks
        }
        if aug_id == 0 or self.augment is None:
            pyramid = build_pyramid(volume, self.levels_mm, preset)
        else:
            seed = int(
                np.random.SeedSequence([self.seed, stable_hash(subject.case.case_id), aug_id]).generate_state(
                    1
                )[0]
            )
            pyramid, landmarks = augmented_pyramid(
                volume, landmarks, self.levels_mm, preset, self.augment, seed
            )
        points = np.full((len(self.landmark_names), 3), _ABSENT)
        for row, name in enumerate(self.landmark_names):
            if name in landmarks:
                points[row] = landmarks[name]
        targets = []
        for level in pyramid.levels:
            target = level.lps_to_index(points)[:, ::-1]
            # Landmarks outside the field of view cannot be reached: treat as absent.
            # Strictly inside the grid, so that rounding never yields a voxel outside it.
            inside = np.all((target >= -0.5) & (target < np.array(level.shape_zyx) - 0.5), axis=1)
            target[~inside] = _ABSENT
            targets.append(target)
        # A landmark outside any level's grid is absent everywhere: no NaN rewards at some level.
        absent = np.any([np.isnan(target[:, 0]) for target in targets], axis=0)
        points[absent] = _ABSENT
        for target in targets:
            target[absent] = _ABSENT
        # Episodes start inside the body (clearly brighter than air and field-of-view padding).
        coarse = pyramid.levels[0].voxels
        return Variant(
            subject.case.case_id,
            pyramid,
            points,
            tuple(targets),
            start_candidates(coarse),
            body_centre_zyx(coarse),
        )

    # ------------------------------------------------------------------ rendering
    def patch(
        self, variant: Variant, level: int, center_zyx: NDArray, appearance: int = 0
    ) -> NDArray[np.uint8]:
        """The ``(P, P, P)`` uint8 cube around voxel ``center_zyx`` of ``level``, under ``appearance``
        (0: the variant's own intensities; 0 outside the field of view under every appearance)."""
        patch = crop_patch(variant.pyramid.levels[level].voxels, center_zyx, self.patch_size)
        if appearance == 0:
            return patch
        return self._bank(appearance).render(patch, appearance)

    def _bank(self, appearance: int) -> AppearanceBank:
        if self.appearances is None:
            raise ValueError(
                f"appearance: this world has none (augment.appearances = 0), got index {appearance}; "
                "use 0 or build the world with augment.appearances > 0"
            )
        self.appearances.check(appearance)
        return self.appearances

    def observation(
        self, variant: Variant, landmark: int, level: int, history_zyx: NDArray, appearance: int = 0
    ) -> dict[str, Any]:
        """One observation; ``history_zyx`` is ``(frames, 3)``, most recent position first."""
        patches = np.stack([self.patch(variant, level, position, appearance) for position in history_zyx])
        return {"patch": patches, "landmark": int(landmark), "level": int(level)}

    def observations_from_poses(self, poses: NDArray) -> dict[str, NDArray]:
        """Batch of observations rebuilt from poses ``(B, pose_dim)``.

        A pose is ``[variant, landmark, level, z0, y0, x0, z1, ..., appearance]`` (see
        ``LandmarkEnv.pose``).
        """
        poses = np.asarray(poses)
        if poses.ndim != 2 or poses.shape[1] != self.pose_dim:
            raise ValueError(
                f"observations_from_poses: expected poses of shape (B, {self.pose_dim}) "
                f"([variant, landmark, level, {self.frames} positions, appearance]), got {poses.shape}"
            )
        count = len(poses)
        size = self.patch_size
        patch = np.empty((count, self.frames, size, size, size), dtype=np.uint8)
        for row, pose in enumerate(poses):
            variant = self.variant(int(pose[0]))
            level = int(pose[2])
            appearance = int(pose[3 + 3 * self.frames])
            for frame in range(self.frames):
                patch[row, frame] = self.patch(
                    variant, level, pose[3 + 3 * frame : 6 + 3 * frame], appearance
                )
        return {
            "patch": patch,
            "landmark": poses[:, 1].astype(np.int64),
            "level": poses[:, 2].astype(np.int64),
        }
