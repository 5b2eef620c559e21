"""Decode-ahead for image routes: the next frames are decoded and preprocessed while the model runs.

A frame costs a JPEG decode, a resize and a normalisation before the model sees it; a CNN then takes tens of
milliseconds. Done in turn, the two add up. OpenCV and ONNX Runtime (and OpenVINO) release the GIL while
they work, so a decode thread can prepare the next frames while the loop's thread waits in ``run``: a camera
route is then served at close to its model's own rate. Tensor routes do not use this (decoding a JSON row
costs a few microseconds; a thread hand-off would cost more).

Bounded: at most ``limit`` decodes ahead per route (a decoded 640x640 frame is ~5 MB of float32), and a
decode that was given up (superseded, dropped) is cancelled if it has not started.

The model runs beside the loop too (``ModelThread``): frames that arrive while a CNN works would otherwise sit
in the socket until it ends, and only then be read and decoded, so decode-ahead would have nothing to work on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["DecodeAhead", "ModelThread"]

T = TypeVar("T")

Decoded = tuple[Any, Any, Any]  # (id, row, meta), as Decoder.decode returns


class DecodeAhead:
    """One decode thread for the runtime; per route, a count of the decodes in progress."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self.submitted = 0
        self.used = 0

    def submit(self, decode: Any, *args: Any, **kwargs: Any) -> Future[Decoded]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-runtime-decode")
        self.submitted += 1
        return self._pool.submit(decode, *args, **kwargs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class ModelThread:
    """Runs a model call on its own thread while the loop's thread goes on reading the socket.

    ``meanwhile(timeout, wake)`` is called until the call ends; ``wake`` holds a descriptor that becomes
    readable when it does, so the loop waits on the socket and the model at once, never on a timer. The
    loop's thread keeps every MQTT and queue operation to itself: the model thread only runs the engine.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._fds: tuple[int, int] | None = None

    def run(self, call: Callable[[Any], T], arg: Any, *, meanwhile: Callable[[float, Sequence[int]], None]) -> T:
        if self._pool is None or self._fds is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-runtime-model")
            self._fds = os.pipe()
            for fd in self._fds:
                os.set_blocking(fd, False)
        read_fd, write_fd = self._fds
        future = self._pool.submit(call, arg)
        future.add_done_callback(lambda _: _signal(write_fd))
        while not future.done():
            meanwhile(0.5, (read_fd,))
            # Drained where it is read: a byte left behind (the callback runs just after done() turns true, so
            # the last call's byte can arrive after its drain) would make every wait return at once: a busy loop.
            _drain(read_fd)
        return future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):  # empty (EAGAIN): nothing to drain
        while os.read(fd, 64):
            pass


def _signal(fd: int) -> None:
    with contextlib.suppress(OSError):  # closed at shutdown, or full of unread wake-ups: either way, awake
        os.write(fd, b"x")
