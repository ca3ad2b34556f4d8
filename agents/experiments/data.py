"""Data and worlds from an experiment config, for all three tasks in one place.

:func:`prepare_dataset` gives the experiment's :class:`envs.data.Dataset` (phantoms are written
to disk once, then read like your own data); :func:`make_world` builds the landmark world of a
split, :func:`make_alignment_world` the rigid or SDM world (the SDM one needs the
:class:`SdmBundle` that :func:`prepare_sdm` loads or fits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agents.experiments.config import Experiment, LandmarkExperiment, RigidExperiment, SdmExperiment
from envs import io
from envs.core import Volume, check_image
from envs.data import SPLITS, Dataset
from envs.phantom import PhantomConfig, mean_phantom, phantom_dataset, write_phantom_dataset
from envs.tasks import (
    AlignmentWorld,
    DeformableWorld,
    LandmarkWorld,
    RigidWorld,
    StatisticalDeformationModel,
    fit_sdm_from_volumes,
    model_sample_dataset,
    phantom_sdm,
    shape_only_config,
)

__all__ = [
    "SdmBundle",
    "check_cases",
    "evaluation_dataset",
    "make_alignment_world",
    "make_world",
    "prepare_dataset",
    "prepare_sdm",
    "sdm_samples",
    "validation_split",
]


def prepare_dataset(experiment: Experiment) -> Dataset:
    """The experiment's dataset; phantoms are written to disk once and then read like real data.

    SDM phantoms stay in memory (generated on first use): the task scores against each
    phantom's true displacement field, which the files on disk do not carry.
    """
    data = experiment.data
    cache_bytes = int(data.cache_gib * (1 << 30))
    if data.manifest is not None:
        return Dataset.from_manifest(data.manifest, cache_bytes=cache_bytes)
    spec = data.phantoms
    assert spec is not None  # the experiment checks that one of the two is set
    if isinstance(experiment, SdmExperiment):
        config = PhantomConfig(spacing_mm=spec.spacing_mm)
        if spec.shape_only:
            config = shape_only_config(config)
        return phantom_dataset(
            spec.n_train, spec.n_val, spec.n_test, seed=spec.seed, config=config, cache_bytes=cache_bytes
        )
    folder = Path(spec.cache_dir) / (
        f"n{spec.n_train}-{spec.n_val}-{spec.n_test}_seed{spec.seed}_{spec.spacing_mm:g}mm"
        + ("_partial" if spec.partial_fov else "")
        + ("_shape" if spec.shape_only else "")
    )
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        config = PhantomConfig(spacing_mm=spec.spacing_mm, partial_fov=spec.partial_fov)
        if spec.shape_only:
            config = shape_only_config(config)
        write_phantom_dataset(folder, spec.n_train, spec.n_val, spec.n_test, seed=spec.seed, config=config)
    return Dataset.from_manifest(manifest, cache_bytes=cache_bytes)


def check_cases(experiment: Experiment, dataset: Dataset) -> None:
    """Read every case of every split now and refuse the first that cannot be trained on.

    Refused, naming the case and its file: unreadable files, degenerate images (constant, too
    small for the levels or the observed cube, see :func:`envs.core.check_image`). Any spacing
    is taken: the worlds resample every scan to the levels. Generated phantoms are skipped
    (their generator makes them valid). A bad case so costs seconds before training, not a
    failed validation mid-run.
    """
    if experiment.data.manifest is None:
        return
    env = experiment.env
    levels = tuple(env.levels_mm)
    edge = env.patch_size if isinstance(experiment, LandmarkExperiment) else env.obs_size
    for split in SPLITS:
        for case in dataset.split(split):
            what = f"case {case.case_id!r} ({split}, {case.image})"
            try:
                volume = dataset.load(case).volume
                check_image(volume, what, levels, edge)
            except (ValueError, OSError) as error:
                message = str(error)
                raise ValueError(message if what in message else f"{what}: {message}") from None


def validation_split(dataset: Dataset) -> str:
    """``"val"``, or ``"train"`` when the dataset has no validation cases (the caller warns)."""
    return "val" if dataset.split("val") else "train"


def make_world(
    experiment: LandmarkExperiment,
    dataset: Dataset,
    split: str,
    augment: bool = False,
    landmarks: list[str] | None = None,
) -> LandmarkWorld:
    """The landmark world of ``split`` (augmented when ``augment``); ``landmarks`` fixes their order."""
    env = experiment.env
    names = landmarks or list(env.landmarks or dataset.landmark_names(["train"]))
    return LandmarkWorld(
        dataset,
        split,
        names,
        env.levels_mm,
        env.patch_size,
        env.frames,
        env.preset,
        experiment.augment if augment else None,
        seed=experiment.seed,
    )


@dataclass(frozen=True)
class SdmBundle:
    """What an SDM world needs besides data: the model and the atlas it warps."""

    sdm: StatisticalDeformationModel
    atlas: Volume
    atlas_labels: Volume | None
    atlas_landmarks: dict[str, NDArray]
    structures: dict[str, tuple[int, ...]] | None = None
    """Dice structures: each label value of a user's atlas (None: the phantom's organs)"""


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
        from agents.baselines import BSplineBaselineConfig, bspline_baseline

        cases = dataset.split("train")[: config.n_fields]
        volumes = [dataset.load(case).volume for case in cases]
        # fitted once, offline: a thorough registration (on a real chest CT pair, 100 iterations
        # of 4 mm: lung Dice 0.875 where the quick default's 30 of 2 mm stops at 0.831)
        thorough = BSplineBaselineConfig(iterations=100, max_step_mm=4.0)

        def register(fixed: Volume, moving: Volume) -> NDArray:
            result = bspline_baseline(fixed, moving, config=thorough)
            assert result.displacement_lps_mm is not None
            return result.displacement_lps_mm

        model = fit_sdm_from_volumes(atlas, volumes, config.k, register, config.spacing_mm, progress)
    if model.k > 0 and atlas is not None:
        model.check_grid(atlas, "the atlas")
    structures = None  # the phantom's organs
    if config.atlas is not None:
        values = np.unique(labels.voxels) if labels is not None else []
        structures = {f"label {int(v)}": (int(v),) for v in values if v != 0}
    return SdmBundle(model, atlas, labels, landmarks, structures)


def sdm_samples(experiment: SdmExperiment, bundle: SdmBundle, dataset: Dataset) -> Dataset:
    """``sdm.samples`` training and 4 validation subjects drawn from the model (exact truth).

    They live on a grid at half the finest level's spacing over the atlas's box, in the
    modality of the data's training cases (CT for phantoms).
    """
    train = dataset.split("train")
    return model_sample_dataset(
        bundle.sdm,
        bundle.atlas,
        experiment.sdm.samples,
        4,
        seed=experiment.seed,
        modality=train[0].modality if train else "ct",
        spacing_mm=min(experiment.env.levels_mm) / 2,
        coefficient_range=experiment.env.start_range,
    )


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
    (variant 1 carries the contrast, noise and field-of-view changes, variant 0 none), and
    no random frame: their fixed volume is the scan as it is, as at test time.
    ``overrides`` replace world keyword arguments of the config.
    """
    env = experiment.env
    if isinstance(experiment, RigidExperiment):
        kwargs = env.world_kwargs()
        if not training:
            kwargs["variants_per_case"] = min(2, kwargs["variants_per_case"])
            kwargs.update(frame_motion=(0.0, 0.0), frame_scale=0.0, frame_elastic_mm=0.0)
        kwargs.update(overrides)
        return RigidWorld(dataset, split, seed=experiment.seed, **kwargs)
    if bundle is None:
        raise ValueError("make_alignment_world: the sdm task needs its SdmBundle (prepare_sdm)")
    kwargs = {**env.world_kwargs(), "require_truth": training}
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


def evaluation_dataset(experiment: Experiment, manifest: Path | None) -> Dataset:
    """The dataset an evaluation reads: ``manifest`` when given, else the experiment's own data."""
    if manifest is not None:
        return Dataset.from_manifest(manifest)
    return prepare_dataset(experiment)
