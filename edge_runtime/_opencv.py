"""OpenCV, imported with the settings it reads from the environment only when it is loaded.

OpenCV reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, in a static initialiser of its image codecs: measured
with opencv-python-headless 5.1, setting it after ``import cv2`` leaves the limit at 2^30 pixels, setting
it before makes ``imdecode`` raise (cv2.error, "pixels <= CV_IO_MAX_IMAGE_PIXELS") before it allocates.
So every module of the runtime imports OpenCV through ``load_cv2()``, which sets that limit to
``MAX_PIXELS`` (the most any image route accepts) first, with the video settings the sources need.

When something else imported cv2 first, its limit is whatever the environment said then:
``pixel_limit_holds()`` tells, by decoding a header that claims one pixel too many.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from typing import Any

import numpy as np

__all__ = ["MAX_PIXELS", "load_cv2", "pixel_limit_holds"]

# The most pixels an image route decodes (4096 x 4096, 48 MB as BGR); OpenCV's own limit is set to it.
MAX_PIXELS = 4096 * 4096

_lock = threading.Lock()
_done = {"setup": False}


def load_cv2() -> Any:
    """The cv2 module; raises ImportError when OpenCV is not installed."""
    with _lock:
        if not _done["setup"]:  # (some of these are read when cv2 loads, others at the first capture)
            _limit_pixels()
            # Video sources: RTSP over TCP (as Frigate does: no lost UDP packets, works through NAT); FFmpeg
            # quiet (its retry noise would bury our one clear line; set 24 to see its warnings); OpenCV's
            # log at ERROR. Each only when the environment does not say otherwise.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
            os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        import cv2

        if not _done["setup"]:
            if os.environ.get("OPENCV_LOG_LEVEL") == "ERROR":
                # Read when cv2 is first imported, which may have happened before this function ran.
                with contextlib.suppress(AttributeError):
                    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            _done["setup"] = True
        return cv2


def _limit_pixels() -> None:
    """OPENCV_IO_MAX_IMAGE_PIXELS at MAX_PIXELS, or lower when the environment already asks for less."""
    try:
        asked = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", ""))
    except ValueError:
        asked = MAX_PIXELS + 1
    if not 0 < asked <= MAX_PIXELS:
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(MAX_PIXELS)


def pixel_limit_holds(max_pixels: int = MAX_PIXELS) -> bool:
    """Whether OpenCV refuses to decode an image of more than ``max_pixels`` pixels before allocating it."""
    cv2 = load_cv2()
    w = 4096
    h = max_pixels // w + 1  # w * h > max_pixels
    png = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in [
            (b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
            (b"IDAT", zlib.compress(b"")),  # no pixels: a decoder that got past the limit reads nothing
            (b"IEND", b""),
        ]
    )
    try:
        cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return True
    return False
