"""Reading a bundle's files so that no file can block, exhaust memory, or lead outside the bundle.

A bundle directory is opened once (following a symlink there: bundles are swapped by renaming a symlink
over the old one) and every file is then opened relative to it, each component of its name without
following symlinks (``O_NOFOLLOW``), and without blocking (``O_NONBLOCK``: a FIFO would otherwise hang
the open). What was opened must be a regular file (``fstat`` after the open, so a file replaced between a
check and the open cannot slip through) no larger than its cap, and no more than the cap is ever read,
even from a file that grows while it is read. A symlink to ``/dev/zero``, a FIFO named ``manifest.json``,
a 100 GB sparse ``model.onnx``: each is refused with a ``BundleError`` naming the file, before its
contents are read.

Reading every file through one directory descriptor also means one read sees one directory: a swap while
it reads leaves it reading the directory it opened.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path, PurePosixPath
from types import TracebackType

from ..errors import BundleError

__all__ = ["BundleDir", "MAX_MANIFEST_BYTES", "MAX_FILE_BYTES", "read_manifest_bytes"]

# A manifest is a few kilobytes (a drift reference of a thousand features is a few hundred).
MAX_MANIFEST_BYTES = 4 << 20
# Protocol buffers cannot hold an ONNX file of 2 GiB or more (larger models keep their weights in external
# data files); the same bound is applied to every other file of a bundle.
MAX_FILE_BYTES = (2 << 30) - 1
_CHUNK = 1 << 20

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class BundleDir:
    """An open bundle directory; ``read`` and ``sha256`` its files by their names relative to it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.where = str(root)
        try:
            # The directory itself may be reached through a symlink (the deploy swaps one); its files may not.
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise
        except NotADirectoryError:
            raise BundleError("not a directory", bundle=self.where) from None
        except OSError as err:
            raise BundleError(f"cannot open the directory: {err.strerror}", bundle=self.where) from err

    def identity(self) -> tuple[int, int, int]:
        """(device, inode, ctime) of the directory opened: which one every read of this object comes from."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino, st.st_ctime_ns

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BundleDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def read(self, name: str, *, limit: int = MAX_FILE_BYTES) -> bytes:
        """The whole of file ``name``, at most ``limit`` bytes (else BundleError)."""
        fd = self._open(name, limit)
        parts, total = [], 0
        try:
            while total <= limit and (chunk := os.read(fd, min(_CHUNK, limit + 1 - total))):
                parts.append(chunk)
                total += len(chunk)
        except OSError as err:
            raise BundleError(f"cannot read {name}: {err.strerror}", bundle=self.where) from err
        finally:
            os.close(fd)
        if total > limit:  # it grew while it was read
            raise BundleError(f"{name} grew past {limit} bytes while it was read", bundle=self.where)
        return b"".join(parts)

    def sha256(self, name: str, *, limit: int = MAX_FILE_BYTES) -> str:
        """The sha256 of file ``name`` (read in chunks, never held whole), at most ``limit`` bytes."""
        fd = self._open(name, limit)
        h, total = hashlib.sha256(), 0
        try:
            while chunk := os.read(fd, _CHUNK):
                total += len(chunk)
                if total > limit:
                    raise BundleError(f"{name} grew past {limit} bytes while it was read", bundle=self.where)
                h.update(chunk)
        except OSError as err:
            raise BundleError(f"cannot read {name}: {err.strerror}", bundle=self.where) from err
        finally:
            os.close(fd)
        return h.hexdigest()

    def _open(self, name: str, limit: int) -> int:
        """A descriptor of the regular file ``name``; BundleError for anything else."""
        path = PurePosixPath(name)
        if path.is_absolute() or not path.parts or ".." in path.parts or "\x00" in name:
            raise BundleError(f"{name!r} is not a file name inside the bundle", bundle=self.where)
        fd = self.fd
        try:
            for part in path.parts[:-1]:
                parent, fd = fd, self._step(fd, part, name, _DIR_FLAGS)
                if parent != self.fd:
                    os.close(parent)
            last = self._step(fd, path.parts[-1], name, _FLAGS)
        finally:
            if fd != self.fd:
                os.close(fd)
        st = os.fstat(last)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = f"{name} is not a regular file ({_kind(st.st_mode)}); a bundle holds regular files only"
        elif st.st_size > limit:
            problem = f"{name} is {st.st_size} bytes, more than the {limit} a bundle's {_what(limit)} may have"
        if problem:
            os.close(last)
            raise BundleError(problem, bundle=self.where)
        return last

    def _step(self, fd: int, part: str, name: str, flags: int) -> int:
        try:
            # lstat first, so that opening is never what tells a device or FIFO apart (opening one can act)
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(
                    f"{name} is a symlink (or passes through one); a bundle's files must be inside it, not "
                    "linked: copy the file in",
                    bundle=self.where,
                )
            if flags == _FLAGS and not stat.S_ISREG(st.st_mode):
                raise BundleError(
                    f"{name} is not a regular file ({_kind(st.st_mode)}); a bundle holds regular files only",
                    bundle=self.where,
                )
            opened = os.open(part, flags, dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as err:
            if err.errno == errno.ELOOP:  # replaced by a symlink after the lstat
                raise BundleError(f"{name} is a symlink", bundle=self.where) from None
            raise BundleError(f"cannot open {name}: {err.strerror}", bundle=self.where) from err
        return opened


def _kind(mode: int) -> str:
    for test, word in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return word
    return "not a regular file"


def _what(limit: int) -> str:
    return "manifest" if limit == MAX_MANIFEST_BYTES else "file"


def read_manifest_bytes(root: str | os.PathLike[str], name: str) -> bytes:
    """``root/name`` read as a manifest is: not through a symlink, a regular file, at most 4 MiB."""
    with BundleDir(Path(root)) as d:
        return d.read(name, limit=MAX_MANIFEST_BYTES)
