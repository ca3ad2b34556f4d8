"""Layer 1: geometry and pure helpers (numpy, scipy, SimpleITK only)."""

from envs.core.rigid import (
    apply_rigid,
    euler_matrix,
    euler_transform,
    params_from_matrix,
    params_from_transform,
    rigid_fit,
)
from envs.core.seeding import (
    stable_hash,
)
from envs.core.volume import (
    PRESETS,
    IntensityPreset,
    Pyramid,
    Volume,
    build_pyramid,
    crop_patch,
    resample_isotropic,
    to_uint8,
)

__all__ = [
    "PRESETS",
    "IntensityPreset",
    "Pyramid",
    "Volume",
    "apply_rigid",
    "build_pyramid",
    "crop_patch",
    "euler_matrix",
    "euler_transform",
    "params_from_matrix",
    "params_from_transform",
    "resample_isotropic",
    "rigid_fit",
    "stable_hash",
    "to_uint8",
]
