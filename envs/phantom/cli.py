"""Command line ``python -m envs.phantom``: write phantoms, label maps, landmarks and a manifest.

Case ``phantom_<i>`` uses phantom seed ``SEED + i``; splits are a seeded shuffle of the cases.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.phantom.dataset import write_phantom_cases
from envs.phantom.generate import PhantomConfig


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line on stderr and exit code 2, instead of argparse's usage block: CLIs fail in one line.
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="python -m envs.phantom",
        description="Write synthetic CT torso phantoms (NIfTI), label maps, landmarks (.fcsv), manifest.csv.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, required=True, help="number of phantoms")
    parser.add_argument("--seed", type=int, default=0, help="case i uses phantom seed SEED + i")
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    parser.add_argument(
        "--partial-fov", action="store_true", help="random z crops (landmarks may be outside)"
    )
    parser.add_argument("--oblique", action="store_true", help="random oblique grid directions")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n: expected at least 1 phantom, got {args.n}")
    if args.seed < 0:
        parser.error(f"--seed: expected >= 0, got {args.seed}")
    for name in ("val_fraction", "test_fraction"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:
            parser.error(f"--{name.replace('_', '-')}: expected a fraction in [0, 1), got {value}")
    if args.val_fraction + args.test_fraction >= 1.0:
        parser.error("--val-fraction + --test-fraction: expected a sum below 1 (train needs cases)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder; pass a folder path")
    try:
        args.config = PhantomConfig(
            spacing_mm=args.spacing, partial_fov=args.partial_fov, oblique=args.oblique
        )
    except ValueError as error:
        parser.error(f"--spacing: {error}")
    return args


def _splits(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split names for cases 0..n-1: a seeded shuffle, then test, val, the rest train."""
    n_test = round(n * test_fraction)
    n_val = min(round(n * val_fraction), n - n_test)
    order = np.random.default_rng(seed).permutation(n)
    splits = ["train"] * n
    for rank, case in enumerate(order):
        if rank < n_test:
            splits[case] = "test"
        elif rank < n_test + n_val:
            splits[case] = "val"
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m envs.phantom --out DIR --n N --seed S [...]``; returns the exit code."""
    args = _parse_args(argv)
    out: Path = args.out
    created = _missing_folders(out)
    try:
        _check_writable(out)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or " ".join(str(error).split())
        print(f"python -m envs.phantom: error: --out {out}: cannot write there ({reason})", file=sys.stderr)
        return 2
    splits = _splits(args.n, args.val_fraction, args.test_fraction, args.seed)
    cases = [(f"phantom_{index:03d}", splits[index], args.seed + index) for index in range(args.n)]
    try:
        write_phantom_cases(out, cases, args.config)
    except OSError as error:
        if created:  # only folders this call made are removed: nothing of the user's
            shutil.rmtree(created[-1], ignore_errors=True)
        reason = error.strerror or " ".join(str(error).split())
        print(f"python -m envs.phantom: error: --out {out}: writing failed ({reason})", file=sys.stderr)
        return 2
    return 0


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _check_writable(out: Path) -> None:
    """Raise ``OSError`` unless a file can be made in ``out`` (if missing: its nearest existing folder)."""
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(20, f"{probe} is a file", str(probe))
    with tempfile.TemporaryFile(dir=probe):
        pass
