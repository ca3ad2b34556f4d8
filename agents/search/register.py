"""Registering two volumes with a trained agent, and writing the answer as files Slicer reads.

:func:`register` takes ``Volume`` objects or 3-D SimpleITK images, builds the world's pair and
runs :func:`agents.search.align` (and the optional refinement). Rigid answers are
``SimpleITK.Euler3DTransform`` objects mapping fixed to moving points (LPS mm); SDM answers are
displacement fields ``(z, y, x, 3)`` in mm on the fixed grid. :func:`write_registration` writes
every file through :mod:`envs.io`, whose writers are atomic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from agents.search.align import AlignConfig, Alignment, align, refine_alignment
from agents.search.guard import guard_alignment
from agents.search.policies import AlignmentPolicy
from envs import io
from envs.core import Volume, field_transform, params_from_transform
from envs.io.atomic import atomic_write_text
from envs.tasks import UNIT, AlignmentWorld, DeformableWorld

__all__ = ["register", "write_registration"]


def _as_volume(image: object, role: str) -> Volume:
    if isinstance(image, Volume):
        return image
    if isinstance(image, sitk.Image):
        if image.GetDimension() != 3:
            raise ValueError(
                f"register: the {role} image is {image.GetDimension()}-D; expected two 3-D volumes "
                "(fixed and moving of the same dimensionality)"
            )
        return Volume.from_sitk(image, name=role)
    raise ValueError(f"register: the {role} image must be an envs.core.Volume or a 3-D SimpleITK image")


def register(
    fixed: Volume | sitk.Image,
    moving: Volume | sitk.Image | None,
    policy: AlignmentPolicy,
    world: AlignmentWorld,
    *,
    initial: NDArray | list[float] | tuple[float, ...] | sitk.Transform | None = None,
    preset: str = "ct",
    moving_preset: str | None = None,
    config: AlignConfig = AlignConfig(),
) -> tuple[Any, Alignment]:
    """Register ``moving`` to ``fixed`` with a trained agent; returns ``(answer, alignment)``.

    For a rigid world the answer is a ``SimpleITK.Euler3DTransform`` mapping fixed points to
    moving points (write it with :func:`envs.io.write_transform`; Slicer and SimpleITK read
    it); for an SDM world it is the displacement field ``(z, y, x, 3)`` on the fixed grid
    (``moving`` must be the world's atlas, or ``None``). ``initial`` is a SimpleITK transform
    or rigid parameters (mm, degrees) to start from (default: identity).

    A rigid answer passes the plausibility guard (``config.guard``, see
    :mod:`agents.search.guard`): an implausible one is replaced by SimpleITK's
    (``alignment.fallback == "sitk"``, with the reason in ``alignment.fallback_reason``) or,
    with ``config.fallback == "none"``, refused.

    Raises:
        ValueError: images of other dimensionality, a moving volume that does not overlap
            the fixed volume's region of interest under the initial transform, or an
            implausible answer with ``config.fallback == "none"``.
    """
    fixed = _as_volume(fixed, "fixed")
    if isinstance(world, DeformableWorld):
        if moving is not None and _as_volume(moving, "moving") is not world.atlas:
            raise ValueError("register: an SDM agent warps its own atlas; pass moving=None or world.atlas")
        pair = world.pair_from_volumes(fixed, preset=preset)
        start = np.zeros(world.n_params) if initial is None else np.asarray(initial, np.float64)
    else:
        moving = _as_volume(moving, "moving")
        pair = world.pair_from_volumes(fixed, moving, preset=preset, moving_preset=moving_preset)  # type: ignore[attr-defined]
        if initial is None:
            start = np.zeros(world.n_params)
        elif isinstance(initial, np.ndarray | list | tuple):
            start = np.asarray(initial, np.float64)
        else:
            start = params_from_transform(initial, pair.center_lps_mm)
    first = world.render_moving(pair, 0, np.rint(start * UNIT).astype(np.int64))
    if not first.any():
        raise ValueError(
            f"register: the moving volume does not overlap the fixed volume's region of interest under the "
            f"initial transform (start parameters {np.round(start, 2).tolist()}); check both headers "
            "(origin, direction) or pass an initial transform that brings them together"
        )
    result = align(world, pair, policy, start, config)
    if config.refine == "sitk" and not isinstance(world, DeformableWorld):
        result = refine_alignment(world, pair, result, config)
    result = guard_alignment(world, pair, start, result, config)
    if result.fallback == "refused":
        raise ValueError(
            f"register: the agent's answer is implausible ({result.fallback_reason}); no result was "
            "written. Set search.fallback: sitk to fall back to SimpleITK, or pass an initial transform "
            "closer to the answer"
        )
    params_int = np.rint(result.params * UNIT).astype(np.int64)
    if isinstance(world, DeformableWorld):
        return world.sdm.field_on(fixed, result.params), result
    return world.transform(pair, params_int), result  # type: ignore[attr-defined]


def write_registration(
    folder: str | Path,
    fixed: Volume,
    moving: Volume,
    answer: sitk.Transform | NDArray,
    alignment: Alignment,
    *,
    param_names: Sequence[str] = (),
    labels: Volume | None = None,
) -> dict[str, Path]:
    """Write a registration as files SimpleITK and 3D Slicer read; returns the paths by kind.

    Rigid (``answer`` a SimpleITK transform): ``transform.tfm`` (fixed -> moving points, ITK's
    convention: Slicer uses it to resample the moving volume onto the fixed one). SDM
    (``answer`` a displacement field on the fixed grid): ``displacement.nii.gz``, a vector
    volume Slicer loads as a transform. Both: ``warped.nii.gz`` (moving resampled on the fixed
    grid), ``warped_labels.nii.gz`` when ``labels`` (the moving label map) is given,
    ``trajectory.csv`` (level, parameters and error per step) and ``registration.json`` (time,
    steps, and whether the plausibility guard replaced the agent's answer: ``fallback``,
    ``fallback_reason``). Every file is written atomically.
    """
    out = Path(folder)
    written: dict[str, Path] = {}
    fixed_image = fixed.to_sitk()
    if isinstance(answer, np.ndarray):
        written["displacement"] = io.write_displacement_field(answer, fixed, out / "displacement.nii.gz")
        transform: sitk.Transform = field_transform(answer, fixed)
    else:
        transform = answer
        written["transform"] = io.write_transform(transform, out / "transform.tfm")
    background = float(np.min(moving.voxels))
    warped = sitk.Resample(
        sitk.Cast(moving.to_sitk(), sitk.sitkFloat32), fixed_image, transform, sitk.sitkLinear, background
    )
    warped_volume = Volume.from_sitk(sitk.Cast(warped, moving.to_sitk().GetPixelID()), name="warped")
    written["warped"] = io.write_volume(warped_volume, out / "warped.nii.gz")
    if labels is not None:
        warped_labels = sitk.Resample(labels.to_sitk(), fixed_image, transform, sitk.sitkNearestNeighbor, 0)
        written["warped_labels"] = io.write_volume(
            Volume.from_sitk(warped_labels, name="warped labels"), out / "warped_labels.nii.gz"
        )
    names = list(param_names) or [f"p{i}" for i in range(alignment.trajectory_params.shape[1])]
    lines = [",".join(["step", "level", *names, "error_mm"])]
    for step, (level, params, error) in enumerate(
        zip(
            alignment.trajectory_levels,
            alignment.trajectory_params,
            alignment.trajectory_errors_mm,
            strict=True,
        )
    ):
        lines.append(",".join([str(step), str(int(level)), *(f"{v:.3f}" for v in params), f"{error:.4f}"]))
    written["trajectory"] = atomic_write_text(out / "trajectory.csv", "\n".join(lines) + "\n")
    summary = {
        "case_id": alignment.case_id,
        "seconds": round(alignment.seconds, 4),
        "steps": alignment.steps,
        "params": [round(float(v), 4) for v in alignment.params],
        "param_names": names,
        "fallback": alignment.fallback or None,
        "fallback_reason": alignment.fallback_reason,
    }
    written["summary"] = atomic_write_text(out / "registration.json", json.dumps(summary, indent=2) + "\n")
    return written
