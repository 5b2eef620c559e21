"""``VideoSource``: one capture thread per camera, stream or file, feeding a one-frame ``LatestFrame`` slot.

OpenCV's ``VideoCapture`` does the reading: FFmpeg for rtsp://, http(s):// (MJPEG and anything else FFmpeg
reads) and files, V4L2 for /dev/videoN. The thread reads every frame the source produces, so a live
stream never lags behind (FFmpeg would otherwise buffer and serve old frames), and converts to BGR only
the frames it keeps at ``fps`` (``grab`` for all, ``retrieve`` for those): the rest are counted as
``sampled_out``. A frame not taken before the next one arrives is replaced (``superseded``): a slow model
never builds a backlog.

A stream that drops is reopened with capped exponential backoff and jitter; the reconnects and the
seconds without frames (``gap_s``) are counted. A source that cannot be opened (unreachable host, wrong
credentials, not a video) gets one clear error, in ``status()`` and once in the log, and is retried
with the same backoff: nothing raises out of the thread.

Files are replayed in real time (``realtime=True``, paced by their own timestamps) or as fast as the
consumer takes frames (``realtime=False``: the thread waits until the slot is empty, so every sampled
frame is served and still only one waits). A file's frames are stamped with a clock that starts when the
file starts and advances with the file's own timestamps, so time-based logic (a tracker's timeouts)
sees the file's time in both modes.

OpenCV is loaded through ``edge_runtime._opencv``, which sets its process-wide settings first (RTSP over
TCP, FFmpeg quiet, OpenCV's log at ERROR, its image pixel limit) unless the environment already says.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .._opencv import load_cv2
from ..errors import EdgeRuntimeError
from .probe import Diagnosis, probe_http, probe_rtsp
from .slot import Frame, LatestFrame
from .urls import Redactor, default_name, env_credentials, redact_url, source_kind, with_credentials

__all__ = ["VideoSource", "STATES"]

log = logging.getLogger("edge_runtime.sources")

STATES = ("idle", "connecting", "streaming", "reconnecting", "error", "ended", "stopped")


def _cv2() -> Any:
    try:
        return load_cv2()
    except ImportError:
        raise EdgeRuntimeError("video sources need OpenCV: pip install 'edge-runtime[camera]'") from None


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


class VideoSource:
    """Frames from a camera, stream or file, newest only, on ``slot`` (select on ``fileno()``, then ``take()``).

    ``fps``: frames per second to deliver (None: every frame the source produces). ``realtime`` and
    ``loop`` apply to files. ``username_env``/``password_env`` name environment variables with the
    credentials (put into the URL in memory only). Timeouts bound each OpenCV open and read; the
    backoff between attempts starts at ``backoff_initial`` and doubles up to ``backoff_max`` seconds,
    each wait drawn between half and all of that (jitter, so many cameras do not retry in step).
    """

    def __init__(
        self,
        source: str,
        *,
        name: str | None = None,
        fps: float | None = 5.0,
        realtime: bool = True,
        loop: bool = False,
        username_env: str | None = None,
        password_env: str | None = None,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        slot: LatestFrame | None = None,
    ):
        self.kind = source_kind(source)  # ValueError for an unsupported scheme
        if fps is not None and not 0 < fps <= 1000:
            raise ValueError(f"fps must be above 0 and at most 1000 (or None for every frame), not {fps}")
        if not (0 < open_timeout <= 600 and 0 < read_timeout <= 600):
            raise ValueError("open_timeout and read_timeout must be above 0 and at most 600 seconds")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff_initial must be above 0 and at most backoff_max")
        if self.kind in ("rtsp", "http") and _has_password(source):
            raise ValueError(
                "put the password in an environment variable and name it in password_env, not in the source URL"
            )
        self.source = source
        self.name = name or default_name(source)
        self.url = redact_url(source)  # the only form of the URL that is ever logged or published
        self.fps, self.realtime, self.loop = fps, realtime, loop
        self.username_env, self.password_env = username_env, password_env
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.slot = slot if slot is not None else LatestFrame()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._redactor = Redactor(source if self.kind in ("rtsp", "http") else None)
        # Status, written by the capture thread only.
        self.state = "idle"
        self.error: Diagnosis | None = None
        self.attempts = 0  # failed opens since the last good frame
        self.reconnects = 0  # times frames came back after the stream had dropped
        self.drops = 0  # times a stream that was delivering stopped
        self.gap_s = 0.0  # seconds without frames across all drops, each from its last frame to the next
        self.captured = 0  # frames read from the source
        self.sampled_out = 0  # read, but not delivered because of fps
        self.seq = 0  # frames delivered to the slot
        self.width = self.height = 0
        self.stream_fps = 0.0
        self.retry_at: float | None = None
        self._last_frame_at: float | None = None  # monotonic
        self._dropped_at: float | None = None  # monotonic time of the last frame before a drop
        self._connected_logged = False

    # --- public surface -------------------------------------------------------------------------------
    def start(self) -> VideoSource:
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} is already started")
        _cv2()  # fail here, in the caller's thread, when OpenCV is missing
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop capturing and close the slot; True when the thread ended within ``timeout`` seconds.

        A thread inside a blocking OpenCV call (an open to a host that does not answer) ends as soon as
        that call returns (``open_timeout``/``read_timeout`` bound it); it is a daemon and delivers nothing more.
        """
        self._stop.set()
        self.slot.close()
        if self._thread is None:
            self.state = "stopped"
            return True
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        if ended:
            self.state = "stopped"
        return ended

    def fileno(self) -> int:
        return self.slot.fileno()

    def take(self) -> Frame | None:
        return self.slot.take()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def done(self) -> bool:
        """A file that has been read to its end and whose last frame has been taken."""
        return self.slot.finished and not self.slot.pending

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames as they come, until a file ends or the source stops (for files, tools and tests; the
        runtime selects on ``fileno()`` instead). ``timeout``: give up after that long without a frame."""
        while True:
            frame = self.slot.wait(timeout)
            if frame is None:
                if self.slot.finished or self.slot.closed or timeout is not None:
                    return
                continue
            yield frame

    def status(self) -> dict[str, Any]:
        """JSON-ready state and counters, for the runtime's status topic; the URL is redacted."""
        now = time.monotonic()
        with self._lock:
            error = self.error
            out: dict[str, Any] = {
                "name": self.name,
                "source": self.url,
                "kind": self.kind,
                "state": self.state,
                "error": None if error is None else {"code": error.code, "message": error.message},
                "fps": self.fps,
                "stream_fps": round(self.stream_fps, 3),
                "width": self.width,
                "height": self.height,
                "captured": self.captured,
                "delivered": self.seq,
                "sampled_out": self.sampled_out,
                "superseded": self.slot.superseded,
                "pending": self.slot.pending,
                "reconnects": self.reconnects,
                "drops": self.drops,
                "failed_attempts": self.attempts,
                "gap_s": round(self.gap_s + (now - self._dropped_at if self._dropped_at is not None else 0.0), 3),
                "last_frame_age_s": None if self._last_frame_at is None else round(now - self._last_frame_at, 3),
            }
            if self.retry_at is not None and self.state in ("error", "reconnecting"):
                out["retry_in_s"] = round(max(0.0, self.retry_at - now), 3)
        return out

    def __enter__(self) -> VideoSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- capture thread -------------------------------------------------------------------------------
    def _set(self, state: str, error: Diagnosis | None = None) -> None:
        with self._lock:
            self.state, self.error = state, error

    def _run(self) -> None:
        backoff = 0
        try:
            while not self._stop.is_set():
                if self.state == "idle":  # later attempts keep "error" or "reconnecting" until frames come
                    self._set("connecting")
                cap, failure = self._open()
                if cap is not None:
                    try:
                        outcome = self._stream(cap)
                    except Exception as err:  # noqa: BLE001 - OpenCV raising mid-stream must not end the thread
                        outcome = "delivered_then_dropped" if self.state == "streaming" else "no_frames"
                        log.warning(
                            "source %s (%s): capture failed: %s", self.name, self.url, self._redactor.scrub(str(err))
                        )
                    finally:
                        cap.release()
                    if outcome == "delivered_then_dropped":
                        backoff = 0
                        outcome = "dropped"
                        self.drops += 1
                        with self._lock:
                            last = self._last_frame_at
                            self._dropped_at = last if last is not None else time.monotonic()
                    if outcome in ("stopped", "ended"):
                        self._set(outcome if outcome == "ended" else "stopped")
                        if outcome == "ended":
                            self.slot.finish()
                            log.info("source %s (%s): end of file after %d frames", self.name, self.url, self.captured)
                        return
                    if outcome == "dropped":
                        self._set("reconnecting")
                        log.warning(
                            "source %s (%s): stream lost after frame %d; reconnecting", self.name, self.url, self.seq
                        )
                    else:  # opened, but not one frame came
                        failure = self._no_frames()
                if failure is not None:
                    self._failed(failure)
                delay = min(self.backoff_max, self.backoff_initial * 2**backoff) * random.uniform(0.5, 1.0)
                backoff = min(backoff + 1, 32)
                self.retry_at = time.monotonic() + delay
                if self._stop.wait(delay):
                    break
        except Exception as err:  # a bug must still leave a clear status, never a dead thread that looks alive
            self._set("error", Diagnosis("internal", self._redactor.scrub(f"{type(err).__name__}: {err}")))
            log.exception("source %s (%s): capture thread failed", self.name, self.url)
        finally:
            if self.state not in ("ended", "error"):
                self._set("stopped", self.error)

    def _failed(self, failure: Diagnosis) -> None:
        failure = Diagnosis(failure.code, self._redactor.scrub(failure.message))
        self.attempts += 1
        previous = self.error
        self._set("error" if self._dropped_at is None else "reconnecting", failure)
        if previous is None or (previous.code, previous.message) != (failure.code, failure.message):
            log.error(
                "source %s (%s): %s [%s]; retrying with backoff", self.name, self.url, failure.message, failure.code
            )
        else:
            log.debug(
                "source %s (%s): still failing (%d attempts): %s", self.name, self.url, self.attempts, failure.message
            )

    def _open(self) -> tuple[Any, Diagnosis | None]:
        cv2 = _cv2()
        try:
            user, password = env_credentials(self.username_env, self.password_env)
        except ValueError as err:
            return None, Diagnosis("credentials", str(err))
        if self.kind in ("rtsp", "http"):
            self._redactor = Redactor(self.source, user, password, with_credentials(self.source, user, password))
        if self.kind == "file":
            path = Path(self.source)
            if not path.exists():
                return None, Diagnosis("not_found", f"no such file: {self.source}")
            if not path.is_file():
                return None, Diagnosis("not_video", f"{self.source} is not a file")
            if not os.access(path, os.R_OK):
                return None, Diagnosis("refused", f"no permission to read {self.source}")
        elif self.kind == "device":
            if not os.path.exists(self.source):
                return None, Diagnosis("not_found", f"no such device: {self.source} (is the camera plugged in?)")
            if not os.access(self.source, os.R_OK | os.W_OK):
                return None, Diagnosis(
                    "refused", f"no permission to open {self.source} (add the user to the video group)"
                )
        target = with_credentials(self.source, user, password)
        api = cv2.CAP_V4L2 if self.kind == "device" else cv2.CAP_FFMPEG
        params = (
            []
            if self.kind == "device"
            else [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.open_timeout * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.read_timeout * 1000),
            ]
        )
        try:
            cap = cv2.VideoCapture(target, api, params)
        except Exception as err:  # noqa: BLE001 - cv2.error (not importable by name everywhere); may echo the URL
            return None, Diagnosis("refused", "OpenCV refused the source: " + self._redactor.scrub(str(err)).strip())
        if cap.isOpened():
            return cap, None
        cap.release()
        if self._stop.is_set():
            return None, None
        return None, self._diagnose(user, password)

    def _diagnose(self, user: str | None, password: str | None) -> Diagnosis:
        creds_from = "/".join(v for v in (self.username_env, self.password_env) if v) or "the URL"
        if self.kind == "rtsp":
            return probe_rtsp(
                self.source,
                username=user,
                password=password,
                timeout=min(self.open_timeout, 5.0),
                creds_from=creds_from,
            )
        if self.kind == "http":
            return probe_http(
                self.source,
                username=user,
                password=password,
                timeout=min(self.open_timeout, 5.0),
                creds_from=creds_from,
            )
        if self.kind == "device":
            return Diagnosis("refused", f"cannot open {self.source} (busy in another program, or not a capture device)")
        return Diagnosis("not_video", f"{self.source} is not a video file OpenCV's FFmpeg can read")

    def _no_frames(self) -> Diagnosis:
        if self.kind == "file":
            return Diagnosis("not_video", f"{self.source} opened but holds no readable video frames")
        if self.kind == "device":
            return Diagnosis("no_frames", f"{self.source} opened but gave no frames (busy, or not a capture device)")
        return Diagnosis("no_frames", f"the stream opened but no frame arrived within {self.read_timeout:g} s")

    def _stream(self, cap: Any) -> str:
        """Read until stopped, the end of a file, or a failed read: 'stopped', 'ended', 'dropped',
        'delivered_then_dropped' (frames came, then stopped: backoff restarts from its start) or 'no_frames'."""
        cv2 = _cv2()
        interval = 1.0 / self.fps if self.fps else 0.0
        is_file = self.kind == "file"
        self.stream_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        file_fps = self.stream_fps if 0 < self.stream_fps <= 1000 else 25.0
        got = 0
        next_due: float | None = None  # monotonic time (live) or media time (files) of the next frame to keep
        media_base = 0.0  # media time added per loop of a file
        last_pos = 0.0
        wall0 = mono0 = 0.0  # when the file's media time 0 was (or would have been) shown
        index = 0
        while not self._stop.is_set():
            if not cap.grab():
                if got and is_file and self.loop:
                    if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        return "delivered_then_dropped"
                    media_base = last_pos + 1.0 / file_fps
                    index = 0
                    if not cap.grab():
                        return "delivered_then_dropped"
                elif got:
                    return "ended" if is_file else "delivered_then_dropped"
                else:
                    return "no_frames"
            now = time.monotonic()
            self.captured += 1
            if got == 0:
                self._on_first_frame(cap, now)
            got += 1
            if is_file:
                pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                pos = media_base + (pos_ms / 1000.0 if pos_ms and pos_ms > 0 else index / file_fps)
                index += 1
                if got == 1:
                    wall0, mono0 = time.time() - pos, now - pos
                last_pos = pos
                if interval and next_due is not None and pos + 1e-6 < next_due:
                    self.sampled_out += 1
                    continue
                next_due = pos + interval if next_due is None or pos - next_due >= interval else next_due + interval
                if self.realtime:
                    if self._stop.wait(max(0.0, mono0 + pos - time.monotonic())):
                        return "stopped"
                else:
                    while self.slot.pending and not self._stop.is_set():
                        self.slot.wait_empty(0.25)
                    if self._stop.is_set():
                        return "stopped"
                stamp, captured = wall0 + pos, time.monotonic()
            else:
                if interval and next_due is not None and now < next_due:
                    self.sampled_out += 1
                    continue
                next_due = now + interval if next_due is None or now - next_due >= interval else next_due + interval
                stamp, captured, pos = time.time(), now, None
            ok, img = cap.retrieve()
            if not ok or img is None:
                return "delivered_then_dropped" if self.seq else "no_frames"
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            elif img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
            self.seq += 1
            self._last_frame_at = captured
            self.slot.put(Frame(self.name, self.seq, stamp, np.ascontiguousarray(img, dtype=np.uint8), captured, pos))
        return "stopped"

    def _on_first_frame(self, cap: Any, now: float) -> None:
        cv2 = _cv2()
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if self._dropped_at is not None:
            gap = now - self._dropped_at
            with self._lock:
                self.gap_s += gap
                self._dropped_at = None
            self.reconnects += 1
            log.info(
                "source %s (%s): reconnected after %.1f s without frames (%d reconnects)",
                self.name,
                self.url,
                gap,
                self.reconnects,
            )
        elif not self._connected_logged:
            log.info(
                "source %s (%s): streaming %dx%d at %.3g fps",
                self.name,
                self.url,
                self.width,
                self.height,
                self.stream_fps,
            )
        self._connected_logged = True
        self.attempts = 0
        self.retry_at = None
        self._set("streaming", None)
