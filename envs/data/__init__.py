"""Layer 3: cases, manifests, splits, the byte-bounded cache, augmentation."""

from envs.data.dataset import (
    ByteLRUCache,
    Case,
    Dataset,
    MODALITIES,
    SPLITS,
    Subject,
    nbytes_of,
)
from envs.data.augment import (
    AugmentConfig,
    augmented_pyramid,
    invert_point,
    random_transform,
)

__all__ = [
    "AugmentConfig",
    "ByteLRUCache",
    "Case",
    "Dataset",
    "MODALITIES",
    "SPLITS",
    "Subject",
    "augmented_pyramid",
    "invert_point",
    "nbytes_of",
    "random_transform",
]
