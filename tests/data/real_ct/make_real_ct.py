"""Derive tests/data/real_ct/lung2_ct_3mm.nrrd from pyradiomics' lung2 test CT (run by hand, never by tests).

Usage (the archive is PyPI's source distribution of pyradiomics 3.1.0)::

    pip download --no-deps -d /tmp/x \
        "pyradiomics @ https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/pyradiomics-3.1.0.tar.gz"
    python tests/data/real_ct/make_real_ct.py /tmp/x/pyradiomics-3.1.0.tar.gz

The positional argument may also be an already extracted ``lung2_image.nrrd``. ``--out`` picks another
output path. Steps (all in physical space; the direction matrix of the source, identity, is kept):

1. Gaussian anti-aliasing per axis, variance (s_new^2 - s_old^2) / 2.3548^2 mm^2 (FWHM-matched;
   0 along z, where 5 mm -> 3 mm is an upsampling), ``sitk.DiscreteGaussian`` on float32.
2. Linear resampling to 3.0 mm isotropic on a grid whose outer voxel edges coincide with the
   source's (size = floor(n * s_old / s_new), origin = o + D (s_new - s_old) / 2), default -1024 HU.
3. Rounding to int16 HU (no rescale, no clipping beyond the int16 range).
4. Crop to the bounding box of the largest 6-connected component of HU > -500 (the patient body),
   widened by 10 mm on every side and clipped to the grid.
5. ``sitk.WriteImage(..., useCompression=True)`` as gzip NRRD (geometry stored as text doubles).

Importing this module has no side effects (pytest imports it for ``--doctest-modules``).
"""

from __future__ import annotations

import argparse
import hashlib
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ARCHIVE_MEMBER = "pyradiomics-3.1.0/data/lung2_image.nrrd"
SOURCE_SHA256 = "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651"
ARCHIVE_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
TARGET_SPACING_MM = 3.0
BODY_THRESHOLD_HU = -500.0
MARGIN_MM = 10.0
OUTSIDE_HU = -1024.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def derive(image: sitk.Image, spacing_mm: float = TARGET_SPACING_MM) -> sitk.Image:
    """Anti-aliased linear resampling to isotropic ``spacing_mm``, int16 HU, cropped to the body."""
    old_spacing = np.array(image.GetSpacing(), dtype=float)
    variance = [max(0.0, spacing_mm**2 - s**2) / 2.3548**2 for s in old_spacing]
    smoothed = sitk.DiscreteGaussian(
        sitk.Cast(image, sitk.sitkFloat32),
        variance=variance,
        maximumKernelWidth=64,
        maximumError=0.01,
        useImageSpacing=True,
    )
    size = [int(np.floor(n * s / spacing_mm)) for n, s in zip(image.GetSize(), old_spacing, strict=True)]
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.array(image.GetOrigin(), dtype=float) + direction @ ((spacing_mm - old_spacing) / 2.0)
    resampled = sitk.Resample(
        smoothed,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(origin.tolist()),
        (spacing_mm,) * 3,
        image.GetDirection(),
        OUTSIDE_HU,
        sitk.sitkFloat32,
    )
    voxels = np.clip(np.rint(sitk.GetArrayFromImage(resampled)), -32768, 32767).astype(np.int16)
    out = sitk.GetImageFromArray(voxels)
    out.CopyInformation(resampled)

    body = sitk.RelabelComponent(sitk.ConnectedComponent(out > BODY_THRESHOLD_HU), sortByObjectSize=True) == 1
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(body)
    box = shape.GetBoundingBox(1)  # (x0, y0, z0, nx, ny, nz)
    margin = round(MARGIN_MM / spacing_mm)
    lo = [max(0, box[i] - margin) for i in range(3)]
    hi = [min(out.GetSize()[i], box[i] + box[i + 3] + margin) for i in range(3)]
    return out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="pyradiomics-3.1.0.tar.gz or its data/lung2_image.nrrd")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("lung2_ct_3mm.nrrd"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source.name.endswith(".tar.gz"):
            print(f"archive sha256 {sha256(source)} (expected {ARCHIVE_SHA256})")
            with tarfile.open(source) as archive:
                member = archive.extractfile(ARCHIVE_MEMBER)
                if member is None:
                    raise SystemExit(f"{source}: no {ARCHIVE_MEMBER}")
                source = Path(tmp) / "lung2_image.nrrd"
                source.write_bytes(member.read())
        digest = sha256(source)
        if digest != SOURCE_SHA256:
            raise SystemExit(f"{source}: sha256 {digest}, expected {SOURCE_SHA256}")
        image = sitk.ReadImage(str(source))

    print(f"source size {image.GetSize()} spacing {image.GetSpacing()} origin {image.GetOrigin()}")
    derived = derive(image)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(derived, str(args.out), useCompression=True)
    voxels = sitk.GetArrayViewFromImage(derived)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {sha256(args.out)}")
    print(f"size {derived.GetSize()} spacing {derived.GetSpacing()} origin {derived.GetOrigin()}")
    print(f"direction {derived.GetDirection()} HU [{voxels.min()}, {voxels.max()}]")


if __name__ == "__main__":
    main()
