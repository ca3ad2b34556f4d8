"""THE atomic writer: every file medgym writes goes through here.

A file is written to a hidden temporary sibling (same folder, so the same filesystem), flushed
and fsynced, given ordinary permissions (``0o666`` less the umask, as ``open`` would), then
renamed onto the target with ``os.replace``. Readers see the old file or the complete new one,
never a part; a failure or an interrupt removes the temporary file and leaves the target as it
was. The temporary name keeps the target's suffix, because some writers (SimpleITK,
matplotlib) pick the format by it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text", "temporary_sibling"]

# The compound suffixes writers care about; otherwise the last suffix is kept.
_COMPOUND_SUFFIXES = (".nii.gz", ".mrk.json", ".tar.gz")


def _format_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


def temporary_sibling(path: str | os.PathLike[str], suffix: str | None = None) -> Path:
    """A fresh hidden name next to ``path`` that ends in ``suffix`` (default: the path's own format suffix).

    >>> temporary_sibling("out/ct.nii.gz").name.endswith(".nii.gz")
    True
    """
    path = Path(path)
    suffix = _format_suffix(path) if suffix is None else suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    return path.parent / f".{stem}.tmp-{secrets.token_hex(6)}{suffix}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only if the ``with`` body succeeds.

    For writers that take a file name (``sitk.WriteImage``, ``np.savez``, ``torch.save``,
    ``fig.savefig``). The parent folder is created if needed. ``suffix`` overrides the
    temporary file's suffix when the writer needs a particular one.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as temporary:
    ...     _ = temporary.write_text("done")
    >>> (folder / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path, suffix)
    try:
        yield temporary
        _fsync_file(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as temporary:
        write(temporary)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "xb") as stream:
        stream.write(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    # newline="" keeps the "\n" line ends csv/json produce on every platform.
    with atomic_path(path) as temporary, open(temporary, "x", encoding="utf-8", newline="") as stream:
        stream.write(text)
    return path
