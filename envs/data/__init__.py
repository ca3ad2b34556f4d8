"""Layer 3: cases, manifests, splits, the byte-bounded cache, augmentation.

- ``case.py``      Case (where a subject's data come from), Subject (loaded), MODALITIES
- ``manifest.py``  CSV/YAML manifest rows -> Case
- ``splits.py``    split names, phantom split seed offsets and case ids
- ``cache.py``     ByteLRUCache, nbytes_of
- ``dataset.py``   Dataset: cases with splits, a cached loader; phantoms via a passed-in loader
- ``augment.py``   training-time augmentation: rigid/affine + elastic warps, intensity changes
"""

from envs.data.augment import (
    AugmentConfig,
    augmented_pyramid,
    invert_point,
    random_transform,
)
from envs.data.cache import ByteLRUCache, nbytes_of
from envs.data.case import MODALITIES, Case, Subject
from envs.data.dataset import Dataset, PhantomLoader
from envs.data.manifest import read_manifest
from envs.data.splits import SPLIT_SEED_OFFSETS, SPLITS, phantom_cases

__all__ = [
    "MODALITIES",
    "SPLITS",
    "SPLIT_SEED_OFFSETS",
    "AugmentConfig",
    "ByteLRUCache",
    "Case",
    "Dataset",
    "PhantomLoader",
    "Subject",
    "augmented_pyramid",
    "invert_point",
    "nbytes_of",
    "phantom_cases",
    "random_transform",
    "read_manifest",
]
