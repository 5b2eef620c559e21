"""What the runtime announced to Home Assistant: bounded in bytes, remembered across restarts, and removed
once idle.

Every announcement is a retained config message on the broker, kept there until someone removes it. Input
topics are chosen by whoever publishes, so a runtime that announced each new one and forgot it would leave
thousands behind. Here each *subject* (a result topic, a camera's events topic) that was announced is
remembered with the config topics announced for it and when it was last active; once it has been idle
for ``remove_after_s``, its configs are removed (an empty retained message, which Home Assistant takes
as "remove this entity"). The set is bounded in bytes: past the bound, new subjects are not announced
(counted in ``refused``) until idle ones make room; what is announced already is never pushed out by a
stranger's new topics.

The set is kept in a small JSON file (in ``[device] state_dir``) so that a restart knows what the
last run announced, and removes what stays idle. The file was chosen over reading the retained configs
back from the broker: that would need a subscription on the runtime's own connection and a wait at
start, and would take in whatever anyone retained under our node id. It is rewritten at most every 10 s
while the set changes and on a clean stop; times in it are wall-clock, times within a run monotonic (a
clock set at boot does not make everything look idle).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import HomeAssistantConfig
from ..tasks.codecs import encode
from .bounded import ENTRY_OVERHEAD
from .homeassistant import Announcement

__all__ = ["Discovery", "REMOVE"]

log = logging.getLogger("edge_runtime")

REMOVE = b""  # an empty retained config: Home Assistant removes the entity, the broker forgets the message
_FORMAT = 1
# Rewrite the file at most this often while what was announced changes; activity alone, at most every
# _SAVE_ACTIVITY_S or a tenth of remove_after_s (it only has to be right to that precision).
_SAVE_CHANGES_S = 10.0
_SAVE_ACTIVITY_S = 300.0

Publish = Callable[[str, bytes, int, bool], object]  # (topic, payload, qos, retain)


@dataclass
class _Subject:
    configs: tuple[str, ...]  # config topics announced for it
    wall: float  # when it was last active (time.time()), as read from the file
    active: float | None = None  # when it was last active in this run (time.monotonic())
    announced: bool = False  # announced in this run (payloads are sent again once per run: versions change)

    def cost(self, subject: str) -> int:
        return len(subject) + sum(len(c) for c in self.configs) + ENTRY_OVERHEAD * (1 + len(self.configs))


class Discovery:
    """Announces subjects to Home Assistant and removes the ones that fell idle (see the module's docstring)."""

    def __init__(
        self,
        *,
        prefix: str,
        node: str,
        publish: Publish,
        remove_after_s: float,
        state_file: Path | None = None,
        max_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        if remove_after_s <= 0 or max_bytes <= 0:
            raise ValueError("remove_after_s and max_bytes must be above 0")
        self.prefix, self.node = prefix, node
        self._publish = publish
        self.remove_after_s = remove_after_s
        self.state_file = state_file
        self.max_bytes = max_bytes
        self._clock, self._wall = clock, wall_clock
        self._subjects: dict[str, _Subject] = {}
        self.bytes = 0
        self.refused = 0  # times a new subject was not announced: the set was full
        self.removed = 0  # subjects removed as idle
        self._changed = self._active = False  # since the last save: the set changed; only activity
        self._saved_at = self._scanned_at = clock()
        self._to_remove: list[str] = []  # configs to remove at the next tick (the link may not exist yet)
        self._save_failed = False
        if state_file is not None:
            self._load(state_file)

    @classmethod
    def for_config(
        cls, config: HomeAssistantConfig, *, node: str, publish: Publish, state_dir: Path | None
    ) -> Discovery | None:
        """The runtime's, when ``[homeassistant] discovery`` is on."""
        if not config.discovery:
            return None
        state = state_dir / f"homeassistant-{node}.json" if state_dir is not None else None
        return cls(
            prefix=config.prefix, node=node, publish=publish, remove_after_s=config.remove_after_s, state_file=state
        )

    # -- the loop's side ----------------------------------------------------------------------------------

    def seen(self, subject: str) -> bool:
        """Whether ``subject`` was announced in this run already; if so, it is active now (the loop's fast path,
        once per result: nothing else is done or made)."""
        known = self._subjects.get(subject)
        if known is None or not known.announced:
            return False
        known.active = self._clock()
        self._active = True
        return True

    def active(self, subject: str, announcements: Callable[[], list[Announcement]]) -> None:
        """``subject`` was active now: announced (``announcements()``, retained) the first time in this run,
        along with the removal of configs it had before and no longer has; afterwards only timed."""
        if self.seen(subject):
            return
        known = self._subjects.get(subject)
        if known is None and self.bytes + len(subject) + ENTRY_OVERHEAD > self.max_bytes:
            self.refused += 1  # full: refused before its announcements are even made
            return
        now = self._clock()
        messages = announcements()
        topics = tuple(topic for topic, _ in messages)
        fresh = _Subject(topics, self._wall(), now, announced=True)
        grows = fresh.cost(subject) - (known.cost(subject) if known is not None else 0)
        if known is None and self.bytes + grows > self.max_bytes:
            self.refused += 1
            return
        for topic, payload in messages:
            self._publish(topic, encode(payload), 1, True)
        if known is not None:
            self._remove(t for t in known.configs if t not in topics)
        self._subjects[subject] = fresh
        self.bytes += grows
        self._changed = True

    def tick(self) -> None:
        """Remove what has been idle for ``remove_after_s``; save when due. About once a second is plenty."""
        now, wall = self._clock(), self._wall()
        self._remove(self._to_remove)
        self._to_remove.clear()
        if now - self._scanned_at >= min(10.0, self.remove_after_s / 10):  # a few thousand subjects: not every tick
            self._scanned_at = now
            idle = [s for s, e in self._subjects.items() if self._idle_for(e, now, wall) >= self.remove_after_s]
            for subject in idle:
                entry = self._subjects.pop(subject)
                self.bytes -= entry.cost(subject)
                self._remove(entry.configs)
                self.removed += bool(entry.configs)
                self._changed = True
        every = _SAVE_CHANGES_S if self._changed else min(_SAVE_ACTIVITY_S, self.remove_after_s / 10)
        if (self._changed or self._active) and now - self._saved_at >= every:
            self.save()

    def close(self) -> None:
        """At a clean stop: what was announced, and when each was last active, for the next run."""
        if self._changed or self._active:
            self.save()

    def __len__(self) -> int:
        return len(self._subjects)

    def __contains__(self, subject: object) -> bool:
        return subject in self._subjects

    # -- internals ----------------------------------------------------------------------------------------

    def _idle_for(self, entry: _Subject, now: float, wall: float) -> float:
        return now - entry.active if entry.active is not None else wall - entry.wall

    def _remove(self, topics: Any) -> None:
        for topic in topics:
            self._publish(topic, REMOVE, 1, True)

    def save(self) -> None:
        """Write the set to ``state_file`` (a new file renamed over the old one: never half written)."""
        self._saved_at = self._clock()
        self._changed = self._active = False
        path = self.state_file
        if path is None:
            return
        now, wall = self._clock(), self._wall()
        entries = [
            [subject, round(wall - self._idle_for(e, now, wall), 3), list(e.configs)]
            for subject, e in self._subjects.items()
            if e.configs
        ]
        data = orjson.dumps({"format": _FORMAT, "node": self.node, "subjects": entries})
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # No fsync: it runs on the loop's thread and an SD card can take 100 ms over it; a file lost to a
            # power cut costs entities left behind, not results.
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._save_failed = False
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._save_failed:  # once until it works again: a read-only disk must not flood the log
                log.warning(
                    "Home Assistant discovery: cannot write %s (%s); what was announced is kept in memory only, "
                    "so entities announced before a restart may stay behind",
                    path,
                    err.strerror,
                )
            self._save_failed = True

    def _load(self, path: Path) -> None:
        """The last run's set; anything unreadable is logged and ignored (the file is ours, but a disk can
        lie). Past the byte bound, the least recently active subjects are removed at once."""
        try:
            data = _read_small_file(path, limit=4 * self.max_bytes)
        except FileNotFoundError:
            return
        except OSError as err:
            log.warning("Home Assistant discovery: cannot read %s (%s); starting afresh", path, err)
            return
        try:
            doc = orjson.loads(data)
            rows = doc["subjects"] if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
            entries = [
                (s, float(t), tuple(c))
                for s, t, c in rows or ()
                if isinstance(s, str)
                and isinstance(t, (int, float))
                and isinstance(c, list)
                and all(isinstance(x, str) for x in c)
            ]
        except (orjson.JSONDecodeError, TypeError, ValueError) as err:
            log.warning(
                "Home Assistant discovery: %s is not a state file of this version (%s); starting afresh", path, err
            )
            return
        for subject, wall, configs in sorted(entries, key=lambda e: -e[1]):
            entry = _Subject(configs, wall)
            if subject in self._subjects:
                continue
            if self.bytes + entry.cost(subject) > self.max_bytes:
                self._to_remove += configs
                self._changed = True
                continue
            self._subjects[subject] = entry
            self.bytes += entry.cost(subject)


def _read_small_file(path: Path, *, limit: int) -> bytes:
    """A regular file's bytes, refused (OSError) when it is a link, a FIFO, a device or over ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise OSError(f"not a regular file of at most {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)
