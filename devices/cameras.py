"""Simulated cameras: JPEG (or PNG) frames of generated scenes on ``cameras/<camera>/frames``.

Each frame carries MQTT v5 properties a real camera bridge would set: content type, and user
properties ``id`` and ``timestamp`` (seconds since the epoch), so results can be matched to frames and
a frame's age measured end to end. ``scene="objects"`` draws 1-3 shapes (for the detector),
``scene="object"`` one large shape (for the classifier).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .scenes import draw_object, draw_scene

__all__ = ["CameraFleet", "encode_frame"]


def encode_frame(img: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> bytes:
    import cv2

    ok, data = cv2.imencode(
        ".png" if fmt == "png" else ".jpg", img, [] if fmt == "png" else [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError(f"OpenCV could not encode a {fmt} frame")
    return data.tobytes()


class CameraFleet:
    """``cameras`` cameras at ``fps`` frames per second each, publishing from one thread."""

    def __init__(
        self,
        client,
        *,
        cameras: int = 1,
        fps: float = 5.0,
        width: int = 320,
        height: int = 240,
        fmt: str = "jpeg",
        scene: str = "objects",
        prefix: str = "cameras",
        seed: int = 0,
        qos: int = 0,
        frames: int = 16,
    ):
        if cameras < 1 or fps <= 0 or width < 16 or height < 16:
            raise ValueError("cameras must be at least 1, fps above 0, and the size at least 16x16")
        if fmt not in ("jpeg", "png") or scene not in ("objects", "object"):
            raise ValueError("fmt is jpeg or png; scene is objects or object")
        self.client, self.fps, self.prefix, self.qos, self.fmt = client, fps, prefix, qos, fmt
        self.names = [f"cam-{i + 1}" for i in range(cameras)]
        rng = np.random.default_rng(seed)
        # A few pre-rendered frames per camera, cycled: drawing and encoding stay off the publishing path.
        self.frames: dict[str, list[tuple[bytes, list]]] = {}
        for name in self.names:
            made = []
            for _ in range(frames):
                if scene == "objects":
                    img, objects = draw_scene(rng, width, height)
                else:
                    img, label = draw_object(rng, min(width, height))
                    objects = [(label, (0.0, 0.0, float(img.shape[1]), float(img.shape[0])))]
                made.append((encode_frame(img, fmt), objects))
            self.frames[name] = made
        self.sent = 0
        self.truth: dict[str, list] = {}  # frame id -> drawn objects, for whoever checks the results
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def publish_once(self, n: int) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        for name in self.names:
            payload, objects = self.frames[name][n % len(self.frames[name])]
            frame_id = f"{name}-{n}"
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = f"image/{self.fmt}"
            props.UserProperty = [("id", frame_id), ("timestamp", f"{time.time():.6f}")]
            v5 = getattr(self.client, "protocol", 5) == 5
            if (
                self.client.publish(
                    f"{self.prefix}/{name}/frames", payload, qos=self.qos, properties=props if v5 else None
                ).rc
                == 0
            ):
                self.sent += 1
                if len(self.truth) < 100_000:
                    self.truth[frame_id] = objects

    def run(self, duration: float | None = None) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = start + n / self.fps
            # Wall-clock time too: a rate the machine cannot keep would otherwise run long past the duration.
            if duration is not None and (due - start >= duration or time.monotonic() - start >= duration):
                break
            self._stop.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                break
            self.publish_once(n)
            n += 1
