"""Layer 5: the worlds and Gymnasium envs of each task, on one shared base.

* ``base``: argument checks, :class:`TaskWorld` (levels, presets, resolution, variant table),
  reset-option parsing, level choice, pose packing, the oscillation tracker.
* ``landmark`` / ``landmark_env``: :class:`LandmarkWorld` / :class:`LandmarkEnv`.
* ``alignment``: pair, world and episode logic shared by rigid and SDM registration.
* ``rigid``: :class:`RigidWorld`, :class:`RigidRegistrationEnv` (the moving volume's contrast,
  noise and field-of-view variants come from :mod:`envs.data.augment`).
* ``sdm_model`` / ``sdm``: the statistical deformation model and its fits /
  :class:`DeformableWorld`, :class:`DeformableRegistrationEnv`; ``sdm_samples``: training
  subjects sampled from a model, with exact fields.
"""

from envs.tasks.alignment import (
    UNIT,
    AlignmentEnv,
    AlignmentPair,
    AlignmentWorld,
)
from envs.tasks.base import (
    OSCILLATION_WINDOW,
    RENDER_MODES,
    SCHEDULES,
    OscillationTracker,
    TaskEnv,
    TaskWorld,
    check_action,
    check_levels,
    check_preset,
    check_render_mode,
    check_schedule,
    pack_pose,
    reset_level,
    reset_options,
    resolve_dataset,
)
from envs.tasks.landmark import (
    LandmarkWorld,
    Variant,
)
from envs.tasks.landmark_env import (
    ACTION_NAMES,
    ACTIONS_ZYX,
    LandmarkEnv,
)
from envs.tasks.rigid import (
    RIGID_ACTION_NAMES,
    RIGID_PARAM_NAMES,
    RigidRegistrationEnv,
    RigidWorld,
)
from envs.tasks.sdm import (
    DeformableRegistrationEnv,
    DeformableWorld,
)
from envs.tasks.sdm_model import (
    DICE_STRUCTURES,
    SDM_FORMAT,
    SDM_VERSION,
    StatisticalDeformationModel,
    dice_scores,
    fit_sdm_from_volumes,
    phantom_sdm,
    phantom_structures,
    shape_only_config,
    warp_by_field,
)
from envs.tasks.sdm_samples import SAMPLE_ELASTIC_GRID_MM, model_sample_dataset, sample_subject

__all__ = [
    "ACTIONS_ZYX",
    "ACTION_NAMES",
    "DICE_STRUCTURES",
    "OSCILLATION_WINDOW",
    "RENDER_MODES",
    "RIGID_ACTION_NAMES",
    "RIGID_PARAM_NAMES",
    "SAMPLE_ELASTIC_GRID_MM",
    "SCHEDULES",
    "SDM_FORMAT",
    "SDM_VERSION",
    "UNIT",
    "AlignmentEnv",
    "AlignmentPair",
    "AlignmentWorld",
    "DeformableRegistrationEnv",
    "DeformableWorld",
    "LandmarkEnv",
    "LandmarkWorld",
    "OscillationTracker",
    "RigidRegistrationEnv",
    "RigidWorld",
    "StatisticalDeformationModel",
    "TaskEnv",
    "TaskWorld",
    "Variant",
    "check_action",
    "check_levels",
    "check_preset",
    "check_render_mode",
    "check_schedule",
    "dice_scores",
    "fit_sdm_from_volumes",
    "model_sample_dataset",
    "pack_pose",
    "phantom_sdm",
    "phantom_structures",
    "reset_level",
    "reset_options",
    "resolve_dataset",
    "sample_subject",
    "shape_only_config",
    "warp_by_field",
]
