"""Sample capture: a bounded on-disk ring of a route's inputs with their results, for retraining.

The loop calls ``CaptureWriter.offer`` after a batch is published. A row is taken when any of these holds:
``fraction`` (a deterministic, evenly spread share of the rows), ``low_confidence`` (the result's
confidence is below it: a classifier's top score, a detector's best detection; other tasks have none),
``drift`` (every row while the route's drift alert is active). The rows taken are copied into a queue
bounded in bytes (beyond it they are dropped and counted) and written by the writer's own thread, so
the loop never waits for a disk.

On disk, segments named ``cap-<unix ns>-<seq>`` (name order is age order):
- ``<segment>.jsonl``: one line per row: ``{"row", "id", "topic", "ts", "reasons", "result"}`` (``row``:
  the row's index in the ``.npy``, or ``file``: its frame);
- ``<segment>.npy``: the rows as the model saw them, stacked (tensor routes);
- ``<segment>-<row>.jpg`` (or ``.png``): frames as they arrived on the wire (image routes given the
  payloads; a raw ``.npy`` frame is encoded to JPEG).
The ``.jsonl`` is written last: a segment without one is incomplete and removed at the next start.

The ring: before a segment is written, the oldest segments are deleted until it fits under ``max_mb``
(file sizes, not filesystem blocks; files of other names in the directory are neither counted nor
touched). A segment larger than the cap is dropped. At start, existing segments are counted and the
oldest deleted until the directory is under the cap. A directory that cannot be written (disk full,
read-only, missing parent) costs the segment: its rows are counted in ``write_errors`` and the problem is
logged at most once per ``log_interval_s``; serving goes on and later segments try again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = ["CaptureWriter", "confidence", "read_capture"]

log = logging.getLogger("edge_runtime.monitoring")

_SEGMENT = re.compile(r"^(cap-\d{20}-\d{6})(?:-\d+)?\.(?:jsonl|npy|jpg|png)$")
_TMP = re.compile(r"^\.cap-\d{20}-\d{6}.*\.tmp$")
_JPEG, _PNG, _NPY = b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"\x93NUMPY"
_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def confidence(result: Mapping[str, Any]) -> float | None:
    """A result's confidence: top score (classifiers), best detection's score (detectors), else None."""
    if "scores" in result and "label" in result:
        scores = result["scores"]
        return float(max(scores)) if len(scores) else None
    if "label" in result and "score" in result:
        return float(result["score"])
    dets = result.get("detections")
    if dets:
        return float(max(d["score"] for d in dets))
    return None


class CaptureWriter:
    """Writes chosen rows and their results to ``directory``, never more than ``max_mb`` of files."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_mb: float,
        fraction: float = 0.0,
        low_confidence: float | None = None,
        drift: bool = False,
        max_queue_mb: float = 16.0,
        segment_mb: float = 1.0,
        flush_s: float = 5.0,
        log_interval_s: float = 60.0,
        jpeg_quality: int = 90,
    ):
        if not max_mb > 0:
            raise ValueError(f"max_mb must be above 0, not {max_mb}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
        if low_confidence is not None and not 0 < low_confidence <= 1:
            raise ValueError(f"low_confidence must be above 0 and at most 1, not {low_confidence}")
        if not fraction and low_confidence is None and not drift:
            raise ValueError("nothing would be captured: give a fraction, low_confidence or drift")
        if not (max_queue_mb > 0 and segment_mb > 0 and flush_s > 0 and 1 <= jpeg_quality <= 100):
            raise ValueError("max_queue_mb, segment_mb and flush_s must be above 0, jpeg_quality within 1-100")
        self.directory = Path(directory)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.fraction, self.low_confidence, self.drift = fraction, low_confidence, drift
        self._max_queue = int(max_queue_mb * 1024 * 1024)
        # A segment is at most a quarter of the cap, so deleting the oldest frees room in steps, not all at once.
        self._segment_bytes = min(int(segment_mb * 1024 * 1024), max(1, self.max_bytes // 4))
        self._flush_s, self._log_every, self._quality = flush_s, log_interval_s, jpeg_quality
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0  # bytes waiting in the queue
        self._offered = 0  # rows seen: the fraction's sampling position
        self._seq = 0
        self._segments: deque[tuple[str, int, list[str]]] = deque()  # oldest first: (name, bytes, files)
        self.bytes = 0
        self.captured = self.write_errors = self.deleted = 0
        self.dropped = {"queue_full": 0, "too_large": 0}
        self._logged_at, self._unlogged = -math.inf, 0
        self._busy = 0  # rows taken by offer and not yet written or given up
        self._stop = threading.Event()
        self._scanned = threading.Event()  # what was already on disk is counted (and trimmed to the cap)
        self._thread = threading.Thread(target=self._work, name=f"capture-{self.directory.name}", daemon=True)
        self._thread.start()

    # -- the loop's side ---------------------------------------------------------------------------------

    def offer(
        self,
        rows: np.ndarray,
        results: Sequence[Mapping[str, Any]],
        *,
        ids: Sequence[Any] | None = None,
        topics: Sequence[str] | None = None,
        payloads: Sequence[bytes] | None = None,
        drift_active: bool = False,
        confidences: Sequence[float | None] | None = None,
    ) -> int:
        """Choose rows of a published batch and queue them; returns how many were queued.

        ``rows``: what the model ran on; ``results``: the task's results; ``ids``/``topics``: each input's id
        and topic (kept so a capture can be replayed); ``payloads``: image routes, the frames as received
        (stored as they are instead of the model tensors); ``drift_active``: the route's drift alert;
        ``confidences``: per row, when the loop has them already (else read from the results).
        """
        n = len(rows)
        if n == 0:
            return 0
        start = self._offered
        self._offered += n
        reasons: dict[int, list[str]] = {}  # only for the rows taken: most batches take none
        if self.fraction:
            for i in np.flatnonzero(np.diff(np.floor((start + np.arange(n + 1)) * self.fraction))).tolist():
                reasons[i] = ["fraction"]
        if self.low_confidence is not None:
            conf = confidences if confidences is not None else [confidence(r) for r in results]
            for i, c in enumerate(conf):
                if c is not None and c < self.low_confidence:
                    reasons.setdefault(i, []).append("low_confidence")
        if self.drift and drift_active:
            for i in range(n):
                reasons.setdefault(i, []).append("drift")
        if not reasons:
            return 0
        pick = sorted(reasons)
        now = time.time()
        # Serialised here, for the rows taken only: the queue's byte bound then counts what will be written
        # (an id or a result can be large), and the writer only prefixes each line with its row or file.
        entries = [
            orjson.dumps(
                {
                    "id": None if ids is None else ids[i],
                    "topic": None if topics is None else topics[i],
                    "ts": now,
                    "reasons": reasons[i],
                    "result": results[i],
                },
                default=str,
                option=_JSON,
            )
            for i in pick
        ]
        if payloads is not None:
            data: Any = [payloads[i] for i in pick]
            size = sum(len(p) for p in data)
        else:
            data = rows[pick]
            size = data.nbytes
        size += sum(len(e) for e in entries)
        with self._lock:
            if self._queued + size > self._max_queue:
                self.dropped["queue_full"] += len(pick)
                return 0
            self._queued += size
            self._busy += len(pick)
        self._queue.put((data, entries, size))
        return len(pick)

    def snapshot(self) -> dict[str, Any]:
        """Counters for the metrics JSON: rows captured, bytes and segments on disk, what was given up."""
        with self._lock:
            return {
                "captured": self.captured,
                "bytes": self.bytes,
                "segments": len(self._segments),
                "max_bytes": self.max_bytes,
                "deleted_segments": self.deleted,
                "write_errors": self.write_errors,
                "dropped": dict(self.dropped),
            }

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every queued row is on disk or given up (a partial segment is flushed); for tests."""
        end = time.monotonic() + timeout
        self._flush_now = True
        if not self._scanned.wait(timeout):
            return False
        while time.monotonic() < end:
            with self._lock:
                if not self._busy:
                    return True
            self._flush_now = True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``) and stop the thread."""
        self._stop.set()
        self._thread.join(timeout)

    # -- the writer thread --------------------------------------------------------------------------------

    _flush_now = False

    def _work(self) -> None:
        self._scan()
        self._scanned.set()
        data: list[Any] = []
        entries: list[bytes] = []
        size, started = 0, 0.0
        while True:
            timeout = 0.2 if not entries else max(0.0, min(0.05, started + self._flush_s - time.monotonic()))
            try:
                item_data, item_entries, item_size = self._queue.get(timeout=timeout)
            except queue.Empty:
                item_data = None
            if item_data is not None:
                with self._lock:
                    self._queued -= item_size
                frames = not isinstance(item_data, np.ndarray)
                if data and (
                    frames != (not isinstance(data[0], np.ndarray))
                    or (not frames and data[0].shape[1:] != item_data.shape[1:])
                ):
                    self._write(data, entries)  # rows of another shape start a segment of their own
                    data, entries, size = [], [], 0
                if not entries:
                    started = time.monotonic()
                data.append(item_data)
                entries.extend(item_entries)
                size += item_size
            due = entries and (
                size >= self._segment_bytes
                or time.monotonic() - started >= self._flush_s
                or self._flush_now
                or self._stop.is_set()
            )
            if due:
                self._write(data, entries)
                data, entries, size = [], [], 0
            if not entries:
                self._flush_now = False
                if self._stop.is_set() and self._queue.empty():
                    return

    def _write(self, data: list[Any], entries: list[bytes]) -> None:
        n = len(entries)
        self._seq = (self._seq + 1) % 1_000_000
        name = f"cap-{time.time_ns():020d}-{self._seq:06d}"
        try:
            files = self._files(name, data, entries)
        except Exception as err:  # noqa: BLE001 - a frame that cannot be encoded costs its segment, not the thread
            self._failed(n, f"capture {self.directory}: cannot encode segment: {type(err).__name__}: {err}")
            return
        total = sum(len(b) for _, b in files)
        if total > self.max_bytes:
            with self._lock:
                self.dropped["too_large"] += n
                self._busy -= n
            return
        written: list[str] = []
        try:
            if not self.directory.is_dir():  # first segment, or the directory was taken away with its segments
                self.directory.mkdir(parents=True, exist_ok=True)
                with self._lock:
                    self.bytes = 0
                    self._segments.clear()
            while self._segments and self.bytes + total > self.max_bytes and self._delete_oldest():
                pass
            if self.bytes + total > self.max_bytes:  # the oldest could not be deleted: never grow past the cap
                self._failed(n, f"capture {self.directory}: cannot free room for {total} bytes under the cap")
                return
            for fname, blob in files:  # the .jsonl is last: a segment without it is incomplete
                tmp = self.directory / f".{fname}.tmp"
                written.append(tmp.name)
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, self.directory / fname)
                written[-1] = fname
        except OSError as err:
            for fname in written:
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / fname)
            self._failed(n, f"capture {self.directory}: cannot write: {err.strerror or err}")
            return
        with self._lock:
            self._segments.append((name, total, [f for f, _ in files]))
            self.bytes += total
            self.captured += n
            self._busy -= n

    def _files(self, name: str, data: list[Any], entries: list[bytes]) -> list[tuple[str, bytes]]:
        files: list[tuple[str, bytes]] = []
        lines = []
        if isinstance(data[0], np.ndarray):
            rows = np.concatenate(data)
            buf = io.BytesIO()
            np.save(buf, rows, allow_pickle=False)
            files.append((f"{name}.npy", buf.getvalue()))
            for i, e in enumerate(entries):
                lines.append(b'{"row":%d,' % i + e[1:])
        else:
            frames = [p for chunk in data for p in chunk]
            for i, (frame, e) in enumerate(zip(frames, entries)):
                fname, blob = self._frame(f"{name}-{i}", bytes(frame))
                files.append((fname, blob))
                lines.append(b'{"file":%s,' % orjson.dumps(fname) + e[1:])
        body = b"".join(line + b"\n" for line in lines)
        files.append((f"{name}.jsonl", body))
        return files

    def _frame(self, stem: str, payload: bytes) -> tuple[str, bytes]:
        if payload.startswith(_JPEG):
            return f"{stem}.jpg", payload
        if payload.startswith(_PNG):
            return f"{stem}.png", payload
        from .._opencv import load_cv2

        cv2 = load_cv2()
        img = np.load(io.BytesIO(payload), allow_pickle=False) if payload.startswith(_NPY) else None
        if img is None:
            raise ValueError("a frame is neither JPEG, PNG nor .npy")
        ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise ValueError("OpenCV could not encode the frame")
        return f"{stem}.jpg", jpeg.tobytes()

    def _delete_oldest(self) -> bool:
        _name, size, files = self._segments[0]
        for fname in files:
            try:
                os.unlink(self.directory / fname)
            except (FileNotFoundError, NotADirectoryError):
                pass  # already gone (or its directory is): nothing left to count
            except OSError as err:
                self._failed(0, f"capture {self.directory}: cannot delete {fname}: {err.strerror or err}")
                return False
        with self._lock:
            self._segments.popleft()
            self.bytes -= size
            self.deleted += 1
        return True

    def _scan(self) -> None:
        """Count the segments already there (a restart) and delete the oldest until under the cap."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        except OSError as err:
            self._failed(0, f"capture {self.directory}: cannot list: {err.strerror or err}")
            return
        groups: dict[str, list[tuple[str, int]]] = {}
        for fname in names:
            path = self.directory / fname
            if _TMP.match(fname):  # left by a crash mid-write
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            m = _SEGMENT.match(fname)
            if not m:
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            groups.setdefault(m.group(1), []).append((fname, size))
        for seg in sorted(groups):
            files = groups[seg]
            if not any(f.endswith(".jsonl") for f, _ in files):  # incomplete: its index was never written
                for f, _ in files:
                    with contextlib.suppress(OSError):
                        os.unlink(self.directory / f)
                continue
            self._segments.append((seg, sum(s for _, s in files), [f for f, _ in files]))
            self.bytes += self._segments[-1][1]
        while self._segments and self.bytes > self.max_bytes and self._delete_oldest():
            pass

    def _failed(self, rows: int, message: str) -> None:
        with self._lock:
            self.write_errors += rows
            self._busy -= rows
        now = time.monotonic()
        self._unlogged += 1
        if now - self._logged_at >= self._log_every:
            log.warning("%s (%d such failures since the last report; serving goes on)", message, self._unlogged)
            self._logged_at, self._unlogged = now, 0


def read_capture(directory: str | os.PathLike[str], *, topic: str | None = None) -> list[dict[str, Any]]:
    """A capture as messages to publish again, in the form ``devices.recording`` replays.

    Tensor rows become JSON ``{"id", "values"}``; frames are sent as the files hold them, their id in the
    MQTT v5 user property ``id``. ``topic`` replaces each row's recorded topic (needed when none was kept).
    """
    root = Path(directory)
    segments = sorted({m.group(1) for f in os.listdir(root) if (m := _SEGMENT.match(f)) and f.endswith(".jsonl")})
    out: list[dict[str, Any]] = []
    first: float | None = None
    for seg in segments:
        rows = None
        with open(root / f"{seg}.jsonl", "rb") as f:
            lines = [line for line in f if line.strip()]
        for n, line in enumerate(lines, 1):
            where = f"{root / seg}.jsonl:{n}"
            try:
                e = orjson.loads(line)
                dest = topic or e.get("topic")
                if not dest:
                    raise ValueError("no topic was captured; give one to replay to (--topic)")
                first = e["ts"] if first is None else first
                entry: dict[str, Any] = {"t": max(0.0, e["ts"] - first), "topic": dest, "qos": 0, "retain": False}
                if "file" in e:
                    if Path(e["file"]).name != e["file"]:
                        raise ValueError(f"frame file {e['file']!r} is not in the capture directory")
                    entry["payload"] = (root / e["file"]).read_bytes()
                    if e.get("id") is not None:
                        entry["user_properties"] = [["id", str(e["id"])]]
                else:
                    if rows is None:
                        rows = np.load(root / f"{seg}.npy", allow_pickle=False)
                    entry["payload"] = orjson.dumps(
                        {"id": e.get("id"), "values": rows[e["row"]]}, option=orjson.OPT_SERIALIZE_NUMPY
                    )
            except (KeyError, TypeError, IndexError, ValueError) as err:
                raise ValueError(f"{where}: not a captured row ({err})") from err
            out.append(entry)
    return out
