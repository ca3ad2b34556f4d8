"""Split names, the seed offsets that keep phantom splits disjoint, and phantom case ids.

A phantom case is named ``phantom_<split>_<i:03d>`` and made from phantom seed
``seed + SPLIT_SEED_OFFSETS[split] + i``: adding training cases never changes the validation
or test subjects.
"""

from __future__ import annotations

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Far enough apart that no realistic split size makes two splits share a seed.
SPLIT_SEED_OFFSETS: dict[str, int] = {"train": 0, "val": 100_000, "test": 200_000}


def phantom_cases(
    n_train: int, n_val: int, n_test: int, *, seed: int = 0, caller: str = "phantom dataset"
) -> list[tuple[str, str, int]]:
    """``(case_id, split, phantom_seed)`` for each phantom case, train then val then test.

    Raises:
        ValueError: a count is negative (the message starts with ``caller``).
    """
    counts = (("train", n_train), ("val", n_val), ("test", n_test))
    for split, count in counts:
        if count < 0:
            raise ValueError(f"{caller}: n_{split} must be >= 0, got {count}")
    return [
        (f"phantom_{split}_{index:03d}", split, seed + SPLIT_SEED_OFFSETS[split] + index)
        for split, count in counts
        for index in range(count)
    ]
