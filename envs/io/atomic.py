"""THE atomic writer: every file medgym writes goes through here.

A file is written to a hidden temporary sibling (same folder, so the same filesystem), flushed
and fsynced, given ordinary permissions (``0o666`` less the umask, as ``open`` would), then
renamed onto the target with ``os.replace``. Readers see the old file or the complete new one,
never a part; a failure or an interrupt removes the temporary file and leaves the target as it
was. The temporary name keeps the target's suffix, because some writers (SimpleITK,
matplotlib) pick the format by it.

Writers whose output is several files that name each other (a detached ``.nhdr``/``.mhd``
header and its data file) cannot use temporary names; :func:`atomic_staging` gives them a
private folder instead, whose files are committed one by one the same way.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_staging",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_folder",
    "make_folders",
    "new_folder",
    "temporary_sibling",
]

# The compound suffixes writers care about; otherwise the last suffix is kept.
_COMPOUND_SUFFIXES = (".nii.gz", ".mrk.json", ".tar.gz")


def _format_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


def _hidden_name(stem: str) -> str:
    return f".{stem}.tmp-{secrets.token_hex(6)}"


def temporary_sibling(path: str | os.PathLike[str], suffix: str | None = None) -> Path:
    """A fresh hidden name next to ``path`` that ends in ``suffix`` (default: the path's own format suffix).

    >>> temporary_sibling("out/ct.nii.gz").name.endswith(".nii.gz")
    True
    >>> temporary_sibling("out/CT.NII.GZ", ".nii.gz").name.startswith(".CT.tmp-")
    True
    """
    path = Path(path)
    suffix = _format_suffix(path) if suffix is None else suffix
    has_suffix = suffix and path.name.lower().endswith(suffix.lower())
    stem = path.name[: len(path.name) - len(suffix)] if has_suffix else path.name
    return path.parent / f"{_hidden_name(stem)}{suffix}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _commit(written: Path, target: Path) -> None:
    """fsync ``written``, give it ordinary permissions and rename it onto ``target`` (same folder)."""
    with open(written, "rb") as stream:
        os.fsync(stream.fileno())
    os.chmod(written, 0o666 & ~_umask())
    os.replace(written, target)


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
        _commit(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_staging(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield ``path``'s name inside a private folder next to it; commit what is written there.

    For writers that produce several files named after the target and naming each other, such
    as SimpleITK writing a detached header ``ct.nhdr`` that refers to ``ct.raw.gz``: the files
    must keep their final names, so they are written into a hidden staging folder in the
    target's folder. When the ``with`` body succeeds, every file in the staging folder is
    fsynced, given ordinary permissions and renamed beside ``path`` (each one atomically),
    ``path`` itself last, so a reader that finds the new header finds its new data. On failure
    the staging folder is removed and the targets are left as they were.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_staging(folder / "ct.mhd") as staged:
    ...     _ = staged.write_text("ElementDataFile = ct.raw")
    ...     _ = staged.with_name("ct.raw").write_bytes(b"voxels")
    >>> sorted(entry.name for entry in folder.iterdir())
    ['ct.mhd', 'ct.raw']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / _hidden_name(path.name)
    staging.mkdir()
    try:
        yield staging / path.name
        # Data files first, the file named like the target (the header) last.
        for written in sorted(staging.iterdir(), key=lambda entry: entry.name == path.name):
            _commit(written, path.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def check_output_folder(path: Path, flag: str = "--out") -> None:
    """Raise ``ValueError`` unless ``path`` is a folder, or can be made as one, that this process can write.

    Checked before any work, so a bad ``--out`` costs nothing. Nothing is created: the nearest
    existing folder is probed with an anonymous temporary file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file, not a folder; give a folder path")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path}: {probe} is a file, so the folder cannot be made; give another path")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(
            f"{flag} {path}: cannot write in {probe} ({reason}); give a folder you can write to"
        ) from None


def make_folders(path: str | os.PathLike[str]) -> Path | None:
    """``mkdir -p path``; returns the top-most folder this call created (``None`` if ``path`` existed)."""
    path = Path(path)
    top = None
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            break
        top = folder
    path.mkdir(parents=True, exist_ok=True)
    return top


@contextmanager
def new_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Make ``path`` (and missing parents); if the block fails, remove only what this call made.

    A folder that existed before is left as it was, whatever the block wrote into it.
    """
    path = Path(path)
    created = make_folders(path)
    try:
        yield path
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
