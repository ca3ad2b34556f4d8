"""Real CTs of four patients for self-supervised registration training and held-out test scans.

    python bench/real_ct.py prepare --out data/real_ct [--archive ARCHIVE ...]

A registry step, run once by the user (never at train or evaluate time):

1. ``python -m pip download --no-deps --no-binary :all: --no-build-isolation PACKAGE==VERSION
   -d OUT/source`` for pyradiomics 3.0.1 and TotalSegmentator 2.18.0 (skipped for an archive
   named by ``--archive``, already downloaded);
2. extracts four CTs to ``OUT/source/``: pyradiomics' test cases ``lung1`` and ``lung2`` (two
   patients' chest CTs, 0.6 x 0.6 x 5 mm) and TotalSegmentator's test files ``ts_abdomen``
   (an abdomen-pelvis CT, 3 mm) and ``ts_chest`` (a contrast-enhanced chest CT, 1.5 mm);
3. writes 3 mm isotropic copies (anti-aliased, int16 HU, cropped to the body plus 10 mm, as
   ``tests/data/real_ct/make_real_ct.py`` does) to ``OUT/images/``, and the manifests:

   - ``manifest.csv``: lung1 for training, lung1 again as ``lung1_val`` for validation
     (self-supervised pairs are moved copies, so validation sees other moves of the training
     scan), lung2 and ts_chest held out for testing (two patients never seen in training, one
     with IV contrast);
   - ``manifest_two_patients.csv``: the same with ts_abdomen as a second training scan (another
     body region);
4. writes ``OUT/PROVENANCE.md`` (archives, members, sha256, licences);
5. when ``--templates`` (default ``data/real``, made by ``bench/real_anatomy.py prepare``) holds
   the MNI 2009c symmetric T1w and T2w templates (co-registered) and the CerebrA centroids,
   writes ``OUT/multimodal_manifest.csv``: the T1w for training (``t1_train``), a moved T1w
   for validation, and the T1w and T2w as the test pair (truth: their shared landmarks);
6. when ``--slicerio-ct`` (default ``data/real_sdm/source/CTChest4.nrrd``, extracted by
   ``bench/bench_real_sdm.py prepare``, which itself needs this folder first: run this step
   again after it) exists, writes ``OUT/manifest_three_patients.csv``: ``manifest_two_patients``
   plus that chest CT (a third patient, 3 x 3 x 10 mm, another scanner) for training.

Training pairs are made by the rigid world (``configs/rigid_own_data.yaml``): moved,
re-noised, optionally re-contrasted and cropped copies of each scan, the truth known exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.io.atomic import atomic_path, atomic_write_text  # noqa: E402  (the repository root is put on the path first)

# The same derivation as the committed test CT (tests/data/real_ct/make_real_ct.py): one recipe.
sys.path.insert(0, str(ROOT / "tests" / "data" / "real_ct"))
from make_real_ct import derive  # noqa: E402

# package -> (version, {scan: archive member}, licence member)
PACKAGES = {
    "pyradiomics": (
        "3.0.1",
        {"lung1": "data/lung1_image.nrrd", "lung2": "data/lung2_image.nrrd"},
        "LICENSE.txt",
    ),
    "totalsegmentator": (
        "2.18.0",
        {
            "ts_abdomen": "tests/reference_files/example_ct.nii.gz",
            "ts_chest": "tests/reference_files/aorta_report/example_ct.nii.gz",
        },
        "LICENSE",
    ),
}
#: manifest file -> rows (case_id, scan, split)
MANIFESTS = {
    "manifest.csv": (
        ("lung1", "lung1", "train"),
        ("lung1_val", "lung1", "val"),
        ("lung2", "lung2", "test"),
        ("ts_chest", "ts_chest", "test"),
    ),
    "manifest_two_patients.csv": (
        ("lung1", "lung1", "train"),
        ("ts_abdomen", "ts_abdomen", "train"),
        ("lung1_val", "lung1", "val"),
        ("lung2", "lung2", "test"),
        ("ts_chest", "ts_chest", "test"),
    ),
}
SPACING_MM = 3.0


def archive_name(package: str) -> str:
    """The source archive's file name (``pyradiomics-3.0.1.tar.gz``)."""
    return f"{package}-{PACKAGES[package][0]}.tar.gz"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _archive(out: Path, package: str, given: list[Path]) -> Path:
    source = out / "source"
    source.mkdir(parents=True, exist_ok=True)
    name = archive_name(package)
    target = source / name
    for path in given:
        if path.name == name:
            if not path.is_file():
                raise ValueError(f"--archive {path}: no such file; pass {name} or leave --archive out")
            if not target.exists():
                shutil.copyfile(path, target)
            return target
    if not target.exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += ["--no-build-isolation", f"{package}=={PACKAGES[package][0]}", "-d", str(source)]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
    return target


