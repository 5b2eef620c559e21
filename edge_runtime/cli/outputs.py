"""Output paths given on the command line: checked before the work starts, written with a one-line error.

A run, a benchmark or a conversion that ends by failing to write its result has wasted its time; so the
place is checked first, and a write that fails anyway (disk full) is still one line, not a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EdgeRuntimeError

__all__ = ["check_writable_file", "check_writable_dir", "write_output"]


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def check_writable_file(path: Path, option: str) -> None:
    """Raise EdgeRuntimeError naming ``option`` unless a file can be written at ``path``."""
    if path.is_dir():
        raise EdgeRuntimeError(f"{option} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist (create it first)"
        raise EdgeRuntimeError(f"{option} {path}: {parent} {what}; or choose another place")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EdgeRuntimeError(f"{option} {path}: not writable by this user; choose another place")


def check_writable_dir(path: Path, option: str) -> None:
    """Raise EdgeRuntimeError naming ``option`` unless ``path`` is (or can be made) a writable directory."""
    if path.exists() and not path.is_dir():
        raise EdgeRuntimeError(f"{option} {path}: is a file, not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise EdgeRuntimeError(f"{option} {path}: {base} is not a directory; choose another place")
    if not os.access(base, os.W_OK | os.X_OK):
        raise EdgeRuntimeError(f"{option} {path}: {base} must be writable by this user; choose another place")


def write_output(path: Path, text: str, option: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise EdgeRuntimeError(f"{option} {path}: cannot write it: {err.strerror or err}") from None
