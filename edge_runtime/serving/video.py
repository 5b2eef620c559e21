"""Cameras in, events out: a route's video source feeding the loop, and tracked objects published as events.

A route with ``source = ...`` takes frames from a ``VideoSource`` (one capture thread, newest frame only;
its slot's descriptor wakes the loop's ``select``) instead of MQTT. Frames are already decoded, so they
skip the JPEG round trip; there is nothing to acknowledge. A detector route with ``track = true`` (fed by a
source or by MQTT frames) gets a ``TrackingObserver``: per camera a tracker that turns each frame's
detections into ``new``/``update``/``end`` events, and retained per-zone occupancy and per-line counts,
published when they change, when a camera's tracker starts (counts at 0: no stale total from a previous
run), and again after every (re)connection (a broker that lost them, a Home Assistant that restarted).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from ..config import RouteConfig
from ..mqtt.delivery import Inbound
from ..sources.capture import VideoSource
from ..sources.slot import Frame
from ..tasks.codecs import encode
from ..topics import TopicFilter
from ..tracking.config import render_topic
from ..tracking.events import Emitted, ObjectEvents
from .discovery import Discovery
from .homeassistant import Announcement
from .homeassistant_events import line_count_discovery, object_events_discovery, zone_occupancy_discovery
from .observers import ServedBatch

__all__ = ["FrameInput", "VideoInput", "TrackingObserver"]

log = logging.getLogger("edge_runtime")

Publish = Callable[[str, bytes, int, bool], object]  # (topic, payload, qos, retain)

# Cameras (input topics) a tracking route keeps a tracker for, at most: an MQTT route's cameras are named by
# whoever publishes, so the count is bounded; the least recently seen is closed first.
_MAX_TRACKED_CAMERAS = 64


_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


class FrameInput(Inbound):
    """A frame from a video source, served like an MQTT input: QoS 0, so nothing is ever acknowledged."""

    __slots__ = ("image", "frame_id", "timestamp")

    def __init__(self, frame: Frame):
        self.topic = frame.source
        self.payload = b""
        self.qos = 0
        self.mid = 0
        self.dup = False
        self.retain = False
        self.properties = None
        self.property_bytes = 0
        self.generation = 0
        self.waiting = 0
        self.ahead = None
        self.image = frame.image
        self.frame_id = frame.id
        self.timestamp = frame.timestamp

    def release(self) -> None:
        """Let the decoded frame go (given up: nothing will read it)."""
        self.image = _NO_IMAGE


class VideoInput:
    """A route's video source, as the loop sees it: a descriptor to wait on, frames to take, a status."""

    def __init__(self, config: RouteConfig):
        source = config.source_config()
        assert source is not None
        self.name = source.source_name
        self.source: VideoSource = source.build()
        self._state: tuple[Any, Any] | None = None

    def start(self) -> None:
        self.source.start()

    def stop(self) -> None:
        self.source.stop()

    def fileno(self) -> int:
        return self.source.fileno()

    def take(self) -> tuple[FrameInput, float] | None:
        """The newest frame, if one waits, and when it was captured (``time.monotonic()``)."""
        frame = self.source.take()
        if frame is None:
            return None
        return FrameInput(frame), frame.captured or time.monotonic()

    def status(self) -> dict[str, Any]:
        return self.source.status()

    def changed(self) -> bool:
        """Whether the source's state or error changed since the last call (for the status topic)."""
        status = self.source.status()
        state = (status.get("state"), (status.get("error") or {}).get("code"))
        if state != self._state:
            self._state = state
            return True
        return False


