"""The elastix rigid registration baseline (optional package ``itk-elastix``, imported lazily).

:func:`elastix_rigid_baseline` runs elastix's default rigid parameter map on the same prepared
images as the SimpleITK baselines and returns a SimpleITK ``Euler3DTransform`` mapping FIXED
LPS points (mm) to MOVING points, so its result is used exactly like theirs.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from agents.baselines.sitk_common import (
    PAIR,
    RegistrationResult,
    check_pair,
    check_window,
    image_centre,
    prepare_image,
    rigid_parts_of_initial,
    sitk_reason,
)
from envs.core import Volume, compose_rigid, matrix_offset, rigid_transform

__all__ = ["elastix_rigid_baseline"]

_ELASTIX_MISSING = (
    "elastix baseline: the itk-elastix package is not installed; pip install itk-elastix==0.25.4"
)


def _elastix_value(value: object, key: str) -> tuple[str, ...]:
    """An elastix parameter value as the tuple of strings elastix stores."""
    items = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    strings = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            strings.append("true" if item else "false")
        elif isinstance(item, (str, int, float, np.integer, np.floating)):
            strings.append(str(item))
        else:
            raise ValueError(
                f"elastix_rigid_baseline: parameter_overrides[{key!r}] must be a str, bool, int, float "
                f"or a list of those, got {type(item).__name__}"
            )
    if not strings:
        raise ValueError(f"elastix_rigid_baseline: parameter_overrides[{key!r}] is empty")
    return tuple(strings)


def _to_itk(image: sitk.Image, itk: object) -> object:
    """A float32 ITK image with the voxels and physical geometry of a SimpleITK image."""
    converted = itk.image_from_array(np.ascontiguousarray(sitk.GetArrayFromImage(image), np.float32))
    converted.SetOrigin(image.GetOrigin())
    converted.SetSpacing(image.GetSpacing())
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    converted.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return converted


def _euler_from_elastix(
    parameter_map: Mapping[str, Sequence[str]], caller: str = "elastix_rigid_baseline"
) -> sitk.Euler3DTransform:
    """The SimpleITK transform of an elastix EulerTransform parameter map (fixed -> moving).

    elastix's EulerTransform is ITK's Euler3DTransform: parameters ``(angle_x, angle_y,
    angle_z, t_x, t_y, t_z)`` (radians, mm), rotation about ``CenterOfRotationPoint``, angles
    composed Z-X-Y unless ``ComputeZYX`` is true.
    """
    kind = parameter_map["Transform"][0]
    values = parameter_map["TransformParameters"]
    initial = parameter_map.get("InitialTransformParameterFileName", ("NoInitialTransform",))[0]
    if kind != "EulerTransform" or len(values) != 6 or initial != "NoInitialTransform":
        raise ValueError(
            f"{caller}: elastix returned a {kind} with {len(values)} parameters (initial transform "
            f"{initial!r}), expected one 3-D EulerTransform; do not override 'Transform'"
        )
    angles_and_shift = [float(v) for v in values]
    centre = [float(v) for v in parameter_map["CenterOfRotationPoint"]]
    euler = sitk.Euler3DTransform(centre, *angles_and_shift[:3], angles_and_shift[3:])
    euler.SetComputeZYX(parameter_map.get("ComputeZYX", ("false",))[0] == "true")
    return euler


def elastix_rigid_baseline(
    fixed: Volume,
    moving: Volume,
    *,
    initial: sitk.Transform | None = None,
    parameter_overrides: Mapping[str, object] | None = None,
    intensity_window: tuple[float, float] | None = (-1000.0, 2000.0),
    threads: int | None = None,
) -> RegistrationResult:
    """Rigidly register ``moving`` to ``fixed`` with elastix (optional package itk-elastix).

    Uses elastix's default ``"rigid"`` parameter map: Euler transform, advanced Mattes MI,
    adaptive stochastic gradient descent, 4 resolutions of 256 iterations, 2048 random samples
    per iteration. Its capture range is narrower than :func:`rigid_baseline`'s; more
    resolutions (``{"NumberOfResolutions": 5}``) widen it somewhat.

    Args:
        fixed: the reference volume.
        moving: the volume to align to it.
        initial: a rigid starting pose mapping fixed to moving points. It is applied exactly by
            re-labelling the moving image's header (no resampling), then composed with
            elastix's result.
        parameter_overrides: elastix parameters to replace in the default rigid map, e.g.
            ``{"MaximumNumberOfIterations": 512, "NumberOfResolutions": 3}``.
        intensity_window: clip intensities to ``[low, high]`` first (as the SimpleITK
            baselines do); ``None`` keeps them.
        threads: elastix threads; ``None`` uses all cores.

    Returns:
        A :class:`RegistrationResult` whose ``transform`` is an ``Euler3DTransform`` mapping
        fixed to moving points; ``metric_value`` is elastix's final metric value (NaN if its
        log did not report one).

    Raises:
        ImportError: itk-elastix is not installed.
        ValueError: bad input (as :func:`rigid_baseline`), bad overrides, a non-Euler result
            transform (an override changed ``Transform``), or elastix fails (typically: no
            overlap).
    """
    caller = "elastix_rigid_baseline"
    fixed_volume, moving_volume = check_pair(fixed, moving, caller)
    check_window(caller, intensity_window)
    if threads is not None and int(threads) < 1:
        raise ValueError(f"{caller}: threads must be >= 1 or None (all cores), got {threads}")
    if parameter_overrides is not None and not isinstance(parameter_overrides, Mapping):
        raise ValueError(
            f"{caller}: parameter_overrides must be a dict of elastix parameter -> value, "
            f"got {type(parameter_overrides).__name__}"
        )
    overrides = {str(k): _elastix_value(v, str(k)) for k, v in (parameter_overrides or {}).items()}
    fixed_image = prepare_image(fixed_volume, "fixed image", intensity_window, caller)
    moving_image = prepare_image(moving_volume, "moving image", intensity_window, caller)
    try:
        import itk

        itk.ElastixRegistrationMethod  # noqa: B018 (itk loads its modules lazily)
    except (ImportError, AttributeError) as error:
        raise ImportError(_ELASTIX_MISSING) from error
    # The clock starts after the import: itk loads its wrapped modules lazily, which is slow
    # once per process and no part of a registration.
    start_time = time.perf_counter()
    rotation, offset = np.eye(3), np.zeros(3)
    if initial is not None:
        # initial(p) = R p + b. A moving image whose every voxel is re-labelled from x to
        # R^T (x - b) shows, at y, what the original shows at initial(y): registering to it and
        # composing with `initial` afterwards is exact and needs no resampling.
        rotation, offset = rigid_parts_of_initial(initial, image_centre(fixed_image), caller)
        direction = np.asarray(moving_image.GetDirection()).reshape(3, 3)
        moving_image.SetDirection((rotation.T @ direction).reshape(-1).tolist())
        moving_image.SetOrigin((rotation.T @ (np.asarray(moving_image.GetOrigin()) - offset)).tolist())

    parameters = itk.ParameterObject.New()
    parameter_map = parameters.GetDefaultParameterMap("rigid")
    parameter_map["WriteResultImage"] = ("false",)
    for key, value in overrides.items():
        parameter_map[key] = value
    parameters.AddParameterMap(parameter_map)

    with tempfile.TemporaryDirectory(prefix="medgym-elastix-") as folder:
        registration = itk.ElastixRegistrationMethod.New(
            _to_itk(fixed_image, itk), _to_itk(moving_image, itk)
        )
        registration.SetParameterObject(parameters)
        registration.SetLogToConsole(False)
        registration.SetOutputDirectory(folder)
        registration.SetLogToFile(True)
        registration.SetLogFileName("elastix.log")
        if threads is not None:
            registration.SetNumberOfThreads(int(threads))
        log_file = Path(folder, "elastix.log")
        try:
            registration.Update()
        except RuntimeError as error:
            # The exception only says "see the log"; the log's last Description is the cause.
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            causes = re.findall(r"Description:\s*(.+)", log)
            reason = causes[-1].split("): ")[-1].strip() if causes else sitk_reason(error)
            raise ValueError(
                f"{caller}: elastix failed ({reason}). The {PAIR} probably do not "
                "overlap under `initial` (the scanner headers when it is None); start from "
                "initial=rigid_baseline(fixed, moving).transform or check both volumes' headers"
            ) from error
        log = log_file.read_text(errors="replace")
        result_map = registration.GetTransformParameterObject().GetParameterMap(0)

    found = _euler_from_elastix(result_map, caller)
    # Total mapping initial(found(p)).
    rotation, offset = compose_rigid((rotation, offset), matrix_offset(found))
    transform = rigid_transform(rotation, offset, found.GetCenter(), kind="euler")
    values = re.findall(r"Final metric value\s*=\s*(\S+)", log)
    return RegistrationResult(
        transform=transform,
        seconds=time.perf_counter() - start_time,
        metric_value=float(values[-1]) if values else float("nan"),
        method="elastix-rigid",
    )
