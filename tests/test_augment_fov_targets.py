"""``augment.fov_targets``: landmarks that a field-of-view box cuts away stay targets, in its zeroed part."""

from __future__ import annotations

import numpy as np

from envs.data import AugmentConfig
from envs.phantom import LANDMARK_NAMES, phantom_dataset
from envs.tasks import LandmarkWorld


def test_cut_away_landmarks_stay_targets_in_the_zeroed_part_with_fov_targets() -> None:
    dataset = phantom_dataset(1, 0, 0, seed=3)
    case_id = dataset.cases[0].case_id
    worlds = {}
    for keep in (False, True):
        augment = AugmentConfig(
            variants_per_case=2, elastic_mm=0.0, fov_crop=1.0, fov_keep=(0.4, 0.5), fov_targets=keep
        )
        worlds[keep] = LandmarkWorld(dataset, "train", LANDMARK_NAMES, (8.0, 4.0), 25, 1, None, augment)
    for aug_id in (1, 2):
        dropped = worlds[False].variant(worlds[False].variant_index(case_id, aug_id))
        kept = worlds[True].variant(worlds[True].variant_index(case_id, aug_id))
        # the same box and voxels: only what counts as a target changes
        for level_dropped, level_kept in zip(dropped.pyramid.levels, kept.pyramid.levels, strict=True):
            np.testing.assert_array_equal(level_dropped.voxels, level_kept.voxels)
        assert dropped.present().sum() < len(LANDMARK_NAMES)
        assert kept.present().all()
        finest = kept.pyramid.levels[-1].voxels
        for row in np.flatnonzero(~dropped.present()):
            target = np.rint(kept.targets_zyx[-1][row]).astype(int)
            assert finest[tuple(target)] == 0  # a cut-away landmark lies in the zeroed part
        np.testing.assert_array_equal(
            kept.landmarks_lps_mm[dropped.present()], dropped.landmarks_lps_mm[dropped.present()]
        )
