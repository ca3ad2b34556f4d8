"""Test-time search: trained agents (or oracles) find landmarks and register volumes, coarse to fine.

The map:

- :mod:`agents.search.policies`: what the search asks a policy, one protocol per task
  (:class:`LandmarkPolicy`, :class:`AlignmentPolicy`), the Q-network policy (both tasks) and
  the ground-truth oracles.
- :mod:`agents.search.landmark`: :func:`detect_landmarks`, every agent of a volume batched,
  with consensus over starts, a confidence per landmark and an optional sub-voxel answer from
  the Q-values at the end (:func:`subvoxel_offset`).
- :mod:`agents.search.shape`: :func:`detect_with_shape`, the answers checked against the
  training scans' landmark configuration (:class:`LandmarkShape`), suspects searched again.
- :mod:`agents.search.align`: :func:`align` on a transform's parameters and
  :func:`refine_alignment` (SimpleITK polish of a rigid answer); its settings and answers
  (:class:`AlignConfig`, :class:`Alignment`) in :mod:`agents.search.align_config`.
- :mod:`agents.search.symmetric`: the inverse registration searched too and the two answers
  averaged (``AlignConfig.symmetric``).
- :mod:`agents.search.guard`: :func:`guard_alignment`, the plausibility guard of a rigid answer
  (bounds from the start, similarity vs the start and a moments initialisation) and its
  SimpleITK fallback.
- :mod:`agents.search.register`: :func:`register` two volumes, :func:`write_registration`.

Both searches end a level when the agent revisits one of its last positions (oscillation) and
take the finest level's end as the answer.
"""

from agents.search.align import AlignConfig, Alignment, align, refine_alignment
from agents.search.guard import Plausibility, check_answer, guard_alignment, guard_bounds
from agents.search.landmark import (
    AGREEMENT_VOX,
    FINAL_POINTS,
    Detection,
    SearchConfig,
    detect_landmarks,
    scored_detections,
    start_points,
    subvoxel_offset,
)
from agents.search.policies import (
    AgentState,
    AlignmentOracle,
    AlignmentPolicy,
    LandmarkPolicy,
    OraclePolicy,
    QNetworkPolicy,
)
from agents.search.register import register, write_registration
from agents.search.shape import LandmarkShape, ShapeFit, detect_with_shape, fit_answers, fit_shape
from agents.search.symmetric import swapped_pair, with_inverse_search

__all__ = [
    "AGREEMENT_VOX",
    "FINAL_POINTS",
    "AgentState",
    "AlignConfig",
    "Alignment",
    "AlignmentOracle",
    "AlignmentPolicy",
    "Detection",
    "LandmarkPolicy",
    "LandmarkShape",
    "OraclePolicy",
    "Plausibility",
    "QNetworkPolicy",
    "SearchConfig",
    "ShapeFit",
    "align",
    "check_answer",
    "detect_landmarks",
    "detect_with_shape",
    "fit_answers",
    "fit_shape",
    "guard_alignment",
    "guard_bounds",
    "refine_alignment",
    "register",
    "scored_detections",
    "start_points",
    "subvoxel_offset",
    "swapped_pair",
    "with_inverse_search",
    "write_registration",
]
