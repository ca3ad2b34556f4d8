"""Training subjects sampled from a statistical deformation model (Krebs et al. 2017's augmentation).

A real SDM is fitted to a handful of real volumes (:func:`~envs.tasks.sdm_model.fit_sdm_from_volumes`),
and real volumes rarely come with the dense ground truth an agent learns from. The model itself
makes that truth: a sampled subject is the atlas carried through the model's field for random
coefficients plus a small smooth residual the model cannot express (so the agent meets shapes
slightly outside its span, as a real subject is), with noise and a random intensity gain:

    subject(p) = gain * atlas(p + u_c(p) + r(p)) + noise,    truth field = u_c + r

on an axis-aligned grid over the atlas's box. The field maps subject points to atlas points, the
convention of the phantoms' fields, so :class:`~envs.tasks.sdm.DeformableWorld` scores an
agent on it exactly (``Subject.extras["truth_field"]``). Every subject is a function of
``(seed, index)``: the same dataset is rebuilt after a restart without storing anything.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from envs.core import Volume
from envs.data import Case, Dataset, Subject
from envs.tasks.sdm_model import StatisticalDeformationModel, warp_by_field

__all__ = ["SAMPLE_ELASTIC_GRID_MM", "model_sample_dataset", "sample_subject"]

SAMPLE_ELASTIC_GRID_MM = 40.0
"""control spacing of the residual field (mm): smooth, like an inter-subject difference"""


def sample_subject(
    model: StatisticalDeformationModel,
    atlas: Volume,
    rng: np.random.Generator,
    *,
    spacing_mm: float = 2.0,
    coefficient_range: float = 2.5,
    elastic_mm: float = 2.0,
    noise: float = 0.02,
    gain: float = 0.1,
) -> tuple[Volume, NDArray[np.float32], NDArray[np.float64]]:
    """One subject drawn from ``model``: ``(volume, truth field (z, y, x, 3) mm, coefficients)``.

    Coefficients are standard normal, clipped to ``+-coefficient_range``; the residual is normal
    with std-dev ``elastic_mm`` on a ``SAMPLE_ELASTIC_GRID_MM`` lattice, cubic-interpolated;
    ``noise`` is Gaussian with that fraction of the atlas's 1-99 % intensity range; the gain is
    uniform in ``1 +- gain``.
    """
    for name, value in (("spacing_mm", spacing_mm), ("coefficient_range", coefficient_range)):
        if not value > 0:
            raise ValueError(f"SDM samples: {name} must be > 0, got {value}")
    for name, value in (("elastic_mm", elastic_mm), ("noise", noise), ("gain", gain)):
        if not 0 <= value < (1 if name == "gain" else np.inf):
            raise ValueError(f"SDM samples: {name} must be >= 0 (gain < 1), got {value}")
    lower, upper = atlas.extent_lps_mm
    size_xyz = np.maximum(2, np.round((upper - lower) / spacing_mm).astype(int))
    grid = Volume(
        np.broadcast_to(np.zeros((), np.float32), tuple(size_xyz[::-1])),
        (spacing_mm,) * 3,
        (lower + upper) / 2 - (size_xyz - 1) * spacing_mm / 2,
    )
    coefficients = np.clip(rng.standard_normal(model.k), -coefficient_range, coefficient_range)
    field = model.field_on(grid, coefficients)
    if elastic_mm > 0:
        nodes = np.maximum(2, np.ceil(size_xyz * spacing_mm / SAMPLE_ELASTIC_GRID_MM).astype(int) + 1)
        coarse = rng.normal(0.0, elastic_mm, size=(3, *nodes[::-1]))
        # cubic onto a grid 4x coarser than the subject's, then linear: smooth and fast
        middle = tuple(max(2, -(-n // 4)) for n in grid.shape_zyx)
        for axis in range(3):
            smooth = ndimage.zoom(
                coarse[axis], np.divide(middle, nodes[::-1]), order=3, grid_mode=True, mode="nearest"
            )
            full = ndimage.zoom(
                smooth, np.divide(grid.shape_zyx, middle), order=1, grid_mode=True, mode="nearest"
            )
            field[..., axis] += full.astype(np.float32)
    low, high = np.percentile(atlas.voxels[::2, ::2, ::2], [1.0, 99.0])
    values = warp_by_field(atlas, grid, field).voxels * np.float32(1.0 + rng.uniform(-gain, gain))
    if noise > 0:
        values += rng.normal(0.0, noise * float(high - low), values.shape).astype(np.float32)
    return grid.with_voxels(values.astype(np.float32), name="SDM sample"), field, coefficients


def model_sample_dataset(
    model: StatisticalDeformationModel,
    atlas: Volume,
    n_train: int,
    n_val: int = 0,
    *,
    seed: int = 0,
    modality: str = "ct",
    cache_bytes: int = 2 << 30,
    **sample_kwargs: float,
) -> Dataset:
    """A dataset of ``n_train`` + ``n_val`` subjects sampled from ``model`` (made when first loaded).

    Case ids are ``sample_000``, ...; ``sample_kwargs`` go to :func:`sample_subject`. Each
    subject carries its exact field in ``extras["truth_field"]``. Validation subjects have no
    residual (they lie in the model's span), so their error measures the agent's coefficients
    alone instead of a floor the residual sets.
    """
    if n_train < 1 or n_val < 0:
        raise ValueError(
            f"SDM samples: expected >= 1 training and >= 0 validation subjects, got {n_train}, {n_val}"
        )
    model.check_grid(atlas, "the atlas")
    sample_subject(model, atlas, np.random.default_rng(0), **sample_kwargs)  # bad settings fail now
    splits = ["train"] * n_train + ["val"] * n_val
    cases = [
        Case(f"sample_{index:03d}", split, modality=modality, phantom_seed=index)
        for index, split in enumerate(splits)
    ]

    def load(case: Case) -> Subject:
        rng = np.random.default_rng([seed, int(case.phantom_seed or 0), 0x5D])
        settings = {**sample_kwargs, "elastic_mm": 0.0} if case.split == "val" else sample_kwargs
        volume, field, coefficients = sample_subject(model, atlas, rng, **settings)
        extras = {"truth_field": field, "coefficients": coefficients}
        return Subject(case, volume.with_voxels(volume.voxels, name=case.case_id), {}, None, extras)

    return Dataset(
        cases, cache_bytes=cache_bytes, phantom_loader=load, source=f"{n_train + n_val} SDM samples"
    )
