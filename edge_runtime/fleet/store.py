"""What a device keeps on disk for its releases, laid out so that a power cut at any moment leaves it usable.

```
<dir>/state.json                              the rollout state (below), replaced in one rename
<dir>/downloads/<release>/<i>.chunk           chunks received (each written whole, then renamed)
<dir>/versions/<model>/<version>-<release>/   unpacked bundles: the live one, the previous one, a candidate
```

Every file is written to a temporary name, flushed, and renamed; a directory is renamed into place whole
(``archive.unpack_archive``). So after a SIGKILL the state names only versions that were complete and
verified when it was written, and a download resumes from the chunks it has (each checked again against
the signed record before it counts). Disk use is bounded: ``room_for`` says, before a download starts,
whether a release fits beside what must be kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Set
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ReleaseError
from .archive import fsync_dir
from .record import ReleaseRecord

__all__ = ["FleetStore", "Installed", "ModelState", "DeviceState", "Phase"]

log = logging.getLogger("edge_runtime.fleet")

STATE = "state.json"
_FAILED_KEPT = 32  # releases remembered as failed, per model

Phase = Literal[
    "idle",  # nothing in progress
    "waiting",  # a release the canaries have not judged yet (this device is not one of them)
    "downloading",
    "shadowing",  # the candidate runs beside the live model
    "promoted",
    "rolled_back",
    "inconclusive",
    "refused",  # a release this device cannot take (too large, not newer, ...)
    "skipped",  # the canaries rolled it back: not installed here
]


class _State(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Installed(_State):
    version: str
    release: str | None = None  # None: the bundle the config names
    path: str


class ModelState(_State):
    live: Installed | None = None  # None: the configured bundle serves
    previous: Installed | None = None
    last_issued: int = 0  # the newest record accepted: an older one is a replay
    desired: str | None = None  # the version of the newest record accepted (whatever became of it)
    canary: bool | None = None  # whether this device was a canary for it
    candidate: str | None = None  # the signed record message being worked on (checked again at start)
    phase: Phase = "idle"
    failed: list[str] = Field(default_factory=list)  # releases rolled back here or by the canaries
    pending_verdicts: list[dict[str, Any]] = Field(default_factory=list)  # decided, not yet published
    note: str | None = None  # the last event or error, for the state topic


class DeviceState(_State):
    models: dict[str, ModelState] = Field(default_factory=dict)

    def model(self, name: str) -> ModelState:
        return self.models.setdefault(name, ModelState())

    def remember_failed(self, name: str, release: str) -> None:
        failed = self.model(name).failed
        if release not in failed:
            failed.append(release)
            del failed[:-_FAILED_KEPT]


class FleetStore:
    def __init__(self, root: Path, *, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self.downloads = root / "downloads"
        self.versions = root / "versions"

    # -- state ------------------------------------------------------------------------------

    def load_state(self) -> DeviceState:
        path = self.root / STATE
        try:
            return DeviceState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return DeviceState()
        except (OSError, ValidationError, ValueError) as err:
            # Written by rename only, so this is not a torn write: someone edited it. Start afresh (the
            # configured bundles serve), keeping the file for a look.
            log.error("fleet state %s is unreadable (%s); starting from the configured bundles", path, err)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".unreadable"))
            return DeviceState()

    def save_state(self, state: DeviceState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.root / STATE, state.model_dump_json(indent=1).encode())

    # -- downloads --------------------------------------------------------------------------

    def _chunk_path(self, release: str, index: int) -> Path:
        return self.downloads / release / f"{index}.chunk"

    def chunks_present(self, record: ReleaseRecord) -> set[int]:
        """The chunks of ``record`` on disk whose bytes match the record (a bad one is removed)."""
        folder = self.downloads / record.release
        present: set[int] = set()
        if not folder.is_dir():
            return present
        for path in folder.glob("*.chunk"):
            try:
                index = int(path.stem)
                ok = (
                    0 <= index < len(record.chunks)
                    and hashlib.sha256(path.read_bytes()).hexdigest() == record.chunks[index]
                )
            except (ValueError, OSError):
                ok = False
            if ok:
                present.add(index)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return present

    def write_chunk(self, record: ReleaseRecord, index: int, data: bytes) -> None:
        folder = self.downloads / record.release
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._chunk_path(record.release, index), data, sync_dir=False)

    def assemble(self, record: ReleaseRecord) -> Path:
        """The archive from its chunks, checked whole against the record (size and sha256)."""
        folder = self.downloads / record.release
        archive = folder / "archive.tar"
        digest = hashlib.sha256()
        size = 0
        tmp = archive.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for index in range(len(record.chunks)):
                data = self._chunk_path(record.release, index).read_bytes()
                digest.update(data)
                size += len(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if size != record.size or digest.hexdigest() != record.sha256:
            tmp.unlink()
            raise ReleaseError(
                f"{record.label()}: the chunks make {size} bytes with another sha256 than the record's; "
                "downloading again",
                release=record.release,
            )
        os.replace(tmp, archive)
        return archive

    def discard_download(self, release: str) -> None:
        shutil.rmtree(self.downloads / release, ignore_errors=True)

    # -- versions ---------------------------------------------------------------------------

    def version_dir(self, model: str, record: ReleaseRecord) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in record.version)[:64]
        return self.versions / model / f"{safe}-{record.release}"

    def prune(self, model: str, keep: set[str]) -> None:
        """Remove the unpacked versions of ``model`` other than ``keep`` (paths), and left-over temporary ones."""
        folder = self.versions / model
        if not folder.is_dir():
            return
        kept = {os.path.realpath(p) for p in keep}
        for entry in folder.iterdir():
            if os.path.realpath(entry) not in kept:
                shutil.rmtree(entry, ignore_errors=True)

    def prune_downloads(self, keep: set[str]) -> None:
        if not self.downloads.is_dir():
            return
        for entry in self.downloads.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    # -- disk -------------------------------------------------------------------------------

    def used_bytes(self, *, besides: Set[Path] = frozenset()) -> int:
        """Bytes under the store, not counting ``besides`` (paths about to be removed)."""
        skip = {os.path.realpath(p) for p in besides}
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            if os.path.realpath(dirpath) in skip:
                dirnames.clear()
                continue
            dirnames[:] = [d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in skip]
            for name in filenames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def room_for(self, record: ReleaseRecord, *, reclaimable: set[Path]) -> str | None:
        """None when ``record`` fits (its chunks, its archive and the unpacked bundle) beside what is kept;
        otherwise why not. ``reclaimable``: what would be removed for it (an abandoned candidate)."""
        needed = 2 * record.size + record.unpacked
        used = self.used_bytes(besides=reclaimable | {self.downloads / record.release})
        if used + needed > self.max_bytes:
            return (
                f"{record.label()} needs {needed / 1e6:.1f} MB on disk (chunks, archive and bundle) beside the "
                f"{used / 1e6:.1f} MB kept, more than fleet.max_disk_mb allows ({self.max_bytes / 1e6:.1f} MB)"
            )
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.root).free
            if needed > free:
                return f"{record.label()} needs {needed / 1e6:.1f} MB on disk; {free / 1e6:.1f} MB are free"
        return None


def _write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
