"""Command line ``python -m envs.phantom``: write phantoms, label maps, landmarks and a manifest.

Case ``phantom_<i>`` uses phantom seed ``SEED + i``; splits are a seeded shuffle of the cases.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.io.atomic import check_output_folder, new_folder
from envs.io.cli import OneLineArgumentParser, error_line, print_error
from envs.phantom.dataset import write_phantom_cases
from envs.phantom.generate import PhantomConfig

PROG = "python -m envs.phantom"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog=PROG,
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
    try:
        check_output_folder(out, "--out")
    except ValueError as error:
        return print_error(PROG, error)
    splits = _splits(args.n, args.val_fraction, args.test_fraction, args.seed)
    cases = [(f"phantom_{index:03d}", splits[index], args.seed + index) for index in range(args.n)]
    try:
        with new_folder(out):  # on failure only the folders this call made are removed
            write_phantom_cases(out, cases, args.config)
    except OSError as error:
        return print_error(PROG, f"--out {out}: writing failed ({error_line(error)})")
    return 0
