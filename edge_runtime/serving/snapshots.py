"""Snapshots: an image route's frame with its detections drawn, published as JPEG (as Frigate does)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import PayloadError
from ..observability.ratelog import RateLimitedLog
from ..topics import TopicFilter, TopicTemplate

__all__ = ["Snapshots"]


class Snapshots:
    """Draws with the task's ``annotate`` and publishes at QoS 0 (a lost snapshot is replaced by the next).

    Only while ``ready()`` (connected, with room in the outgoing queue): a frame-sized JPEG per result would
    otherwise be drawn only to be dropped, or fill the queue while the broker is away. Skipped ones are counted.
    """

    def __init__(
        self,
        template: TopicTemplate,
        topic_filter: TopicFilter | None,
        publish: Callable[[str, bytes], object],
        *,
        ready: Callable[[], bool] = lambda: True,
    ):
        self.template, self.filter, self._publish, self._ready = template, topic_filter, publish, ready
        self._log = RateLimitedLog(logging.getLogger("edge_runtime.snapshots"))
        self.failed = 0
        self.skipped = 0

    def publish(
        self,
        annotate: Callable[[bytes | np.ndarray, dict[str, Any]], bytes | None],
        topic: str,
        frame: bytes | np.ndarray,
        result: dict[str, Any],
    ) -> None:
        """Draw ``result`` on ``frame`` (the payload, or a source's decoded image) and publish it. A snapshot
        that cannot be drawn is skipped and counted: the result it illustrates has already gone out."""
        if not self._ready():
            self.skipped += 1
            return
        try:
            jpeg = annotate(frame, result)
        except PayloadError:
            return
        except Exception:  # noqa: BLE001 - OpenCV raises cv2.error on what it cannot draw or encode
            self.failed += 1
            self._log.log("snapshot", "a snapshot on %r could not be drawn", topic[:200], exc_info=True)
            return
        if jpeg is not None:
            captures = (
                (self.filter.match(topic) if self.filter is not None else [topic])
                if self.template.needs_captures
                else []
            )
            self._publish(self.template.render(captures or [], topic), jpeg)
