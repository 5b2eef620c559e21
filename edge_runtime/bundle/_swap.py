"""Putting a finished directory where another one is, so that a reader sees one or the other, never neither.

Linux (glibc 2.28+, kernel 3.15+, ext4/xfs/btrfs/tmpfs) can exchange two directories in one step:
``renameat2(..., RENAME_EXCHANGE)``, called through ctypes (Python has no binding). Where that is missing
(another OS, an older glibc or kernel, a file system that refuses the flag), the fallback is two renames:
the old directory aside, the new one into place. Between those two a reader finds no directory at all;
``load_bundle`` treats that as "look again" for a moment, but a process that starts in exactly that
instant sees "no such directory". A symlink is always replaced in one step (a new link renamed over it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["exchange", "exchange_supported"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_RENAMEAT2 = _renameat2()


def exchange_supported() -> bool:
    """Whether this C library offers renameat2 (the kernel or file system may still refuse the flag)."""
    return _RENAMEAT2 is not None


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap the directory entries ``a`` and ``b`` (both must exist).

    Returns False, having changed nothing, when atomic exchange is not available here: the caller falls
    back to two renames. Raises OSError for any other failure.
    """
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel, or a file system without the flag
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))
