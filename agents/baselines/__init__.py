"""Classical baselines: what a user would run instead of an RL agent.

All points are physical LPS millimetres; every transform maps FIXED (atlas) points to MOVING
(target) points, SimpleITK's convention.

- :mod:`~agents.baselines.atlas`: :func:`atlas_transfer` (and :mod:`~agents.baselines.multi_atlas`:
  :func:`multi_atlas_transfer`), landmark detection by registering atlases with known
  landmarks to a target, started robustly (:mod:`~agents.baselines.foreground`: intensity
  windows and foreground masks; :mod:`~agents.baselines.start`: moments of the masks and a
  coarse rotation search).
- :mod:`~agents.baselines.rigid`: :func:`rigid_baseline`, SimpleITK versor-rigid registration
  with an optional rotation pre-search.
- :mod:`~agents.baselines.bspline`: :func:`bspline_baseline`, a SimpleITK cubic B-spline over
  any initial transform.
- :mod:`~agents.baselines.elastix`: :func:`elastix_rigid_baseline`, elastix's default rigid map
  (optional package ``itk-elastix``, imported only when called).
- :mod:`~agents.baselines.sitk_common`: what they share (argument checks, image preparation,
  the registration pipeline, its error text) and the result types.

Example:
    >>> from agents.baselines import AtlasConfig, atlas_transfer
    >>> result = atlas_transfer(atlas, atlas_landmarks, target)  # doctest: +SKIP
    >>> result.landmarks["carina"]  # LPS mm in the target  # doctest: +SKIP
"""

from agents.baselines.atlas import AtlasConfig, AtlasResult, atlas_transfer
from agents.baselines.bspline import BSplineBaselineConfig, bspline_baseline
from agents.baselines.elastix import elastix_rigid_baseline
from agents.baselines.multi_atlas import MultiAtlasResult, multi_atlas_transfer
from agents.baselines.rigid import RigidBaselineConfig, rigid_baseline
from agents.baselines.sitk_common import RegistrationResult, StageReport

__all__ = [
    "AtlasConfig",
    "AtlasResult",
    "BSplineBaselineConfig",
    "MultiAtlasResult",
    "RegistrationResult",
    "RigidBaselineConfig",
    "StageReport",
    "atlas_transfer",
    "bspline_baseline",
    "elastix_rigid_baseline",
    "multi_atlas_transfer",
    "rigid_baseline",
]
