"""Real chest CTs for self-supervised registration training and a held-out test scan.

    python bench/real_ct.py prepare --out data/real_ct [--archive pyradiomics-3.0.1.tar.gz]

A registry step, run once by the user (never at train or evaluate time):

1. ``python -m pip download --no-deps --no-binary :all: --no-build-isolation pyradiomics==3.0.1
   -d OUT/source`` (skipped when ``--archive`` names the source archive already downloaded);
2. extracts ``data/lung1_image.nrrd`` and ``data/lung2_image.nrrd`` (two different patients'
   chest CTs, 0.6 x 0.6 x 5 mm) to ``OUT/source/``;
3. writes 3 mm isotropic copies (anti-aliased, int16 HU, cropped to the body plus 10 mm, as
   ``tests/data/real_ct/make_real_ct.py`` does) to ``OUT/images/``, and ``OUT/manifest.csv``:
   lung1 as the training case (and, as ``lung1_val``, the validation case: self-supervised
   pairs are moved copies, so validation sees other moves of the same scan), lung2 as the
   held-out test case;
4. writes ``OUT/PROVENANCE.md`` (archive, members, sha256, licence);
5. when ``--templates`` (default ``data/real``, made by ``bench/real_anatomy.py prepare``) holds
   the MNI 2009c symmetric T1w and T2w templates (co-registered) and the CerebrA centroids,
   writes ``OUT/multimodal_manifest.csv``: the T1w for training (``t1_train``), a moved T1w
   for validation, and the T1w and T2w as the test pair (truth: their shared landmarks).

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

VERSION = "3.0.1"
ARCHIVE = f"pyradiomics-{VERSION}.tar.gz"
MEMBERS = {"lung1": "data/lung1_image.nrrd", "lung2": "data/lung2_image.nrrd"}
SPLITS = (("lung1", "lung1", "train"), ("lung1_val", "lung1", "val"), ("lung2", "lung2", "test"))
SPACING_MM = 3.0


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _archive(out: Path, given: Path | None) -> Path:
    source = out / "source"
    source.mkdir(parents=True, exist_ok=True)
    if given is not None:
        if not given.is_file():
            raise ValueError(f"--archive {given}: no such file; pass {ARCHIVE} or leave --archive out")
        target = source / ARCHIVE
        if not target.exists():
            shutil.copyfile(given, target)
        return target
    target = source / ARCHIVE
    if not target.exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += ["--no-build-isolation", f"pyradiomics=={VERSION}", "-d", str(source)]
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


def prepare(out: Path, archive_path: Path | None, templates: Path | None = None) -> None:
    """Steps 1-5 of the module docstring."""
    archive = _archive(out, archive_path)
    sources: dict[str, Path] = {}
    with tarfile.open(archive) as archive_file:
        for name, member in MEMBERS.items():
            target = out / "source" / f"{name}_image.nrrd"
            if not target.exists():
                handle = archive_file.extractfile(f"pyradiomics-{VERSION}/{member}")
                if handle is None:
                    raise ValueError(f"{archive}: no member {member}")
                with atomic_path(target) as temporary:
                    temporary.write_bytes(handle.read())
            sources[name] = target
        licence = archive_file.extractfile(f"pyradiomics-{VERSION}/LICENSE.txt")
        licence_text = licence.read().decode() if licence is not None else "(not found)"
    (out / "images").mkdir(exist_ok=True)
    facts = []
    for name, path in sources.items():
        image = sitk.ReadImage(str(path))
        derived = derive(image, SPACING_MM)
        target = out / "images" / f"{name}_ct_3mm.nrrd"
        with atomic_path(target, suffix=".nrrd") as temporary:
            sitk.WriteImage(derived, str(temporary), useCompression=True)
        facts.append(
            f"| {name} | `{MEMBERS[name]}` | {sha256(path)} | {image.GetSize()} at "
            f"{tuple(round(s, 4) for s in image.GetSpacing())} mm | `images/{target.name}` "
            f"{derived.GetSize()} at 3 mm | {sha256(target)} |"
        )
        print(f"real_ct: {name}: {image.GetSize()} -> {target} {derived.GetSize()}", flush=True)
    lines = ["case_id,image,landmarks,split,modality"]
    lines += [f"{case},images/{scan}_ct_3mm.nrrd,,{split},ct" for case, scan, split in SPLITS]
    atomic_write_text(out / "manifest.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "PROVENANCE.md", _provenance(archive, facts, licence_text))
    print(f"real_ct: wrote {out / 'manifest.csv'} and {out / 'PROVENANCE.md'}")
    written = multimodal_manifest(out, templates or ROOT / "data" / "real")
    if written is not None:
        print(f"real_ct: wrote {written} (T1w vs T2w, from {templates or ROOT / 'data' / 'real'})")


def _provenance(archive: Path, facts: list[str], licence: str) -> str:
    return f"""# Real chest CTs from pyradiomics {VERSION} (made by `bench/real_ct.py prepare`)

Source: PyPI's source distribution `{ARCHIVE}` (sha256 `{sha256(archive)}`), fetched with
`pip download --no-deps --no-binary :all: --no-build-isolation pyradiomics=={VERSION}`
(upstream https://github.com/AIM-Harvard/pyradiomics). pyradiomics ships these volumes as test
cases `lung1` and `lung2` (two different patients' chest CTs). The archive's `data/README.md`
says only that the folder "contains the test cases and baseline used to ensure consistent
results"; it does not document the images' origin, and no patient identifiers are in their
headers. Licence: pyradiomics, its `data/` folder included, is BSD-3-Clause (text below).

| case | archive member | member sha256 | original size / spacing | derived file | derived sha256 |
|---|---|---|---|---|---|
{chr(10).join(facts)}

Derived: anti-aliased linear resampling to 3 mm isotropic, int16 HU, cropped to the body + 10 mm.
Splits (`manifest.csv`): lung1 train, lung1 again as `lung1_val` (validation on other moved
copies), lung2 test (held out: another patient). Nothing here is committed (`data/` is ignored).

## Licence (LICENSE.txt of the archive)

```
{licence.strip()}
```
"""


def main(argv: list[str] | None = None) -> int:
    """CLI: ``prepare --out DIR [--archive FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("prepare", help="download (or copy) the archive and build OUT")
    command.add_argument("--out", type=Path, default=ROOT / "data" / "real_ct")
    command.add_argument("--archive", type=Path, default=None, help=f"{ARCHIVE} already downloaded")
    command.add_argument(
        "--templates", type=Path, default=None, help="bench/real_anatomy.py's OUT (data/real)"
    )
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.archive, args.templates)
    except (ValueError, OSError, subprocess.CalledProcessError, tarfile.TarError) as error:
        print(f"real_ct.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
