"""Registration experiments end to end: worlds from configs, training, validation and evaluation.

``train.py`` and ``evaluate.py`` call into this module for the ``rigid`` and ``sdm`` tasks;
the landmark task keeps its own path. Everything here reuses the shared pieces: datasets,
phantoms, the Q-network policy and its checkpoints, run folders and the greedy search.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agents.config import RigidExperiment, SdmExperiment
from agents.search import Alignment, QNetworkPolicy, align
from envs import io
from envs.dataset import Dataset
from envs.deformation import (
    DeformableWorld,
    StatisticalDeformationModel,
    dice_scores,
    fit_sdm_from_volumes,
    phantom_sdm,
    phantom_structures,
)
from envs.registration import UNIT, AlignmentPair, AlignmentWorld, RigidWorld, euler_transform
from envs.volume import Volume

__all__ = [
    "SUCCESS_MM",
    "SdmBundle",
    "alignment_score",
    "evaluation_offsets",
    "make_alignment_world",
    "prepare_sdm",
    "summarise_errors",
    "validate_alignment",
]

SUCCESS_MM = 2.0  # a registration succeeds when its mean TRE is below this (issue #4, FACTS.md)


@dataclass(frozen=True)
class SdmBundle:
    """What an SDM world needs besides data: the model and the atlas it warps."""

    sdm: StatisticalDeformationModel
    atlas: Volume
    atlas_labels: Volume | None
    atlas_landmarks: dict[str, NDArray]


def prepare_sdm(
    experiment: SdmExperiment,
    dataset: Dataset,
    saved: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SdmBundle:
    """The model (``saved`` if it exists, else ``sdm.file``, else fitted) and the atlas."""
    config = experiment.sdm
    if config.atlas is not None:
        atlas = io.read_volume(config.atlas.image)
        labels = io.read_volume(config.atlas.labels) if config.atlas.labels else None
        landmarks = io.read_landmarks(config.atlas.landmarks) if config.atlas.landmarks else {}
    else:
        from envs.phantom import PhantomConfig, mean_phantom

        spacing = experiment.data.phantoms.spacing_mm if experiment.data.phantoms else 2.0
        template = mean_phantom(PhantomConfig(spacing_mm=spacing))
        atlas, labels, landmarks = template.volume, template.labels, dict(template.landmarks)
    if saved is not None and saved.is_file():
        model = StatisticalDeformationModel.load(saved)
    elif config.file is not None:
        model = StatisticalDeformationModel.load(config.file)
    elif experiment.data.phantoms is not None:
        model = phantom_sdm(config.n_fields, config.k, config.spacing_mm, seed=experiment.data.phantoms.seed)
    else:
        from agents.baselines import bspline_baseline

        cases = dataset.split("train")[: config.n_fields]
        volumes = [dataset.load(case).volume for case in cases]

        def register(fixed: Volume, moving: Volume) -> NDArray:
            result = bspline_baseline(fixed, moving)
            assert result.displacement_lps_mm is not None
            return result.displacement_lps_mm

        model = fit_sdm_from_volumes(atlas, volumes, config.k, register, config.spacing_mm, progress)
    if model.k > 0 and atlas is not None:
        model.check_grid(atlas, "the atlas")
    return SdmBundle(model, atlas, labels, landmarks)


def make_alignment_world(
    experiment: RigidExperiment | SdmExperiment,
    dataset: Dataset,
    split: str,
    *,
    training: bool,
    bundle: SdmBundle | None = None,
    **overrides: Any,
) -> AlignmentWorld:
    """The world of a split: training worlds get the configured variants, others a held-out set.

    Held-out rigid worlds keep two variants per case when the config trains on several
    (variant 1 carries the contrast, noise and field-of-view changes, variant 0 none).
    """
    env = experiment.env
    if isinstance(experiment, RigidExperiment):
        kwargs = env.world_kwargs()
        if not training:
            kwargs["variants_per_case"] = min(2, kwargs["variants_per_case"])
        kwargs.update(overrides)
        return RigidWorld(dataset, split, seed=experiment.seed, **kwargs)
    if bundle is None:
        raise ValueError("make_alignment_world: the sdm task needs its SdmBundle (prepare_sdm)")
    kwargs = env.world_kwargs()
    kwargs.update(overrides)
    return DeformableWorld(
        dataset,
        split,
        bundle.sdm,
        bundle.atlas,
        bundle.atlas_labels,
        bundle.atlas_landmarks,
        seed=experiment.seed,
        **kwargs,
    )


def evaluation_offsets(world: AlignmentWorld, count: int, scale: Sequence[float], seed: int) -> NDArray:
    """``count`` start offsets from the truth, uniform in +-scale per parameter (deterministic)."""
    rng = np.random.default_rng(seed)
    scale = np.broadcast_to(np.asarray(scale, np.float64), (world.n_params,))
    return rng.uniform(-1.0, 1.0, (count, world.n_params)) * scale


def _rigid_scale(world: RigidWorld, mm: float, deg: float) -> NDArray:
    return np.array([mm, mm, mm, deg, deg, deg])


def validation_starts(world: AlignmentWorld, pair: AlignmentPair, index: int, per_pair: int) -> list[NDArray]:
    """Start parameters for validating one pair: random misalignments at the training range."""
    if isinstance(world, RigidWorld):
        scale = _rigid_scale(world, *world.misalignment)
        offsets = evaluation_offsets(world, per_pair, scale, seed=1000 + index)
        return [pair.truth + offset for offset in offsets]
    return [np.zeros(world.n_params)]  # the SDM search starts from the mean shape


def summarise_errors(errors: Sequence[float], seconds: Sequence[float] = ()) -> dict[str, float]:
    """Mean / median / p95 / max of errors (mm), success rate (< 2 mm) and median seconds.

    Example:
        >>> summary = summarise_errors([0.5, 1.0, 3.0, 40.0], [0.1, 0.2, 0.1, 0.3])
        >>> summary["success_rate"], summary["median_mm"], summary["median_s"]
        (0.5, 2.0, 0.15000000000000002)
    """
    values = np.asarray(errors, dtype=np.float64)
    nan = float("nan")
    return {
        "n": len(values),
        "mean_mm": float(values.mean()) if values.size else nan,
        "median_mm": float(np.median(values)) if values.size else nan,
        "p95_mm": float(np.percentile(values, 95)) if values.size else nan,
        "max_mm": float(values.max()) if values.size else nan,
        "success_rate": float(np.mean(values < SUCCESS_MM)) if values.size else nan,
        "median_s": float(np.median(seconds)) if len(seconds) else nan,
    }


def validate_alignment(
    policy: Any,
    world: AlignmentWorld,
    experiment: RigidExperiment | SdmExperiment,
    max_cases: int | None = None,
    per_pair: int = 3,
) -> dict[str, float]:
    """Success rate, median / p95 / max TRE (mm) of the greedy search on ``world``'s pairs."""
    q_policy = QNetworkPolicy(policy)
    errors, seconds = [], []
    for index in range(min(world.n_variants, max_cases or world.n_variants)):
        pair = world.pair(index)
        for start in validation_starts(world, pair, index, per_pair):
            result = align(world, pair, q_policy, start, experiment.search)
            errors.append(result.error_mm)
            seconds.append(result.seconds)
    summary = summarise_errors(errors, seconds)
    return {key: summary[key] for key in ("success_rate", "median_mm", "p95_mm", "max_mm", "median_s")}


