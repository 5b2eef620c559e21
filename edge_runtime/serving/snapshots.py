"""Snapshots: an image route's frame with its detections drawn, published as JPEG (as Frigate does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import PayloadError
from ..topics import TopicFilter, TopicTemplate

__all__ = ["Snapshots"]


class Snapshots:
    """Draws with the task's ``annotate`` and publishes at QoS 0 (a lost snapshot is replaced by the next)."""

    def __init__(
        self, template: TopicTemplate, topic_filter: TopicFilter | None, publish: Callable[[str, bytes], object]
    ):
        self.template, self.filter, self._publish = template, topic_filter, publish

    def publish(
        self,
        annotate: Callable[[bytes, dict[str, Any]], bytes | None],
        topic: str,
        payload: bytes,
        result: dict[str, Any],
    ) -> None:
        try:
            jpeg = annotate(payload, result)
        except PayloadError:
            return
        if jpeg is not None:
            captures = (
                (self.filter.match(topic) if self.filter is not None else [topic])
                if self.template.needs_captures
                else []
            )
            self._publish(self.template.render(captures or [], topic), jpeg)
