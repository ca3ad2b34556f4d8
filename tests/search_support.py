"""Helpers of the search tests: exact immediate rewards, one phantom whole and cropped (landmarks);
small rigid worlds of phantoms (registration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.core import Volume
from envs.data import Dataset
from envs.tasks import ACTIONS_ZYX


def exact_q(offset_zyx: np.ndarray) -> np.ndarray:
    """The immediate reward of the 6 moves (distance decrease, voxels) with the target at ``offset``."""
    offset = np.asarray(offset_zyx, dtype=np.float64)
    return np.linalg.norm(offset, axis=-1)[..., None] - np.linalg.norm(
        offset[..., None, :] - ACTIONS_ZYX, axis=-1
    )


def whole_and_cropped_phantom(folder: Path, slices: int) -> Dataset:
    """Phantom 7 twice, as test cases: whole ("full") and its lower ``slices`` slices ("crop": z is
    superior, so the upper landmarks fall outside while all 10 stay annotated)."""
    from envs import io
    from envs.phantom import generate_phantom

    phantom = generate_phantom(7)
    volume = phantom.volume
    cropped = Volume(volume.voxels[:slices], volume.spacing_xyz_mm, volume.origin_lps_mm, volume.direction)
    io.write_volume(volume, folder / "full.nii.gz")
    io.write_volume(cropped, folder / "crop.nii.gz")
    io.write_landmarks(phantom.landmarks, folder / "points.fcsv")
    (folder / "manifest.csv").write_text(
        "case_id,image,landmarks,split\nfull,full.nii.gz,points.fcsv,test\ncrop,crop.nii.gz,points.fcsv,test\n"
    )
    return Dataset.from_manifest(folder / "manifest.csv")


SMALL_RIGID = {
    "levels_mm": (8.0, 4.0),
    "obs_size": 17,
    "translation_steps_mm": (6.0, 0.5),
    "rotation_steps_deg": (6.0, 0.5),
    "misalignment_mm": 30.0,
    "misalignment_deg": 30.0,
}
"""RigidWorld settings of the registration-search tests: two levels, 0.5 mm / 0.5 deg finest steps"""


def small_rigid_dataset() -> Dataset:
    """Five 4 mm phantoms (2 train, 1 val, 2 test) for :data:`SMALL_RIGID` worlds."""
    from envs.phantom import PhantomConfig, phantom_dataset

    return phantom_dataset(2, 1, 2, seed=5, config=PhantomConfig(spacing_mm=4.0))
