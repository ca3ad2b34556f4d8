"""Layer 1: geometry and pure helpers (numpy, scipy, SimpleITK only).

* ``volume``: :class:`Volume`, voxels ``(z, y, x)`` placed in LPS mm; index <-> world.
* ``intensity``: presets (CT window, MR percentiles), ``to_uint8``, ``preset_for(modality)``.
* ``pyramid``: isotropic canonical resampling, uint8 pyramids, patch crops.
* ``rigid``: Euler parameters <-> matrices <-> SimpleITK, rigid fits of point sets.
* ``fields``: voxel-centre grids, displacement-field sampling, fields <-> SimpleITK.
* ``body``: body mask, centre, control points and start voxels of a normalised level.
* ``seeding``: stable hashes for per-case seeds.
"""

from envs.core.body import (
    COARSE_DATA_FACTOR,
    body_centre_lps,
    body_centre_zyx,
    body_mask,
    body_threshold,
    check_image,
    control_points,
    finest_level_warning,
    start_candidates,
)
from envs.core.fields import (
    cube_grid_lps,
    empty_grid,
    field_at_points,
    field_from_transform,
    field_to_sitk,
    field_transform,
    sample_field,
    strided_indices,
    voxel_centres_lps,
)
from envs.core.intensity import (
    PRESETS,
    IntensityPreset,
    as_preset,
    preset_for,
    scale_to_unit_range,
    to_uint8,
)
from envs.core.pyramid import (
    Pyramid,
    build_pyramid,
    crop_patch,
    edge_map,
    edge_pyramid,
    resample_isotropic,
)
from envs.core.rigid import (
    apply_rigid,
    compose_rigid,
    euler_matrix,
    euler_transform,
    matrix_offset,
    nearest_rotation,
    params_from_matrix,
    params_from_transform,
    rigid_fit,
    rigid_parts,
    rigid_transform,
)
from envs.core.seeding import (
    stable_hash,
)
from envs.core.volume import (
    Volume,
)

__all__ = [
    "COARSE_DATA_FACTOR",
    "PRESETS",
    "IntensityPreset",
    "Pyramid",
    "Volume",
    "apply_rigid",
    "as_preset",
    "body_centre_lps",
    "body_centre_zyx",
    "body_mask",
    "body_threshold",
    "build_pyramid",
    "check_image",
    "compose_rigid",
    "control_points",
    "crop_patch",
    "cube_grid_lps",
    "edge_map",
    "edge_pyramid",
    "empty_grid",
    "euler_matrix",
    "euler_transform",
    "field_at_points",
    "field_from_transform",
    "field_to_sitk",
    "field_transform",
    "finest_level_warning",
    "matrix_offset",
    "nearest_rotation",
    "params_from_matrix",
    "params_from_transform",
    "preset_for",
    "resample_isotropic",
    "rigid_fit",
    "rigid_parts",
    "rigid_transform",
    "sample_field",
    "scale_to_unit_range",
    "stable_hash",
    "start_candidates",
    "strided_indices",
    "to_uint8",
    "voxel_centres_lps",
]
