"""Checks shared by the readers and writers of :mod:`envs.io`: suffixes, files, ITK error text.

These helpers serve the modules of this package only; :mod:`envs.io` does not re-export them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "available_memory_bytes",
    "itk_reason",
    "matching_suffix",
    "require_file",
    "require_memory",
    "require_suffix",
]


def matching_suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """The longest suffix in ``suffixes`` that ``path``'s name ends with (case-insensitive).

    >>> matching_suffix(Path("CT.NII.GZ"), (".nii", ".nii.gz", ".gz"))
    '.nii.gz'
    """
    name = path.name.lower()
    found = [suffix for suffix in suffixes if name.endswith(suffix)]
    return max(found, key=len) if found else None


def require_suffix(path: Path, suffixes: tuple[str, ...], what: str) -> str:
    """The suffix of ``path`` as spelled in ``suffixes``; ``ValueError`` naming the choices if none fits."""
    suffix = matching_suffix(path, suffixes)
    if suffix is None:
        got = "".join(path.suffixes[-2:]) or "no suffix"
        raise ValueError(
            f"{path}: unsupported {what} file suffix {got!r}; expected one of {', '.join(suffixes)}. "
            f"Rename or convert the file (e.g. with 3D Slicer or SimpleITK)"
        )
    return suffix


def require_file(path: Path, what: str) -> None:
    """``FileNotFoundError`` if ``path`` does not exist, ``ValueError`` if it is a folder."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} file not found; check the path (cwd is {Path.cwd()})")
    if path.is_dir():
        raise ValueError(f"{path}: expected a {what} file, got a folder")


def itk_reason(error: Exception) -> str:
    """The informative tail of an ITK exception (the head is a C++ source path)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def available_memory_bytes() -> int | None:
    """Memory this process may still use: ``MemAvailable`` + free swap, capped by a cgroup limit.

    ``None`` where neither ``/proc/meminfo`` nor ``sysconf`` says (then nothing is refused).
    """
    available = None
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0]) * 1024
        available = fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:  # a container's limit (cgroup v2) can be far below the machine's memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def require_memory(path: Path, claim: str, needed_bytes: int) -> None:
    """``ValueError`` before allocation if reading ``path`` needs more memory than is available.

    Args:
        path: the file, for the message.
        claim: what the header claims, e.g. ``"dim [2000, 2000, 2000] of int16"``.
        needed_bytes: the estimated peak memory of reading it.
    """
    available = available_memory_bytes()
    if available is None or needed_bytes <= available:
        return
    raise ValueError(
        f"{path}: the header claims {claim}: reading it needs about {_gib(needed_bytes)} of memory, "
        f"only {_gib(available)} available; expected a volume that fits in memory. If the header is "
        "corrupt, re-export the file; otherwise crop or downsample the volume first (e.g. SimpleITK)"
    )


def _gib(size: int) -> str:
    """``size`` bytes as e.g. ``"29.8 GiB"`` (``"45.5 TiB"`` from 1024 GiB on)."""
    gib = size / 2**30
    return f"{gib / 1024:.1f} TiB" if gib >= 1024 else f"{gib:.1f} GiB"
