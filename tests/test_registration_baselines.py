"""Tests for the registration baselines on a 4 mm synthetic torso CT with known motions.

The moving volume is the fixed phantom resampled under a known transform G, with fresh noise:
``moving(q) = fixed(G(q))``, so the true fixed -> moving mapping is ``G^-1``. Errors are
measured at body points (mean target registration error, TRE).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from agents.baselines import (
    BSplineBaselineConfig,
    RegistrationResult,
    RigidBaselineConfig,
    bspline_baseline,
    elastix_rigid_baseline,
    rigid_baseline,
)
from agents.baselines import elastix as elastix_module
from envs.core import Volume
from envs.phantom import Phantom, PhantomConfig, generate_phantom

# itk's SWIG wrappers emit DeprecationWarnings when imported; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__ attribute:DeprecationWarning"
)

# Sub-voxel accuracy on 4 mm voxels for an exactly rigid motion.
TRE_TOLERANCE_MM = 2.0
# Cheaper than the defaults (measured on this 4 mm phantom: ~2 s instead of ~12 s, the error
# still down by ~75 %): a coarser mesh needs fewer metric samples per parameter.
FAST_BSPLINE = BSplineBaselineConfig(mesh_spacing_mm=100.0, metric_samples=10_000, iterations=20)


def _euler(angles_deg: tuple, translation_mm: tuple, centre: np.ndarray) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(np.asarray(centre, dtype=float).tolist())
    transform.SetRotation(*np.deg2rad(angles_deg).tolist())
    transform.SetTranslation([float(t) for t in translation_mm])
    return transform


def _resampled(fixed: Volume, transform: sitk.Transform, seed: int) -> Volume:
    """``fixed(transform(q))`` on the fixed grid, with fresh 15 HU noise, as int16 HU."""
    image = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    moved = sitk.Resample(image, image, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    voxels = sitk.GetArrayFromImage(moved) + np.random.default_rng(seed).normal(0.0, 15.0, fixed.shape_zyx)
    return fixed.with_voxels(voxels.astype(np.int16), name="moving")


def _mean_tre(transform: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> float:
    return float(
        np.mean(
            [
                np.linalg.norm(
                    np.subtract(transform.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist()))
                )
                for p in points
            ]
        )
    )


def _voxel_centres(volume: Volume) -> np.ndarray:
    """LPS mm of every voxel centre, ``(z, y, x, 3)``."""
    index_zyx = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape_zyx], indexing="ij"), axis=-1)
    points = volume.index_to_lps(index_zyx[..., ::-1].reshape(-1, 3).astype(np.float64))
    return points.reshape(*volume.shape_zyx, 3)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_phantom(0, PhantomConfig(spacing_mm=4.0))


@pytest.fixture(scope="module")
def body_points(phantom: Phantom) -> np.ndarray:
    index_zyx = np.argwhere(phantom.labels.voxels > 0)
    chosen = index_zyx[np.random.default_rng(0).choice(len(index_zyx), 20, replace=False)]
    return phantom.volume.index_to_lps(chosen[:, ::-1].astype(np.float64))


@pytest.fixture(scope="module")
def rigid_case(phantom: Phantom) -> dict:
    # 14.7 deg and 15.1 mm in all: far enough that not registering is a > 10 mm error.
    motion = _euler((10.0, -6.0, 9.0), (9.0, -8.0, 9.0), phantom.volume.center_lps_mm)
    moving = _resampled(phantom.volume, motion, seed=1)
    return {"fixed": phantom.volume, "moving": moving, "truth": motion.GetInverse()}


@pytest.fixture(scope="module")
def rigid_result(rigid_case: dict) -> RegistrationResult:
    return rigid_baseline(rigid_case["fixed"], rigid_case["moving"])


def _require_elastix() -> None:
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "ElastixRegistrationMethod"):  # itk without the elastix module
        pytest.skip("itk-elastix is not installed")


# ---------------------------------------------------------------------- SimpleITK rigid
def test_rigid_baseline_recovers_a_known_rigid_motion(
    rigid_case: dict, rigid_result: RegistrationResult, body_points: np.ndarray
) -> None:
    before = _mean_tre(sitk.Transform(), rigid_case["truth"], body_points)
    after = _mean_tre(rigid_result.transform, rigid_case["truth"], body_points)
    assert before > 10.0
    assert after < TRE_TOLERANCE_MM, after
    assert isinstance(rigid_result.transform, sitk.VersorRigid3DTransform)
    assert rigid_result.method == "sitk-rigid"
    assert rigid_result.metric_value < 0.0  # Mattes MI: negative is good
    assert rigid_result.seconds > 0.0
    assert rigid_result.displacement_lps_mm is None


def test_rigid_baseline_starts_from_a_given_initial_pose(rigid_case: dict, body_points: np.ndarray) -> None:
    # A start 6 mm / 3 deg off the truth, given as an Euler transform about another centre.
    truth = rigid_case["truth"]
    nudge = _euler((3.0, 0.0, 0.0), (6.0, 0.0, 0.0), np.array([20.0, -10.0, 5.0]))
    initial = sitk.CompositeTransform([truth, nudge])
    assert _mean_tre(initial, truth, body_points) > 5.0
    result = rigid_baseline(
        rigid_case["fixed"],
        rigid_case["moving"],
        initial=initial,
        config=RigidBaselineConfig(initializer="none"),
    )
    assert _mean_tre(result.transform, truth, body_points) < TRE_TOLERANCE_MM


def test_rotation_presearch_rescues_a_large_rotation(phantom: Phantom, body_points: np.ndarray) -> None:
    # Measured on this phantom: plain rigid_baseline recovers rotations up to 60-75 deg about
    # one axis but not 90 deg (about any axis); the pre-search (grid -60 .. 60 deg in 30 deg
    # steps, then refinement) does. 100 iterations per level: the same outcome as the default
    # 500, but a failing run stops oscillating sooner.
    motion = _euler((0.0, 0.0, 90.0), (10.0, -10.0, 5.0), phantom.volume.center_lps_mm)
    moving = _resampled(phantom.volume, motion, seed=2)
    truth = motion.GetInverse()
    plain = rigid_baseline(phantom.volume, moving, config=RigidBaselineConfig(iterations=100))
    searched = rigid_baseline(
        phantom.volume, moving, config=RigidBaselineConfig(iterations=100, rotation_presearch_deg=60.0)
    )
    assert _mean_tre(plain.transform, truth, body_points) > 20.0
    assert _mean_tre(searched.transform, truth, body_points) < TRE_TOLERANCE_MM


# ---------------------------------------------------------------------- SimpleITK B-spline
def test_bspline_baseline_recovers_a_smooth_deformation(phantom: Phantom) -> None:
    fixed = phantom.volume
    points = _voxel_centres(fixed)
    centre = fixed.center_lps_mm + np.array([15.0, -10.0, 20.0])
    direction = np.array([0.6, -0.48, 0.64])  # unit vector

    def bump(q: np.ndarray) -> np.ndarray:  # a 6 mm Gaussian bump, sigma 60 mm
        weight = np.exp(-np.sum((q - centre) ** 2, axis=-1) / (2.0 * 60.0**2))
        return 6.0 * weight[..., None] * direction

    # moving(q) = fixed(q + bump(q)) = fixed(W(q)); the fixed -> moving mapping is W^-1.
    field = sitk.GetImageFromArray(bump(points).astype(np.float64), isVector=True)
    field.CopyInformation(fixed.to_sitk())
    moving = _resampled(fixed, sitk.DisplacementFieldTransform(field), seed=3)
    inverse = points.copy()
    for _ in range(30):  # fixed point of q = p - bump(q): contracts, the bump's slope is < 0.1
        inverse = points - bump(inverse)
    truth = inverse - points
    body = phantom.labels.voxels > 0

    result = bspline_baseline(fixed, moving, config=FAST_BSPLINE)
    assert result.method == "sitk-bspline"
    assert result.displacement_lps_mm.shape == (*fixed.shape_zyx, 3)
    before = np.linalg.norm(truth[body], axis=-1).mean()
    after = np.linalg.norm((result.displacement_lps_mm - truth)[body], axis=-1).mean()
    assert before > 1.0
    assert after < 0.5 * before, (before, after)
    # The field is the transform sampled on the fixed grid: p -> p + u(p).
    for index_zyx in [(10, 20, 30), (40, 30, 50), (60, 45, 20)]:
        p = points[index_zyx]
        np.testing.assert_allclose(
            result.transform.TransformPoint(p.tolist()), p + result.displacement_lps_mm[index_zyx], atol=1e-3
        )


def test_bspline_baseline_composes_initial_under_the_bspline(
    rigid_case: dict, rigid_result: RegistrationResult, body_points: np.ndarray
) -> None:
    # One iteration per level: the B-spline stays near identity, so the total mapping is the
    # rigid `initial` applied after it and therefore still close to the truth.
    config = BSplineBaselineConfig(mesh_spacing_mm=100.0, metric_samples=2_000, iterations=1)
    result = bspline_baseline(
        rigid_case["fixed"], rigid_case["moving"], initial=rigid_result.transform, config=config
    )
    assert isinstance(result.transform, sitk.CompositeTransform)
    assert result.transform.GetNumberOfTransforms() == 2
    assert _mean_tre(result.transform, rigid_case["truth"], body_points) < TRE_TOLERANCE_MM
    fixed = rigid_case["fixed"]
    index_xyz = np.array([30.0, 20.0, 40.0])
    p = fixed.index_to_lps(index_xyz)
    u = result.displacement_lps_mm[tuple(index_xyz.astype(int)[::-1])]
    np.testing.assert_allclose(p + u, result.transform.TransformPoint(p.tolist()), atol=1e-3)
    np.testing.assert_allclose(p + u, rigid_case["truth"].TransformPoint(p.tolist()), atol=TRE_TOLERANCE_MM)


# ---------------------------------------------------------------------- elastix
def test_elastix_rigid_recovers_a_known_rigid_motion(rigid_case: dict, body_points: np.ndarray) -> None:
    _require_elastix()
    result = elastix_rigid_baseline(rigid_case["fixed"], rigid_case["moving"])
    assert isinstance(result.transform, sitk.Euler3DTransform)
    assert result.method == "elastix-rigid"
    assert np.isfinite(result.metric_value)
    assert _mean_tre(result.transform, rigid_case["truth"], body_points) < TRE_TOLERANCE_MM
    # A rigid `initial` 8 mm / 4 deg off the truth is applied through the moving header.
    nudge = _euler((0.0, 0.0, 4.0), (0.0, 8.0, 0.0), rigid_case["fixed"].center_lps_mm)
    initial = sitk.CompositeTransform([rigid_case["truth"], nudge])
    started = elastix_rigid_baseline(rigid_case["fixed"], rigid_case["moving"], initial=initial)
    assert _mean_tre(started.transform, rigid_case["truth"], body_points) < TRE_TOLERANCE_MM


@pytest.mark.parametrize("compute_zyx", ["false", "true"])
def test_elastix_euler_conversion_matches_transformix(
    phantom: Phantom, compute_zyx: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # transformix's deformation field is elastix's own evaluation of T(p) - p on the fixed grid.
    _require_elastix()
    import itk

    monkeypatch.chdir(tmp_path)  # transformix writes deformationField.mhd into the working folder

    volume = phantom.volume
    image = itk.image_from_array(np.ascontiguousarray(volume.voxels, dtype=np.float32))
    image.SetOrigin(volume.origin_lps_mm.tolist())
    image.SetSpacing(volume.spacing_xyz_mm.tolist())
    parameter_map = {
        "Transform": ["EulerTransform"],
        "NumberOfParameters": ["6"],
        "TransformParameters": ["0.2", "-0.15", "0.3", "12.5", "-7.0", "4.0"],
        "CenterOfRotationPoint": ["5.0", "-7.5", "12.0"],
        "ComputeZYX": [compute_zyx],
        "InitialTransformParameterFileName": ["NoInitialTransform"],
        "HowToCombineTransforms": ["Compose"],
        "FixedImageDimension": ["3"],
        "MovingImageDimension": ["3"],
        "FixedInternalImagePixelType": ["float"],
        "MovingInternalImagePixelType": ["float"],
        "Size": [str(n) for n in volume.size_xyz],
        "Index": ["0", "0", "0"],
        "Spacing": [str(s) for s in volume.spacing_xyz_mm],
        "Origin": [str(o) for o in volume.origin_lps_mm],
        "Direction": [str(d) for d in volume.direction.reshape(-1)],
        "UseDirectionCosines": ["true"],
        "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "FinalBSplineInterpolationOrder": ["3"],
        "Resampler": ["DefaultResampler"],
        "DefaultPixelValue": ["0"],
        "ResultImagePixelType": ["float"],
    }
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameter_map)
    elastix_field = itk.array_from_image(itk.transformix_deformation_field(image, parameters))
    converted = elastix_module._euler_from_elastix({k: tuple(v) for k, v in parameter_map.items()})
    ours = (
        np.array([converted.TransformPoint(p.tolist()) for p in _voxel_centres(volume).reshape(-1, 3)])
        - _voxel_centres(volume).reshape(-1, 3)
    ).reshape(elastix_field.shape)
    assert np.abs(elastix_field).max() > 20.0  # a real motion, not a vacuous match
    np.testing.assert_allclose(ours, elastix_field, atol=1e-3)


def test_elastix_missing_raises_an_import_error_that_says_what_to_install(
    rigid_case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "itk", None)  # makes `import itk` raise ImportError
    with pytest.raises(ImportError, match=r"pip install itk-elastix==0\.25\.4"):
        elastix_rigid_baseline(rigid_case["fixed"], rigid_case["moving"])


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("function", [rigid_baseline, bspline_baseline, elastix_rigid_baseline])
def test_rejects_inputs_that_are_not_3d_volumes(rigid_case: dict, function) -> None:
    fixed = rigid_case["fixed"]
    slice_2d = sitk.GetImageFromArray(np.zeros((56, 64), np.float32))
    with pytest.raises(ValueError, match=r"moving image must be a 3-D image, got a 2-D"):
        function(fixed, slice_2d)
    with pytest.raises(ValueError, match=r"fixed image must be an envs\.core\.Volume"):
        function(np.asarray(fixed.voxels), fixed)
    with pytest.raises(ValueError, match=r"fixed image is not a 3-D volume"):
        function(Volume(fixed.voxels[:1], fixed.spacing_xyz_mm), fixed)
    air = Volume(np.full((20, 20, 20), -1000, np.int16), (4.0, 4.0, 4.0))
    with pytest.raises(ValueError, match=r"moving image .* is constant"):
        function(fixed, air)


def test_rejects_a_config_of_the_wrong_type_and_a_non_rigid_initial(rigid_case: dict) -> None:
    fixed, moving = rigid_case["fixed"], rigid_case["moving"]
    with pytest.raises(ValueError, match="config must be a RigidBaselineConfig"):
        rigid_baseline(fixed, moving, config=BSplineBaselineConfig())
    with pytest.raises(ValueError, match="config must be a BSplineBaselineConfig"):
        bspline_baseline(fixed, moving, config=RigidBaselineConfig())
    stretch = sitk.AffineTransform(3)
    stretch.Scale(1.1)
    with pytest.raises(ValueError, match="initial must be rigid"):
        rigid_baseline(fixed, moving, initial=stretch)
    with pytest.raises(ValueError, match="initial must be a SimpleITK transform"):
        rigid_baseline(fixed, moving, initial=np.eye(4))
    with pytest.raises(ValueError, match="initial must be a SimpleITK transform"):
        bspline_baseline(fixed, moving, initial=np.eye(4))
    with pytest.raises(ValueError, match=r"parameter_overrides\['Metric'\]"):
        elastix_rigid_baseline(fixed, moving, parameter_overrides={"Metric": {"bad": 1}})


def test_no_overlap_raises_a_value_error_that_says_what_to_try(rigid_case: dict) -> None:
    fixed, moving = rigid_case["fixed"], rigid_case["moving"]
    far = Volume(moving.voxels, moving.spacing_xyz_mm, moving.origin_lps_mm + 5000.0)
    with pytest.raises(ValueError, match="rigid_baseline: the rigid stage failed") as info:
        rigid_baseline(fixed, far, config=RigidBaselineConfig(initializer="none"))
    assert "do not overlap" in str(info.value)
    assert "initializer='moments'" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match="bspline_baseline: the bspline stage failed") as info:
        bspline_baseline(fixed, far, config=FAST_BSPLINE)
    assert "initial=rigid_baseline(fixed, moving).transform" in str(info.value)


def test_elastix_no_overlap_reports_the_cause_from_its_log(rigid_case: dict) -> None:
    _require_elastix()
    moving = rigid_case["moving"]
    far = Volume(moving.voxels, moving.spacing_xyz_mm, moving.origin_lps_mm + 5000.0)
    with pytest.raises(ValueError, match=r"elastix failed \(Too many samples map outside moving image"):
        elastix_rigid_baseline(rigid_case["fixed"], far)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smoothing_sigmas_mm": (2.0, 1.0)}, "smoothing_sigmas_mm"),
        ({"shrink_factors": (4, 0, 1)}, "shrink_factors"),
        ({"iterations": 0}, "iterations"),
        ({"histogram_bins": 2}, "histogram_bins"),
        ({"sampling_fraction": 1.5}, "sampling_fraction"),
        ({"sampling_fraction": (0.5, 0.1)}, "sampling_fraction"),
        ({"metric_samples": 10}, "metric_samples"),
        ({"initializer": "centre"}, "initializer"),
        ({"rotation_presearch_deg": -10.0}, "rotation_presearch_deg"),
        ({"rotation_presearch_deg": 60.0, "rotation_presearch_step_deg": 0.0}, "rotation_presearch_step_deg"),
        (
            {"rotation_presearch_deg": 20.0, "rotation_presearch_step_deg": 30.0},
            "rotation_presearch_step_deg",
        ),
        ({"threads": 0}, "threads"),
        ({"seed": -1}, "seed"),
        ({"max_step_mm": 0.0}, "max_step_mm"),
        ({"intensity_window": (100.0, -100.0)}, "intensity_window"),
    ],
)
def test_rigid_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RigidBaselineConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mesh_spacing_mm": 0.0}, "mesh_spacing_mm"),
        ({"mesh_spacing_mm": float("nan")}, "mesh_spacing_mm"),
        ({"smoothing_sigmas_mm": (1.0,)}, "smoothing_sigmas_mm"),
        ({"iterations": 0}, "iterations"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"metric": "correlation"}, "metric"),
        ({"sampling_fraction": 0.0}, "sampling_fraction"),
        ({"threads": -2}, "threads"),
    ],
)
def test_bspline_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BSplineBaselineConfig(**kwargs)
