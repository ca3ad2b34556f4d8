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

from agents.experiments.config import RigidExperiment, SdmExperiment
from agents.search import Alignment, AlignmentOracle, QNetworkPolicy, align, refine_alignment
from envs import io
from envs.core import Volume, euler_transform
from envs.data import Dataset
from envs.tasks import (
    UNIT,
    AlignmentPair,
    AlignmentWorld,
    DeformableWorld,
    RigidWorld,
    StatisticalDeformationModel,
    dice_scores,
    fit_sdm_from_volumes,
    phantom_sdm,
    phantom_structures,
)

__all__ = [
    "CONDITIONS",
    "RIGID_BASELINES",
    "SUCCESS_MM",
    "PairOutcome",
    "SdmBundle",
    "agent_outcome",
    "alignment_score",
    "evaluate_rigid",
    "evaluate_sdm",
    "evaluation_offsets",
    "make_alignment_world",
    "markdown_table",
    "metrics_from_outcomes",
    "outcome_of",
    "overlay_png",
    "plot_success",
    "prepare_sdm",
    "rigid_baseline_outcome",
    "rigid_pairs",
    "sdm_dice",
    "summarise_errors",
    "validate_alignment",
    "validation_starts",
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
    if method == "elastix":
        import itk  # noqa: F401  (its first import takes ~10 s: not part of a registration's time)
    began = time.perf_counter()
    if method == "elastix":
        # Pyramid levels are uint8 already: no HU window (as for the SimpleITK baselines).
        result = baselines.elastix_rigid_baseline(fixed, moving, initial=initial, intensity_window=None)
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
    return outcome_of(method, pair, result, condition, misalignment), result


def outcome_of(
    method: str, pair: AlignmentPair, result: Alignment, condition: str, misalignment: float
) -> PairOutcome:
    return PairOutcome(
        method,
        pair.case_id,
        condition,
        misalignment,
        result.initial_error_mm,
        result.error_mm,
        result.seconds,
        result.steps,
    )


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


CONDITIONS = ("mono", "multimodal", "partial")
RIGID_BASELINES = ("sitk", "sitk-presearch", "elastix")


def _condition_world(experiment: RigidExperiment, dataset: Dataset, split: str, condition: str) -> RigidWorld:
    contrast = "multimodal" if condition == "multimodal" else "same"
    partial = 1.0 if condition == "partial" else 0.0
    world = make_alignment_world(
        experiment,
        dataset,
        split,
        training=False,
        contrast=contrast,
        partial_fov=partial,
        variants_per_case=2,
    )
    assert isinstance(world, RigidWorld)
    return world


def evaluate_rigid(
    experiment: RigidExperiment,
    policy: Any,
    dataset: Dataset,
    split: str,
    *,
    misalignments: Sequence[float] = (15.0, 30.0, 45.0, 60.0),
    trials: int = 20,
    conditions: Sequence[str] = CONDITIONS,
    baselines: Sequence[str] = (),
    oracle: bool = True,
    progress: bool = True,
    on_result: Callable[[str, AlignmentWorld, AlignmentPair, Alignment], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Agent (and oracle, baselines) on ``trials`` pairs per condition and misalignment (mm = deg).

    Every method starts from the same misaligned transform of the same pair. Conditions:
    ``mono`` (a moved, re-noised copy), ``multimodal`` (moved copy re-contrasted by a
    non-monotonic map), ``partial`` (moved copy cropped to a 40-70 % slab).
    """
    from tqdm import tqdm

    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"conditions: unknown {unknown}; expected some of {list(CONDITIONS)}")
    unknown = [b for b in baselines if b not in RIGID_BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; expected some of {list(RIGID_BASELINES)}")
    q_policy = QNetworkPolicy(policy)
    outcomes: list[PairOutcome] = []
    jobs = [(c, float(m)) for c in conditions for m in misalignments]
    bar = tqdm(total=len(jobs) * trials, desc="registrations", unit="pair", disable=not progress)
    for condition, misalignment in jobs:
        world = _condition_world(experiment, dataset, split, condition)
        seed = 7919 * int(misalignment) + CONDITIONS.index(condition)
        for pair, start in rigid_pairs(world, trials, misalignment, seed):
            outcome, result = agent_outcome(
                "agent", world, pair, start, q_policy, experiment, condition, misalignment
            )
            outcomes.append(outcome)
            if experiment.search.refine == "sitk":
                refined = refine_alignment(world, pair, result, experiment.search)
                outcomes.append(outcome_of("agent+sitk", pair, refined, condition, misalignment))
                result = refined
            if on_result is not None:
                on_result(condition, world, pair, result)
            if oracle:
                outcomes.append(
                    agent_outcome(
                        "oracle",
                        world,
                        pair,
                        start,
                        AlignmentOracle(world),
                        experiment,
                        condition,
                        misalignment,
                    )[0]
                )
            for method in baselines:
                outcomes.append(rigid_baseline_outcome(method, world, pair, start, condition, misalignment))
            bar.update(1)
    bar.close()
    rows = [outcome.row() for outcome in outcomes]
    return metrics_from_outcomes(outcomes), rows


def metrics_from_outcomes(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """``method -> condition -> misalignment -> summary`` (before / after TRE, success, time, Dice)."""
    groups: dict[tuple[str, str, float], list[PairOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.method, outcome.condition, outcome.misalignment), []).append(outcome)
    metrics: dict[str, Any] = {}
    for (method, condition, misalignment), group in groups.items():
        after = summarise_errors([o.after_mm for o in group], [o.seconds for o in group])
        before = summarise_errors([o.before_mm for o in group])
        entry: dict[str, Any] = {
            **after,
            "before_mean_mm": before["mean_mm"],
            "before_median_mm": before["median_mm"],
            "before_p95_mm": before["p95_mm"],
            "mean_steps": float(np.mean([o.steps for o in group])),
        }
        dice = [o.dice for o in group if o.dice]
        if dice:
            for name in dice[0]:
                entry[f"dice_{name}"] = float(np.nanmean([d[name] for d in dice]))
            entry["dice_mean"] = float(np.nanmean([np.nanmean(list(d.values())) for d in dice]))
        metrics.setdefault(method, {}).setdefault(condition, {})[f"{misalignment:g}"] = entry
    return metrics


def evaluate_sdm(
    experiment: SdmExperiment,
    policy: Any,
    dataset: Dataset,
    split: str,
    bundle: SdmBundle,
    *,
    baselines: Sequence[str] = (),
    oracle: bool = True,
    progress: bool = True,
    on_result: Callable[[str, AlignmentWorld, AlignmentPair, Alignment], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Agent (oracle, B-spline baseline) from the mean shape on every case: error, Dice, time."""
    from tqdm import tqdm

    unknown = [b for b in baselines if b != "sitk"]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown} for the sdm task; expected 'sitk' (B-spline)")
    world = make_alignment_world(experiment, dataset, split, training=False, bundle=bundle)
    assert isinstance(world, DeformableWorld)
    q_policy = QNetworkPolicy(policy)
    outcomes: list[PairOutcome] = []
    zeros = np.zeros(world.n_params)
    for index in tqdm(range(world.n_variants), desc="registrations", unit="case", disable=not progress):
        pair = world.pair(index)
        case = world.cases[int(world.variant_table[index][0])]
        subject = dataset.load(case)
        labels = subject.labels
        methods: list[tuple[str, Callable[..., NDArray]]] = [("agent", q_policy)]
        if oracle:
            methods.append(("oracle", AlignmentOracle(world)))
        for method, fn in methods:
            outcome, result = agent_outcome(method, world, pair, zeros, fn, experiment, "sdm", 0.0)
            if labels is not None:
                outcome = PairOutcome(**{**outcome.__dict__, "dice": sdm_dice(world, labels, result.params)})
            outcomes.append(outcome)
            if method == "agent":
                if labels is not None:
                    outcomes.append(
                        PairOutcome(
                            "mean shape",
                            pair.case_id,
                            "sdm",
                            0.0,
                            result.initial_error_mm,
                            result.initial_error_mm,
                            0.0,
                            0,
                            sdm_dice(world, labels, zeros),
                        )
                    )
                if on_result is not None:
                    on_result("sdm", world, pair, result)
        if "sitk" in baselines:
            outcomes.append(_bspline_outcome(world, pair, subject.volume, labels))
    rows = [outcome.row() for outcome in outcomes]
    return metrics_from_outcomes(outcomes), rows


def _bspline_outcome(
    world: DeformableWorld, pair: AlignmentPair, fixed: Volume, labels: Volume | None
) -> PairOutcome:
    from scipy import ndimage

    from agents.baselines import bspline_baseline

    began = time.perf_counter()
    result = bspline_baseline(fixed, world.atlas)
    seconds = time.perf_counter() - began
    field = result.displacement_lps_mm
    assert field is not None
    index = np.moveaxis(fixed.lps_to_index(pair.control_fixed_lps_mm)[..., ::-1], -1, 0)
    displacement = np.stack(
        [ndimage.map_coordinates(field[..., c], index, order=1, mode="nearest") for c in range(3)], axis=-1
    )
    mapped = pair.control_fixed_lps_mm + displacement
    after = float(np.mean(np.linalg.norm(mapped - pair.control_moving_lps_mm, axis=1)))
    before = float(world.errors_mm(pair, np.zeros(world.n_params, np.int64))[0])
    dice = sdm_dice(world, labels, None, field) if labels is not None else None
    return PairOutcome("sitk-bspline", pair.case_id, "sdm", 0.0, before, after, seconds, 0, dice)


def markdown_table(metrics: dict[str, Any], title: str) -> str:
    """A Markdown table: one row per method, condition and misalignment."""
    lines = [
        f"### {title}",
        "",
        "| method | condition | misalignment (mm, deg) | n | TRE before mean (mm) | TRE after mean "
        "| median | p95 | success (<2 mm) | median time (s) | Dice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, conditions in metrics.items():
        for condition, by_misalignment in conditions.items():
            for misalignment, m in by_misalignment.items():
                dice = f"{m['dice_mean']:.3f}" if "dice_mean" in m else ""
                lines.append(
                    f"| {method} | {condition} | {misalignment} | {m['n']} | {m['before_mean_mm']:.2f} | "
                    f"{m['mean_mm']:.2f} | {m['median_mm']:.2f} | {m['p95_mm']:.2f} | "
                    f"{m['success_rate']:.0%} | {m['median_s']:.3f} | {dice} |"
                )
    return "\n".join(lines) + "\n"


def plot_success(metrics: dict[str, Any], path: Path) -> Path | None:
    """Success rate against misalignment, one line per method and condition (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    drawn = False
    for method, conditions in metrics.items():
        for condition, by_misalignment in conditions.items():
            keys = sorted(by_misalignment, key=float)
            if len(keys) < 2:
                continue
            ax.plot(
                [float(k) for k in keys],
                [100 * by_misalignment[k]["success_rate"] for k in keys],
                marker="o",
                label=f"{method} ({condition})",
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("initial misalignment per parameter (+- mm and deg)")
    ax.set_ylabel("success rate (mean TRE < 2 mm), %")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def overlay_png(world: AlignmentWorld, pair: AlignmentPair, result: Alignment, path: Path) -> Path:
    """Before / after on the coarsest level's grid (the whole body): checkerboards (top) and
    green (fixed) / magenta (moving) overlays (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from envs.render import checkerboard_slices, overlay_slices

    coarsest = 0
    panels = []
    for params in (result.trajectory_params[0], result.trajectory_params[-1]):
        observation = world.observation(pair, coarsest, np.rint(params * UNIT).astype(np.int64))["patch"]
        panels.append((checkerboard_slices(observation[0], observation[1]), overlay_slices(*observation)))
    fig, axes = plt.subplots(2, 2, figsize=(10, 4.6))
    titles = (
        f"before: TRE {result.initial_error_mm:.1f} mm",
        f"after {result.steps} steps: TRE {result.error_mm:.2f} mm",
    )
    for column, ((board, overlay), title) in enumerate(zip(panels, titles, strict=True)):
        axes[0, column].imshow(board)
        axes[0, column].set_title(title, fontsize=9)
        axes[1, column].imshow(overlay)
        for row in range(2):
            axes[row, column].axis("off")
    fig.suptitle(f"{pair.case_id}: axial, coronal, sagittal at {world.levels_mm[coarsest]:g} mm", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
