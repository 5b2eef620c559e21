"""A one-frame mailbox between a capture thread and the runtime's loop: only the newest frame waits.

A camera that produces frames faster than the model serves them must never build a backlog: the slot
holds at most one frame, a newer one replaces it (counted as ``superseded``), and the consumer always
gets the newest. The slot has a wake-up file descriptor (one end of an ``os.pipe``) that is readable
exactly while a frame waits, so a loop blocked in ``select()`` on its MQTT socket wakes for frames too:
``select([mqtt_socket, slot, ...], [], [], timeout)`` works because the slot has ``fileno()``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Frame", "LatestFrame"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame from a source."""

    source: str  # the source's name (``{1}`` in the route's topics)
    seq: int  # 1, 2, 3... per source, over reconnects: a gap in seq is a frame superseded in the slot
    timestamp: float  # seconds since the epoch when it was captured
    image: np.ndarray = field(repr=False)  # HxWx3 uint8, BGR (OpenCV's order)
    captured: float = 0.0  # time.monotonic() when it was captured, to measure its age
    position_s: float | None = None  # files: the frame's position in the file

    @property
    def id(self) -> str:
        return f"{self.source}-{self.seq}"


class LatestFrame:
    """Holds the newest frame only. ``put`` from the producer, ``take`` (or ``wait``) from the consumer.

    Invariant: one byte sits in the pipe if and only if a frame waits, so the descriptor is level-triggered.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._frame: Frame | None = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._closed = False
        self._finished = False  # the producer said no more frames will come (a file's end)
        self.put_count = 0  # frames offered
        self.superseded = 0  # frames replaced by a newer one before anyone took them
        self.taken = 0
        self.high_water = 0  # frames ever waiting at once: 0 or 1, never more

    def fileno(self) -> int:
        """Readable while a frame waits (for ``select``/``selectors``)."""
        return self._r

    @property
    def pending(self) -> int:
        return 0 if self._frame is None else 1

    def put(self, frame: Frame) -> bool:
        """Offer ``frame``; True when it replaced one nobody had taken yet."""
        with self._lock:
            if self._closed:
                return False
            self.put_count += 1
            replaced = self._frame is not None
            self._frame = frame
            if replaced:
                self.superseded += 1
            else:
                self.high_water = max(self.high_water, 1)
                # A full pipe cannot happen with one byte at most, but the producer must never block.
                with contextlib.suppress(BlockingIOError):
                    os.write(self._w, b"\0")
            self._lock.notify_all()
            return replaced

    def take(self) -> Frame | None:
        """The newest frame, or None when none waits. Never blocks."""
        with self._lock:
            frame, self._frame = self._frame, None
            if frame is not None:
                self.taken += 1
                self._drain()
                self._lock.notify_all()
            return frame

    def wait(self, timeout: float | None = None) -> Frame | None:
        """Block until a frame waits (or ``timeout`` seconds pass, or the slot closes or is finished); then take it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._frame is None and not self._closed and not self._finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._lock.wait(left)
        return self.take()

    def wait_empty(self, timeout: float) -> bool:
        """Block until the consumer has taken the waiting frame; False after ``timeout`` or on close."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._frame is not None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return not self._closed

    def finish(self) -> None:
        """No frame will follow the one waiting (if any): ``wait`` returns None at once when empty."""
        with self._lock:
            self._finished = True
            self._lock.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        """Wake every waiter and release the descriptors; a later ``put`` is ignored."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._frame = None
            self._lock.notify_all()
            os.close(self._r)
            os.close(self._w)

    @property
    def closed(self) -> bool:
        return self._closed

    def _drain(self) -> None:
        try:
            while os.read(self._r, 64):
                pass
        except BlockingIOError:
            pass
