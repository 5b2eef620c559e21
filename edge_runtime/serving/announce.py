"""What the runtime announces about itself: its retained status, and result topics to Home Assistant.

Status (``edge-runtime/<client_id>/status``, retained, QoS 1): ``online`` with the version, device profile,
model versions and the last reload's outcome; ``offline`` as the MQTT will and on a clean stop.
Home Assistant discovery (``[homeassistant] discovery = true``): each result topic is announced on its first
result in a run, as a retained config message, and removed once idle (see serving.discovery).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..bundle.manifest import Manifest
from ..tasks.codecs import encode
from .discovery import Discovery
from .homeassistant import result_entity

__all__ = ["Announcer", "OFFLINE"]

OFFLINE = encode({"state": "offline"})

Publish = Callable[[str, bytes, int, bool], object]  # (topic, payload, qos, retain)


class Announcer:
    def __init__(
        self, *, client_id: str, version: str, device: str, publish: Publish, discovery: Discovery | None = None
    ):
        self.client_id, self.version, self.device = client_id, version, device
        self.status_topic = f"edge-runtime/{client_id}/status"
        self._publish = publish
        self.discovery = discovery
        self.last_reload: dict[str, Any] | None = None

    def online(self, models: dict[str, str], *, sources: dict[str, Any] | None = None) -> None:
        status: dict[str, Any] = {"state": "online", "version": self.version, "device": self.device, "models": models}
        if sources:
            status["sources"] = sources  # each video source's state, counters and last error (credentials redacted)
        if self.last_reload is not None:
            status["reload"] = self.last_reload
        self._publish(self.status_topic, encode(status), 1, True)

    def offline(self) -> None:
        self._publish(self.status_topic, OFFLINE, 1, True)

    def result_topic(self, topic: str, manifest: Manifest) -> None:
        """A result was published on ``topic``: announced to Home Assistant the first time (discovery on).

        Only ever called with a route's own result topic, never a requester's response topic.
        """
        d = self.discovery
        if d is not None and not d.seen(subject := "result:" + topic):
            build = partial(result_entity, prefix=d.prefix, node=self.client_id, result_topic=topic, manifest=manifest)
            d.active(subject, build)

    def tick(self) -> None:
        """About once a second: idle announcements removed, what was announced saved."""
        if self.discovery is not None:
            self.discovery.tick()

    def close(self) -> None:
        if self.discovery is not None:
            self.discovery.close()
