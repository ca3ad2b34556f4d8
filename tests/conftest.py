"""Shared pytest fixtures: tiny in-memory volumes that make axis and unit mix-ups fail loudly.

Every edge length, every spacing and every direction column differs, so swapping (z, y, x)
with (x, y, z), mm with voxels or rows with columns of the direction changes the result.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from envs.core import Volume

OBLIQUE_SHAPE_ZYX = (5, 7, 9)
OBLIQUE_SPACING_XYZ_MM = (0.7, 1.3, 2.9)
OBLIQUE_ORIGIN_LPS_MM = (-31.0, 12.5, 104.0)
# A rotation about all three axes: no direction column is a signed unit axis.
OBLIQUE_DIRECTION = Rotation.from_euler("xyz", [17.0, -32.0, 51.0], degrees=True).as_matrix()


@pytest.fixture
def oblique_volume() -> Volume:
    """int16 volume, shape (z, y, x) = (5, 7, 9), spacing (0.7, 1.3, 2.9) mm, oblique direction.

    Voxels are distinct random CT-like values, so any reordering of the array is detected.
    """
    rng = np.random.default_rng(1234)
    voxels = rng.permutation(np.arange(-1000, -1000 + np.prod(OBLIQUE_SHAPE_ZYX))).reshape(OBLIQUE_SHAPE_ZYX)
    return Volume(
        voxels.astype(np.int16),
        OBLIQUE_SPACING_XYZ_MM,
        OBLIQUE_ORIGIN_LPS_MM,
        OBLIQUE_DIRECTION,
        name="oblique",
    )


@pytest.fixture
def oblique_float_volume(oblique_volume: Volume) -> Volume:
    """The same geometry as ``oblique_volume`` with float32 intensities in [-1, 1)."""
    rng = np.random.default_rng(4321)
    voxels = rng.uniform(-1.0, 1.0, size=OBLIQUE_SHAPE_ZYX).astype(np.float32)
    return oblique_volume.with_voxels(voxels, name="oblique_float")
