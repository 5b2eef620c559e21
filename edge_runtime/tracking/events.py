"""Tracked objects as events: ``new`` once, ``update`` only on a meaningful change, ``end`` once it is gone.

``ObjectEvents.process(result)`` takes one frame's detector result (``{"detections": [...], "frame":
{"width", "height", "timestamp"?}}``) and returns what to publish:

- ``events`` (one topic per source, not retained): ``{"event": "new"|"update"|"end", "id", "source", "label",
  "score", "box", "zones", "first_seen", "last_seen"}``. ``new`` when a track is confirmed; ``update`` when
  it enters or leaves a zone (``entered``/``left`` say which), crosses a counting line (``crossed``), its
  label changes, or, with ``update_interval_s``, at most that often while nothing else changes; ``end``
  when it has not been seen for the tracker's ``lost_after_s``. Ids are strings unique across restarts
  (a hex start time, then a counter): consumers may store them.
- ``occupancy``: per zone ``{"zone", "count", "labels": {label: n}}``, only for zones whose counts changed
  (every zone on the first frame), for retained topics. An object counts in a zone from its entry until
  it leaves the zone or its track ends.
- ``counts``: per counting line ``{"line", "<forward>": n, "<backward>": n, "labels": {...}}`` (cumulative),
  only when a crossing changed them.

Zone membership changes only after ``inertia`` consecutive frames agree (Frigate's term), so a box
jittering on a zone's edge does not flood updates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .geometry import Line, Zone
from .tracker import Track, Tracker

__all__ = ["ObjectEvents", "Emitted"]


@dataclass
class Emitted:
    events: list[dict[str, Any]] = field(default_factory=list)
    occupancy: list[dict[str, Any]] = field(default_factory=list)
    counts: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.occupancy or self.counts)

    def extend(self, other: Emitted) -> Emitted:
        self.events += other.events
        self.occupancy += other.occupancy
        self.counts += other.counts
        return self


@dataclass(eq=False)
class _State:
    id: str
    zones: set[str] = field(default_factory=set)
    flips: dict[str, int] = field(default_factory=dict)
    reported_at: float = 0.0
    label: Any = None
    box: Any = None  # where the track was when last seen, for line crossings


class ObjectEvents:
    """Tracker + zones + lines -> events, occupancy and line counts for one source."""

    def __init__(
        self,
        *,
        source: str,
        tracker: Tracker | None = None,
        zones: Iterable[Zone] = (),
        lines: Iterable[Line] = (),
        update_interval_s: float | None = None,
        id_prefix: str | None = None,
    ):
        self.source = source
        self.tracker = tracker if tracker is not None else Tracker()
        self.zones, self.lines = list(zones), list(lines)
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names) or len({ln.name for ln in self.lines}) != len(self.lines):
            raise ValueError("zone names, and line names, must be unique")
        if update_interval_s is not None and update_interval_s <= 0:
            raise ValueError("update_interval_s must be above 0 (or None: updates only on changes)")
        self.update_interval_s = update_interval_s
        self.id_prefix = f"{int(time.time()):x}-" if id_prefix is None else id_prefix
        self._states: dict[int, _State] = {}
        self._occupancy: dict[str, tuple[int, dict[str, int]]] | None = None  # as last emitted
        self._counts = {ln.name: {ln.forward: 0, ln.backward: 0} for ln in self.lines}
        self._count_labels: dict[str, dict[str, dict[str, int]]] = {ln.name: {} for ln in self.lines}
        self._size: tuple[float, float] | None = None
        self.frames = 0

    # --- public surface -----------------------------------------------------------------------------
    def process(self, result: dict[str, Any], *, timestamp: float | None = None) -> Emitted:
        """One frame's detector result -> what to publish (see the module's docstring)."""
        frame = result.get("frame") or {}
        t = _timestamp(timestamp, frame)
        w, h = frame.get("width"), frame.get("height")
        if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
            self._size = (float(w), float(h))
        self.frames += 1
        upd = self.tracker.update(result.get("detections") or [], t)
        out = Emitted()
        for track in upd.ended:
            out.events.append(self._end(track))
        new_ids = {id(tr) for tr in upd.new}
        for track in upd.confirmed:
            if id(track) in new_ids:
                out.events.append(self._new(track, t))
            else:
                event = self._update(track, t, out)
                if event is not None:
                    out.events.append(event)
        out.occupancy = self._occupancy_changes()
        return out

    def expire(self, timestamp: float | None = None) -> Emitted:
        """End tracks not seen for ``lost_after_s`` when no frame comes (a source that stopped); call it
        from the runtime's timer."""
        t = time.time() if timestamp is None else float(timestamp)
        out = Emitted([self._end(tr) for tr in self.tracker.expire(t)])
        out.occupancy = self._occupancy_changes()
        return out

    def close(self) -> Emitted:
        """End every track now (the source is gone for good)."""
        out = Emitted([self._end(tr) for tr in self.tracker.clear()])
        self._states.clear()
        out.occupancy = self._occupancy_changes()
        return out

    def occupancy(self) -> list[dict[str, Any]]:
        """Every zone's current count (to publish again, retained, after a reconnect)."""
        return [self._zone_msg(name, *counts) for name, counts in self._current_occupancy().items()]

    def line_counts(self) -> list[dict[str, Any]]:
        return [self._line_msg(ln) for ln in self.lines]

    # --- internals ------------------------------------------------------------------------------------
    def _zones_now(self, track: Track) -> set[str]:
        if self._size is None:
            return set()
        w, h = self._size
        return {z.name for z in self.zones if z.counts(track.label) and z.contains(track.box, w, h)}

    def _payload(self, kind: str, track: Track, state: _State) -> dict[str, Any]:
        return {
            "event": kind,
            "id": state.id,
            "source": self.source,
            "label": track.label,
            "score": round(float(track.score), 4),
            "box": [round(float(v), 1) for v in track.box],
            "zones": sorted(state.zones),
            "first_seen": round(track.first_seen, 3),
            "last_seen": round(track.last_seen, 3),
        }

    def _new(self, track: Track, t: float) -> dict[str, Any]:
        state = _State(
            f"{self.id_prefix}{track.id}", zones=self._zones_now(track), reported_at=t, label=track.label, box=track.box
        )
        self._states[track.id] = state
        return self._payload("new", track, state)

    def _update(self, track: Track, t: float, out: Emitted) -> dict[str, Any] | None:
        state = self._states.get(track.id)
        if state is None:  # confirmed before this generator saw it (cannot happen unless the tracker is shared)
            return None
        entered: list[str] = []
        left: list[str] = []
        raw = self._zones_now(track)
        for z in self.zones:
            inside = z.name in raw
            if inside == (z.name in state.zones):
                state.flips[z.name] = 0
                continue
            state.flips[z.name] = state.flips.get(z.name, 0) + 1
            if state.flips[z.name] >= z.inertia:
                state.flips[z.name] = 0
                (state.zones.add if inside else state.zones.discard)(z.name)
                (entered if inside else left).append(z.name)
        crossed = []
        prev = state.box
        if prev is not None and self._size is not None:
            for ln in self.lines:
                if not ln.counts(track.label):
                    continue
                direction = ln.crossing(prev, track.box, *self._size)
                if direction is not None:
                    crossed.append({"line": ln.name, "direction": direction})
                    self._counts[ln.name][direction] += 1
                    per = self._count_labels[ln.name].setdefault(str(track.label), {ln.forward: 0, ln.backward: 0})
                    per[direction] += 1
                    out.counts.append(self._line_msg(ln))
        state.box = track.box
        label_changed = track.label != state.label
        due = self.update_interval_s is not None and t - state.reported_at >= self.update_interval_s
        if not (entered or left or crossed or label_changed or due):
            return None
        state.label, state.reported_at = track.label, t
        event = self._payload("update", track, state)
        if entered:
            event["entered"] = entered
        if left:
            event["left"] = left
        if crossed:
            event["crossed"] = crossed
        return event

    def _end(self, track: Track) -> dict[str, Any]:
        state = self._states.pop(track.id, None) or _State(f"{self.id_prefix}{track.id}")
        return self._payload("end", track, state)

    def _current_occupancy(self) -> dict[str, tuple[int, dict[str, int]]]:
        occ: dict[str, tuple[int, dict[str, int]]] = {z.name: (0, {}) for z in self.zones}
        live = {tr.id: tr for tr in self.tracker.tracks if tr.confirmed}
        for tid, state in self._states.items():
            track = live.get(tid)
            if track is None:
                continue
            for name in state.zones:
                n, labels = occ[name]
                labels[str(track.label)] = labels.get(str(track.label), 0) + 1
                occ[name] = (n + 1, labels)
        return occ

    def _occupancy_changes(self) -> list[dict[str, Any]]:
        now = self._current_occupancy()
        before = self._occupancy or {}
        changed = [
            self._zone_msg(name, *v) for name, v in now.items() if self._occupancy is None or before.get(name) != v
        ]
        self._occupancy = {k: (n, dict(labels)) for k, (n, labels) in now.items()}
        return changed

    def _zone_msg(self, name: str, count: int, labels: dict[str, int]) -> dict[str, Any]:
        return {"zone": name, "source": self.source, "count": count, "labels": dict(sorted(labels.items()))}

    def _line_msg(self, ln: Line) -> dict[str, Any]:
        return {
            "line": ln.name,
            "source": self.source,
            **self._counts[ln.name],
            "labels": {k: dict(v) for k, v in sorted(self._count_labels[ln.name].items())},
        }


def _timestamp(explicit: float | None, frame: dict[str, Any]) -> float:
    if explicit is not None:
        return float(explicit)
    value = frame.get("timestamp")
    if value is None:
        return time.time()
    try:
        t = float(value)  # the detector passes the frame's timestamp through (a string from MQTT v5 properties)
    except (TypeError, ValueError):
        return time.time()
    return t if math.isfinite(t) else time.time()
