"""Decode-ahead for image routes: the next frames are decoded and preprocessed while the model runs.

A frame costs a JPEG decode, a resize and a normalisation before the model sees it; a CNN then takes tens of
milliseconds. Done in turn, the two add up. OpenCV and ONNX Runtime (and OpenVINO) release the GIL while
they work, so a decode thread can prepare the next frames while the loop's thread waits in ``run``: a camera
route is then served at close to its model's own rate. Tensor routes do not use this (decoding a JSON row
costs a few microseconds; a thread hand-off would cost more).

Bounded: at most ``limit`` decodes ahead per route (a decoded 640x640 frame is ~5 MB of float32), and a
decode that was given up (superseded, dropped) is cancelled if it has not started.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["DecodeAhead"]

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
