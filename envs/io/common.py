"""Checks shared by the readers and writers of :mod:`envs.io`: suffixes, files, ITK error text.

These helpers serve the modules of this package only; :mod:`envs.io` does not re-export them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["itk_reason", "matching_suffix", "require_file", "require_suffix"]


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
