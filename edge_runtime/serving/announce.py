"""What the runtime announces about itself: its retained status, and result topics to Home Assistant.

Status (``edge-runtime/<client_id>/status``, retained, QoS 1): ``online`` with the version, device profile,
model versions and the last reload's outcome; ``offline`` as the MQTT will and on a clean stop.
Home Assistant discovery (``[homeassistant] discovery = true``): each result topic is announced once, on its
first result, as a retained config message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..tasks.codecs import encode
from .bounded import FirstSeen
from .homeassistant import discovery_message

__all__ = ["Announcer", "OFFLINE"]

OFFLINE = encode({"state": "offline"})

# Result topics remembered as announced, at most (in bytes): a bound on memory whatever topics inputs arrive on.
_MAX_ANNOUNCED_BYTES = 1 << 20

Publish = Callable[[str, bytes, int, bool], object]  # (topic, payload, qos, retain)


class Announcer:
    def __init__(
        self, *, client_id: str, version: str, device: str, publish: Publish, discovery_prefix: str | None = None
    ):
        self.client_id, self.version, self.device = client_id, version, device
        self.status_topic = f"edge-runtime/{client_id}/status"
        self._publish = publish
        self._prefix = discovery_prefix
        self._announced = FirstSeen(_MAX_ANNOUNCED_BYTES)
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

    def result_topic(self, topic: str, *, task: str, model: str, version: str) -> None:
        """Announce ``topic`` to Home Assistant the first time a result is published there (discovery on).

        Only ever called with a route's own result topic, never a requester's response topic.
        """
        if self._prefix is None or not self._announced.first(topic):
            return
        message = discovery_message(
            prefix=self._prefix, node=self.client_id, result_topic=topic, task=task, model=model, version=version
        )
        if message is not None:
            self._publish(message[0], encode(message[1]), 1, True)
