"""Layer 3: cases, manifests, splits, the byte-bounded cache, augmentation.

- ``case.py``      Case (where a subject's data come from), Subject (loaded), MODALITIES
- ``manifest.py``  CSV/YAML manifest rows -> Case
- ``splits.py``    split names, phantom split seed offsets and case ids
- ``cache.py``     ByteLRUCache, nbytes_of
- ``dataset.py``   Dataset: cases with splits, a cached loader; phantoms via a passed-in loader
- ``augment.py``   training-time augmentation: landmark variants (affine + elastic warps, gamma,
                   bias, noise, field-of-view box, body mask) and registration variants (contrast
                   LUT, noise, partial field of view)
- ``appearance.py`` per-episode appearance: a seeded bank of intensity maps and noise cubes
"""

from envs.data.appearance import NOISE_CUBES, AppearanceBank, appearance_bank
from envs.data.augment import (
    APPEARANCE_FIELDS,
    CONTRASTS,
    AugmentConfig,
    augmented_pyramid,
    crop_slab,
    draw_slab,
    foreground_noise,
    invert_point,
    is_multimodal,
    multimodal_lut,
    random_transform,
    varied_pyramid,
)
from envs.data.cache import ByteLRUCache, nbytes_of
from envs.data.case import MODALITIES, Case, Subject
from envs.data.dataset import Dataset, PhantomLoader
from envs.data.manifest import read_manifest
from envs.data.splits import SPLIT_SEED_OFFSETS, SPLITS, phantom_cases

__all__ = [
    "APPEARANCE_FIELDS",
    "CONTRASTS",
    "MODALITIES",
    "NOISE_CUBES",
    "SPLITS",
    "SPLIT_SEED_OFFSETS",
    "AppearanceBank",
    "AugmentConfig",
    "ByteLRUCache",
    "Case",
    "Dataset",
    "PhantomLoader",
    "Subject",
    "appearance_bank",
    "augmented_pyramid",
    "crop_slab",
    "draw_slab",
    "foreground_noise",
    "invert_point",
    "is_multimodal",
    "multimodal_lut",
    "nbytes_of",
    "phantom_cases",
    "random_transform",
    "read_manifest",
    "varied_pyramid",
]
