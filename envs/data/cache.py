"""A least-recently-used cache bounded by the bytes its items hold (decoded volumes, pyramids)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


def nbytes_of(item: Any) -> int:
    """Bytes held by ``item``: its ``nbytes`` or the sum over a tuple/list/dict of such items."""
    if hasattr(item, "nbytes"):
        return int(item.nbytes)
    if isinstance(item, dict):
        return sum(nbytes_of(value) for value in item.values())
    if isinstance(item, (tuple, list)):
        return sum(nbytes_of(value) for value in item)
    return 0


class ByteLRUCache:
    """Least-recently-used cache bounded by the bytes its items hold.

    An item larger than the whole budget is returned but not kept.

    Example:
        >>> import numpy as np
        >>> cache = ByteLRUCache(budget_bytes=100)
        >>> cache.get("a", lambda: np.zeros(60, np.uint8)).nbytes
        60
        >>> _ = cache.get("b", lambda: np.zeros(60, np.uint8))  # evicts "a"
        >>> "a" in cache, "b" in cache
        (False, True)
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key][0]
        self.misses += 1
        value = factory()
        size = nbytes_of(value)
        if size <= self.budget_bytes:
            while self.used_bytes + size > self.budget_bytes and self._items:
                _, (_, evicted_size) = self._items.popitem(last=False)
                self.used_bytes -= evicted_size
            self._items[key] = (value, size)
            self.used_bytes += size
        return value

    def clear(self) -> None:
        self._items.clear()
        self.used_bytes = 0