def alignment_score(metrics: dict[str, float]) -> tuple[float, ...]:
    """Lower is better: more successes first, then the median, then the tail."""
    return (-metrics["success_rate"], metrics["median_mm"], metrics["p95_mm"])


# ---------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class PairOutcome:
    """One registration of one method."""

    method: str
    case_id: str
    condition: str
    misalignment: float
    before_mm: float
    after_mm: float
    seconds: float
    steps: int = 0
    dice: dict[str, float] | None = None

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "method": self.method,
            "case_id": self.case_id,
            "condition": self.condition,
            "misalignment": self.misalignment,
            "before_mm": round(self.before_mm, 4),
            "after_mm": round(self.after_mm, 4),
            "seconds": round(self.seconds, 4),
            "steps": self.steps,
        }
        for name, value in (self.dice or {}).items():
            row[f"dice_{name}"] = round(value, 4)
        return row


def rigid_pairs(
    world: RigidWorld, trials: int, misalignment: float, seed: int
) -> list[tuple[AlignmentPair, NDArray]]:
    """``trials`` (pair, start parameters) over the world's held-out pairs, cycling through cases.

    Uses the last variant of each case (with the configured contrast, noise and field of view).
    """
    variants = world.variants_per_case
    indices = [i for i in range(world.n_variants) if int(world.variant_table[i][1]) == variants - 1]
    offsets = evaluation_offsets(world, trials, _rigid_scale(world, misalignment, misalignment), seed)
    pairs = []
    for trial, offset in enumerate(offsets):
        pair = world.pair(indices[trial % len(indices)])
        pairs.append((pair, pair.truth + offset))
    return pairs


