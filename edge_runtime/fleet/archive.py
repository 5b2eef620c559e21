"""A bundle as one file to send: a plain tar (stdlib ``tarfile``) made the same way every time, and taken apart
on the device with nothing but regular files inside the destination.

The archive's sha256 is what the signed release record names, so a device unpacks only an archive whose
every byte the publisher signed; the unpacked bundle is then verified as any bundle is (checksums, its own
Ed25519 signature, the ONNX file). Unpacking still refuses links, devices, absolute names and ``..``:
a signed archive is trusted to be the publisher's, not to be harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import MANIFEST, Bundle, Manifest, use_bundle
from ..errors import ReleaseError

__all__ = ["PackedBundle", "pack_bundle", "unpack_archive", "fsync_dir"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_MAX_FILES = 10_000


@dataclass(frozen=True)
class PackedBundle:
    archive: bytes
    manifest: Manifest
    manifest_sha256: str
    unpacked: int  # bytes of the files


def pack_bundle(path: str | os.PathLike[str], **verify: Any) -> PackedBundle:
    """The verified bundle at ``path`` as a tar: sorted names, no owners or times, so the same bundle always
    makes the same bytes (and the same release id). ``verify``: load_bundle's keys (trusted_keys=...)."""

    def read(bundle: Bundle) -> tuple[dict[str, bytes], Manifest]:
        names = [MANIFEST, bundle.manifest.model_file, *bundle.manifest.files]
        return {name: (bundle.path / name).read_bytes() for name in sorted(set(names))}, bundle.manifest

    files, manifest = use_bundle(path, read, **verify)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return PackedBundle(
        out.getvalue(),
        manifest,
        hashlib.sha256(files[MANIFEST]).hexdigest(),
        sum(len(d) for d in files.values()),
    )


def unpack_archive(archive: Path, dest: Path, *, max_bytes: int, release: str | None = None) -> None:
    """Unpack ``archive`` into ``dest`` (which must not exist): written beside it, flushed, then renamed into
    place, so ``dest`` is whole or absent whatever happens. ReleaseError for anything but regular files with
    plain relative names, or more than ``max_bytes`` of them."""
    tmp = dest.with_name(f".{dest.name}.unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        dirs = {tmp}
        total = count = 0
        try:
            with tarfile.open(archive, mode="r:") as tar:
                for member in tar:
                    count += 1
                    if count > _MAX_FILES:
                        raise ReleaseError(f"the archive holds more than {_MAX_FILES} files", release=release)
                    name = member.name
                    if not member.isreg() or not _SAFE_NAME.fullmatch(name) or ".." in name.split("/"):
                        raise ReleaseError(
                            f"the archive holds {name[:100]!r}, which is not a plain file name inside the bundle",
                            release=release,
                        )
                    total += member.size
                    if total > max_bytes:
                        raise ReleaseError(
                            f"the archive unpacks to more than the {max_bytes} bytes its record says", release=release
                        )
                    source = tar.extractfile(member)
                    if source is None:
                        raise ReleaseError(f"cannot read {name!r} from the archive", release=release)
                    target = tmp / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    dirs.add(target.parent)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    with os.fdopen(fd, "wb") as f:
                        shutil.copyfileobj(source, f, 1 << 20)
                        f.flush()
                        os.fsync(f.fileno())
        except (tarfile.TarError, FileExistsError) as err:
            raise ReleaseError(f"the archive cannot be unpacked: {err}", release=release) from None
        for d in dirs:
            fsync_dir(d)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new files, renames) to disk, where the file system allows it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
