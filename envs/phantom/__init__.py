"""Layer 4: synthetic CT torso phantoms with known landmarks and a known deformation model.

- ``anatomy.py``   tissues (LABELS, HU), field of view, organ shapes, LANDMARK_NAMES and their points
- ``painter.py``   a label map painted by primitives (ellipsoids, capsules, polylines)
- ``template.py``  the template (mean phantom) label map, painted once per process
- ``modes.py``     the fixed smooth deformation modes (MODE_STD_MM) in the template frame
- ``sampling.py``  a subject's scanner grid, its mapping to the template, HU rendering
- ``generate.py``  PhantomConfig, Phantom, generate_phantom, mean_phantom, deformation_modes
- ``dataset.py``   phantom_dataset (in memory), write_phantom_dataset (NIfTI + .fcsv + manifest)
- ``cli.py``       the command line ``python -m envs.phantom --out DIR --n N --seed S`` (``main``)
"""

from envs.data import SPLIT_SEED_OFFSETS
from envs.phantom.anatomy import HU, LABELS, LANDMARK_NAMES
from envs.phantom.cli import main
from envs.phantom.dataset import phantom_dataset, write_phantom_dataset
from envs.phantom.generate import (
    Phantom,
    PhantomConfig,
    deformation_modes,
    generate_phantom,
    mean_phantom,
)
from envs.phantom.modes import MODE_STD_MM

__all__ = [
    "HU",
    "LABELS",
    "LANDMARK_NAMES",
    "MODE_STD_MM",
    "SPLIT_SEED_OFFSETS",
    "Phantom",
    "PhantomConfig",
    "deformation_modes",
    "generate_phantom",
    "main",
    "mean_phantom",
    "phantom_dataset",
    "write_phantom_dataset",
]