def rigid_baseline_outcome(
    method: str,
    world: RigidWorld,
    pair: AlignmentPair,
    start: NDArray,
    condition: str,
    misalignment: float,
) -> PairOutcome:
    """SimpleITK (or elastix) on the same pair, from the same start, at the finest level's images."""
    from agents import baselines

    finest = world.n_levels - 1
    fixed, moving = pair.fixed.levels[finest], pair.moving.levels[finest]
    initial = euler_transform(start, pair.center_lps_mm)
    before = float(world.errors_mm(pair, np.rint(start * UNIT))[0])
    began = time.perf_counter()
    if method == "elastix":
        result = baselines.elastix_rigid_baseline(fixed, moving, initial=initial)
    else:
        presearch = 0.0 if method == "sitk" else 60.0
        config = baselines.RigidBaselineConfig(
            initializer="none", intensity_window=None, rotation_presearch_deg=presearch
        )
        result = baselines.rigid_baseline(fixed, moving, initial=initial, config=config)
    seconds = time.perf_counter() - began
    mapped = np.array(
        [result.transform.TransformPoint([float(v) for v in p]) for p in pair.control_fixed_lps_mm]
    )
    after = float(np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm, axis=1)))
    return PairOutcome(method, pair.case_id, condition, misalignment, before, after, seconds)


def agent_outcome(
    method: str,
    world: AlignmentWorld,
    pair: AlignmentPair,
    start: NDArray,
    policy: Callable[..., NDArray],
    experiment: RigidExperiment | SdmExperiment,
    condition: str,
    misalignment: float,
) -> tuple[PairOutcome, Alignment]:
    result = align(world, pair, policy, start, experiment.search)
    outcome = PairOutcome(
        method,
        pair.case_id,
        condition,
        misalignment,
        result.initial_error_mm,
        result.error_mm,
        result.seconds,
        result.steps,
    )
    return outcome, result


def sdm_dice(
    world: DeformableWorld, fixed_labels: Volume, coefficients: NDArray | None, field: NDArray | None = None
) -> dict[str, float]:
    """Dice of the atlas labels carried onto the fixed grid (every 2nd voxel per axis) per structure."""
    if world.atlas_labels is None:
        return {}
    stride = 2
    sub = fixed_labels.voxels[::stride, ::stride, ::stride]
    z, y, x = (np.arange(0, n, stride, dtype=np.float64) for n in fixed_labels.shape_zyx)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    points = fixed_labels.index_to_lps(np.stack([xx, yy, zz], axis=-1))
    if field is not None:
        displacement = field[::stride, ::stride, ::stride].astype(np.float64)
    else:
        displacement = world.sdm.displacement(np.asarray(coefficients), points)
    from scipy import ndimage

    index = world.atlas_labels.lps_to_index(points + displacement)[..., ::-1]
    warped = ndimage.map_coordinates(
        world.atlas_labels.voxels, np.moveaxis(index, -1, 0), order=0, mode="constant", cval=0
    )
    return dice_scores(sub, warped, phantom_structures())
