"""Seeds that do not depend on the process: per-case and per-variant streams reproduce anywhere."""

from __future__ import annotations

__all__ = [
    "stable_hash",
]


def stable_hash(text: str) -> int:
    """A process-independent hash of ``text`` in ``[0, 2**31 - 1)``.

    Python's ``hash`` of a ``str`` is salted per process, so it cannot seed a reproducible
    stream; this polynomial hash can.

    >>> stable_hash("case-001") == stable_hash("case-001")
    True
    """
    value = 0
    for byte in text.encode():
        value = (value * 131 + byte) % (2**31 - 1)
    return value