TEMPLATES = {
    "t1": "source/mni_icbm152_t1_tal_nlin_sym_09c.nii",
    "t2": "source/mni_icbm152_t2_tal_nlin_sym_09c.nii",
    "points": "source/cerebra_centroids.mrk.json",
    "val": "cerebra/images/val_pose_1.nii.gz",
    "val_points": "cerebra/landmarks/val_pose_1.fcsv",
}


def multimodal_manifest(out: Path, templates: Path) -> Path | None:
    """Step 5 of the module docstring; ``None`` (nothing written) when the templates are missing."""
    paths = {name: templates / relative for name, relative in TEMPLATES.items()}
    if not all(path.is_file() for path in paths.values()):
        return None
    rel = {name: os.path.relpath(path.resolve(), out.resolve()) for name, path in paths.items()}
    lines = [
        "case_id,image,landmarks,split,modality",
        f"t1_train,{rel['t1']},{rel['points']},train,mr",
        f"t1_val,{rel['val']},{rel['val_points']},val,mr",
        f"t1,{rel['t1']},{rel['points']},test,mr",
        f"t2,{rel['t2']},{rel['points']},test,mr",
    ]
    return atomic_write_text(out / "multimodal_manifest.csv", "\n".join(lines) + "\n")


def three_patient_manifest(out: Path, slicerio_ct: Path) -> Path | None:
    """Step 6 of the module docstring; ``None`` (nothing written) when the scan is missing."""
    if not slicerio_ct.is_file():
        return None
    rows = {
        case: f"{case},images/{scan}_ct_3mm.nrrd,,{split},ct"
        for case, scan, split in MANIFESTS["manifest_two_patients.csv"]
    }
    third = f"ctchest4,{os.path.relpath(slicerio_ct.resolve(), out.resolve())},,train,ct"
    order = ("lung1", "ts_abdomen", third, "lung1_val", "lung2", "ts_chest")
    lines = ["case_id,image,landmarks,split,modality", *(rows.get(item, item) for item in order)]
    return atomic_write_text(out / "manifest_three_patients.csv", "\n".join(lines) + "\n")


def prepare(
    out: Path,
    archives: list[Path] | None = None,
    templates: Path | None = None,
    slicerio_ct: Path | None = None,
) -> None:
    """Steps 1-6 of the module docstring."""
    unknown = [a for a in archives or [] if a.name not in {archive_name(p) for p in PACKAGES}]
    if unknown:
        expected = ", ".join(archive_name(p) for p in PACKAGES)
        raise ValueError(f"--archive {unknown[0]}: expected one of {expected}")
    sources: dict[str, tuple[str, Path]] = {}
    licences: dict[str, tuple[Path, str]] = {}
    for package, (version, members, licence_member) in PACKAGES.items():
        archive = _archive(out, package, archives or [])
        with tarfile.open(archive) as archive_file:
            for name, member in members.items():
                target = out / "source" / f"{name}_image{''.join(Path(member).suffixes)}"
                if not target.exists():
                    handle = archive_file.extractfile(f"{package}-{version}/{member}")
                    if handle is None:
                        raise ValueError(f"{archive}: no member {member}")
                    with atomic_path(target, suffix="".join(target.suffixes)) as temporary:
                        temporary.write_bytes(handle.read())
                sources[name] = (member, target)
            licence = archive_file.extractfile(f"{package}-{version}/{licence_member}")
            licences[package] = (archive, licence.read().decode() if licence is not None else "(not found)")
    (out / "images").mkdir(exist_ok=True)
    facts = []
    for name, (member, path) in sources.items():
        image = sitk.ReadImage(str(path))
        derived = derive(image, SPACING_MM)
        target = out / "images" / f"{name}_ct_3mm.nrrd"
        with atomic_path(target, suffix=".nrrd") as temporary:
            sitk.WriteImage(derived, str(temporary), useCompression=True)
        facts.append(
            f"| {name} | `{member}` | {sha256(path)} | {image.GetSize()} at "
            f"{tuple(round(s, 4) for s in image.GetSpacing())} mm | `images/{target.name}` "
            f"{derived.GetSize()} at 3 mm | {sha256(target)} |"
        )
        print(f"real_ct: {name}: {image.GetSize()} -> {target} {derived.GetSize()}", flush=True)
    for manifest, rows in MANIFESTS.items():
        lines = ["case_id,image,landmarks,split,modality"]
        lines += [f"{case},images/{scan}_ct_3mm.nrrd,,{split},ct" for case, scan, split in rows]
        atomic_write_text(out / manifest, "\n".join(lines) + "\n")
    atomic_write_text(out / "PROVENANCE.md", _provenance(licences, facts))
    print(f"real_ct: wrote {', '.join(str(out / m) for m in MANIFESTS)} and {out / 'PROVENANCE.md'}")
    written = multimodal_manifest(out, templates or ROOT / "data" / "real")
    if written is not None:
        print(f"real_ct: wrote {written} (T1w vs T2w, from {templates or ROOT / 'data' / 'real'})")
    slicerio_ct = slicerio_ct or ROOT / "data" / "real_sdm" / "source" / "CTChest4.nrrd"
    written = three_patient_manifest(out, slicerio_ct)
    if written is not None:
        print(f"real_ct: wrote {written} (a third training patient: {slicerio_ct})")