class TrackingObserver:
    """Per camera, a tracker; each served frame's detections become events on the route's topics."""

    def __init__(self, config: RouteConfig, *, publish: Publish, node: str, discovery: Discovery | None):
        self.config = config
        self._publish = publish
        self._node, self._discovery = node, discovery
        self._cameras: OrderedDict[str, ObjectEvents] = OrderedDict()
        self._filter = TopicFilter(config.subscribe) if config.subscribe is not None else None
        self.events = 0
        source = config.source_config()
        self._source = source.source_name if source is not None else None
        if self._source is not None:  # known from the start: announced, counts and occupancy published on connecting
            self._cameras[self._source] = config.build(self._source)

    def _events_for(self, camera: str) -> ObjectEvents:
        ev = self._cameras.get(camera)
        if ev is None:
            if len(self._cameras) >= _MAX_TRACKED_CAMERAS:
                old_camera, old = self._cameras.popitem(last=False)
                self._emit(old_camera, old.close())
            ev = self._cameras[camera] = self.config.build(camera)
            self._publish_state(camera, ev, occupancy=False)  # occupancy comes with its first frame
        else:
            self._cameras.move_to_end(camera)
        self._announce(camera)
        return ev

    def _camera(self, inbound: Inbound) -> str:
        """A source's name, or what an MQTT camera topic's first wildcard matched (else the whole topic)."""
        if isinstance(inbound, FrameInput) or self._filter is None:
            return inbound.topic
        captures = self._filter.match(inbound.topic) or [inbound.topic]
        return captures[0] if captures else inbound.topic

    def observe(self, batch: ServedBatch) -> None:
        for inbound, answer in zip(batch.inputs, batch.answers):
            if not isinstance(answer, dict) or "detections" not in answer:
                continue
            camera = self._camera(inbound)
            ts = inbound.timestamp if isinstance(inbound, FrameInput) else None
            self._emit(camera, self._events_for(camera).process(answer, timestamp=ts))

    def tick(self, now: float) -> None:
        wall = time.time()
        for camera, ev in list(self._cameras.items()):
            self._emit(camera, ev.expire(wall))

    def close(self) -> None:
        for camera, ev in list(self._cameras.items()):
            self._emit(camera, ev.close())
        self._cameras.clear()

    def republish(self) -> None:
        """Every camera's occupancy and line counts again, retained: called on every (re)connection."""
        if self._source is not None:
            self._announce(self._source)
        for camera, ev in self._cameras.items():
            self._publish_state(camera, ev)

    def _publish_state(self, camera: str, ev: ObjectEvents, *, occupancy: bool = True) -> None:
        self._emit(camera, Emitted(occupancy=ev.occupancy() if occupancy else [], counts=ev.line_counts()))

    def snapshot(self) -> dict[str, Any]:
        return {"tracking": {"cameras": len(self._cameras), "events": self.events}}

    def _emit(self, camera: str, out: Emitted) -> None:
        c = self.config
        for event in out.events:
            self._publish(render_topic(c.events, source=camera), encode(event), c.qos, False)
            self.events += 1
        if c.occupancy is not None:
            for zone in out.occupancy:
                topic = render_topic(c.occupancy, source=camera, zone=str(zone["zone"]))
                self._publish(topic, encode(zone), 1, True)
        if c.counts is not None:
            for line in out.counts:
                topic = render_topic(c.counts, source=camera, line=str(line["line"]))
                self._publish(topic, encode(line), 1, True)

    def _announce(self, camera: str) -> None:
        """Home Assistant discovery for ``camera`` (discovery on): announced the first time in a run, then kept
        from being removed as idle while it sends frames."""
        if self._discovery is not None:
            events_topic = render_topic(self.config.events, source=camera)
            self._discovery.active(f"camera:{events_topic}", partial(self._announcements, camera, events_topic))

    def _announcements(self, camera: str, events_topic: str) -> list[Announcement]:
        """Home Assistant discovery for a camera's events, zones and lines."""
        assert self._discovery is not None
        c, node, prefix = self.config, self._node, self._discovery.prefix
        messages = [object_events_discovery(prefix=prefix, node=node, source=camera, events_topic=events_topic)]
        if c.occupancy is not None:
            messages += [
                zone_occupancy_discovery(
                    prefix=prefix,
                    node=node,
                    source=camera,
                    zone=z.name,
                    state_topic=render_topic(c.occupancy, source=camera, zone=z.name),
                )
                for z in c.zones
            ]
        if c.counts is not None:
            for ln in c.lines:
                topic = render_topic(c.counts, source=camera, line=ln.name)
                for direction in (ln.forward, ln.backward):
                    messages.append(
                        line_count_discovery(
                            prefix=prefix,
                            node=node,
                            source=camera,
                            line=ln.name,
                            direction=direction,
                            state_topic=topic,
                        )
                    )
        return messages
