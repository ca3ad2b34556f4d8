"""The command-line boundary: every medgym CLI fails in one line on stderr with exit status 2.

``python train.py``, ``python evaluate.py`` and ``python -m envs.phantom`` share this: argparse
errors and the errors their work raises (bad files, bad config values, unwritable folders) are
printed as ``PROG: error: MESSAGE`` on a single line, never as a usage block or a traceback.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["OneLineArgumentParser", "error_line", "print_error"]


def error_line(error: BaseException) -> str:
    r"""The error's message on one line (a KeyError's without its quotes; an OSError's with its file).

    >>> error_line(KeyError("no case 'ct_7'"))
    "no case 'ct_7'"
    >>> error_line(ValueError("ct.nii: expected a 3-D volume,\n got 2-D"))
    'ct.nii: expected a 3-D volume, got 2-D'
    """
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    elif isinstance(error, OSError) and error.filename is not None and str(error.filename) not in str(error):
        message = f"{error.filename}: {error.strerror or error}"
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())


def print_error(prog: str, error: BaseException | str) -> int:
    """Print ``PROG: error: MESSAGE`` on one line of stderr; returns the exit status 2."""
    message = error if isinstance(error, str) else error_line(error)
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``PROG: error: ...``, exit status 2), no usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SystemExit(print_error(self.prog, message))