def _provenance(licences: dict[str, tuple[Path, str]], facts: list[str]) -> str:
    archives = "\n".join(
        f"- `{archive.name}` (sha256 `{sha256(archive)}`): `pip download --no-deps --no-binary :all: "
        f"--no-build-isolation {package}=={PACKAGES[package][0]}`"
        for package, (archive, _) in licences.items()
    )
    texts = "\n\n".join(
        f"### {package} ({archive.name})\n\n```\n{text.strip()}\n```"
        for package, (archive, text) in licences.items()
    )
    return f"""# Real CTs of four patients (made by `bench/real_ct.py prepare`)

Sources, PyPI's source distributions:
{archives}

- pyradiomics (upstream https://github.com/AIM-Harvard/pyradiomics) ships `lung1` and `lung2` as
  test cases (two different patients' chest CTs). Its `data/README.md` says only that the folder
  "contains the test cases and baseline used to ensure consistent results". Licence: BSD-3-Clause.
- TotalSegmentator (upstream https://github.com/wasserth/TotalSegmentator) ships `ts_abdomen`
  (`tests/reference_files/example_ct.nii.gz`, an abdomen-pelvis CT) and `ts_chest`
  (`tests/reference_files/aorta_report/example_ct.nii.gz`, a contrast-enhanced chest CT) as test
  reference files. The archive does not document their origin beyond that. Licence of the
  package: Apache-2.0.

No patient identifiers are in the images' headers.

| case | archive member | member sha256 | original size / spacing | derived file | derived sha256 |
|---|---|---|---|---|---|
{chr(10).join(facts)}

Derived: anti-aliased linear resampling to 3 mm isotropic, int16 HU, cropped to the body + 10 mm.
Splits: `manifest.csv`: lung1 train, lung1 again as `lung1_val` (validation on other moved
copies), lung2 and ts_chest test (held out: two other patients); `manifest_two_patients.csv`: the
same plus ts_abdomen as a second training scan. Nothing here is committed (`data/` is ignored).

## Licences

{texts}
"""


def main(argv: list[str] | None = None) -> int:
    """CLI: ``prepare --out DIR [--archive FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("prepare", help="download (or copy) the archive and build OUT")
    command.add_argument("--out", type=Path, default=ROOT / "data" / "real_ct")
    command.add_argument(
        "--archive",
        type=Path,
        nargs="*",
        default=[],
        help=f"source archives already downloaded ({', '.join(archive_name(p) for p in PACKAGES)})",
    )
    command.add_argument(
        "--templates", type=Path, default=None, help="bench/real_anatomy.py's OUT (data/real)"
    )
    command.add_argument(
        "--slicerio-ct",
        type=Path,
        default=None,
        help="slicerio's CTChest4.nrrd (default data/real_sdm/source/, from bench/bench_real_sdm.py prepare)",
    )
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.archive, args.templates, args.slicerio_ct)
    except (ValueError, OSError, subprocess.CalledProcessError, tarfile.TarError) as error:
        print(f"real_ct.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
