"""Shadow models: a candidate model runs on a share of a route's real inputs, off the serving thread.

After a batch's results are published the loop hands the batch to ``ShadowRunner.offer``: a fixed share
of its rows (``fraction``, chosen deterministically: row i of the route's stream is taken when
floor((i + 1) * fraction) > floor(i * fraction), so exactly that share over time, spread evenly) is copied
into a queue bounded in batches and bytes, never blocking: when it is full the rows are dropped and counted. The
runner's own thread runs the shadow model on them and compares its results with the live ones:

- classifiers: the top-1 label; detectors: the main class (the label of the highest-scoring detection,
  None when there is none); anomaly detectors: the anomaly flag;
- regressors: every value within ``rtol`` (relative to the live value) plus ``atol``;
- generic models: every output within the same tolerance.

``latency_ratio`` is the median inference time per row of the shadow model over that of the live model
(the last 1024 batches of each). The shadow runs the sampled rows only, so its batches are smaller than
the live ones and its per-row time is somewhat pessimistic.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ShadowRunner", "agree", "incompatibility"]

log = logging.getLogger("edge_runtime.monitoring")

ShadowRun = Callable[[np.ndarray, list[Any]], Sequence[Mapping[str, Any]]]


def _main_class(result: Mapping[str, Any]) -> Any:
    dets = result.get("detections") or ()
    return max(dets, key=lambda d: d["score"])["label"] if dets else None


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return x.shape == y.shape and bool(np.all(np.abs(y - x) <= atol + rtol * np.abs(x)))


def agree(live: Mapping[str, Any], shadow: Mapping[str, Any], *, rtol: float = 0.01, atol: float = 1e-6) -> bool:
    """Whether two results of one input agree (see the module's docstring); never raises."""
    try:
        if "detections" in live:
            return bool(_main_class(live) == _main_class(shadow))
        if "label" in live:
            return bool(live["label"] == shadow.get("label"))
        if "anomaly" in live:
            return bool(live["anomaly"] == shadow.get("anomaly"))
        if "value" in live:
            return "value" in shadow and _close(live["value"], shadow["value"], rtol, atol)
        if "outputs" in live:
            a, b = live["outputs"], shadow.get("outputs") or {}
            return a.keys() == b.keys() and all(_close(a[k], b[k], rtol, atol) for k in a)
    except (TypeError, ValueError, KeyError, AttributeError):
        return False
    return live == shadow


def incompatibility(live: Any, shadow: Any) -> str | None:
    """Why ``shadow`` (a Manifest) cannot shadow ``live``, or None: the same rows and the same kind of results."""
    a, b = live.inputs[0], shadow.inputs[0]
    if a.dtype != b.dtype or live.row_shape() != shadow.row_shape():
        return (
            f"shadow model {shadow.name!r} takes {b.dtype} {list(shadow.row_shape())}, the live model "
            f"{live.name!r} {a.dtype} {list(live.row_shape())}"
        )
    if live.task != shadow.task:
        return f"shadow model {shadow.name!r} is a {shadow.task}, the live model {live.name!r} a {live.task}"
    return None


class ShadowRunner:
    """Runs ``run(rows, metas) -> results`` (the shadow model and its task's results) on sampled rows."""

    def __init__(
        self,
        run: ShadowRun,
        *,
        model: str,
        version: str | None = None,
        fraction: float = 0.1,
        max_queue: int = 64,
        max_queue_mb: float = 32.0,
        rtol: float = 0.01,
        atol: float = 1e-6,
        log_interval_s: float = 60.0,
    ):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be above 0 and at most 1, not {fraction}")
        if max_queue < 1 or not max_queue_mb > 0:
            raise ValueError(
                f"max_queue must be at least 1 batch and max_queue_mb above 0, not {max_queue}, {max_queue_mb}"
            )
        if rtol < 0 or atol < 0:
            raise ValueError("rtol and atol must not be negative")
        self.model, self.fraction, self.rtol, self.atol = model, fraction, rtol, atol
        self.version = version
        self._run, self._generation = run, 0
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        # Batches and bytes: a few camera frames as model tensors are megabytes each.
        self._max_bytes, self._queued_bytes = int(max_queue_mb * 1024 * 1024), 0
        self._offered = 0  # rows of the route seen so far: the sampling position
        self._lock = threading.Lock()
        self.rows = self.agreed = self.dropped = self.errors = 0
        self._owed = 0  # rows queued and not yet compared
        self._live_ms: deque[float] = deque(maxlen=1024)
        self._shadow_ms: deque[float] = deque(maxlen=1024)
        self._log_every, self._logged_at, self._unlogged = log_interval_s, -math.inf, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"shadow-{model}", daemon=True)
        self._thread.start()

    def offer(
        self,
        batch: np.ndarray,
        results: Sequence[Mapping[str, Any]],
        *,
        metas: Sequence[Any] | None = None,
        live_seconds: float | None = None,
    ) -> int:
        """After a batch's results are published: queue the sampled rows; returns how many were queued.

        ``batch`` is what the live model ran on, ``results`` its results, ``metas`` what the decoder returned
        per row (image tasks need them), ``live_seconds`` the live inference time of the whole batch.
        """
        n = len(batch)
        if n == 0:
            return 0
        if live_seconds is not None:
            self._live_ms.append(live_seconds * 1000 / n)
        start = self._offered
        self._offered += n
        if self.fraction >= 1:
            pick = np.arange(n)
        else:
            pick = np.flatnonzero(np.diff(np.floor((start + np.arange(n + 1)) * self.fraction)))
            if not len(pick):
                return 0
        rows = batch[pick]
        with self._lock:
            if self._queued_bytes + rows.nbytes > self._max_bytes:
                self.dropped += len(pick)
                return 0
            self._queued_bytes += rows.nbytes
            self._owed += len(pick)  # owed before the worker can see the item, so wait() never misses it
        try:
            self._queue.put_nowait(
                (rows, [results[int(i)] for i in pick], None if metas is None else [metas[int(i)] for i in pick])
            )
        except queue.Full:
            with self._lock:
                self.dropped += len(pick)
                self._owed -= len(pick)
                self._queued_bytes -= rows.nbytes
            return 0
        return len(pick)

    def _work(self) -> None:
        while True:
            try:
                rows, live, metas = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            with self._lock:
                self._queued_bytes -= rows.nbytes
                run, generation = self._run, self._generation
            try:
                t = time.perf_counter()
                shadow = run(rows, metas if metas is not None else [None] * len(rows))
                ms = (time.perf_counter() - t) * 1000 / len(rows)
            except Exception as err:  # noqa: BLE001 - a failing shadow is counted; serving is not its business
                with self._lock:
                    self._owed -= len(rows)
                    if generation == self._generation:
                        self.errors += len(rows)
                self._log(f"shadow model {self.model} failed on {len(rows)} rows: {type(err).__name__}: {err}")
                continue
            agreed = sum(agree(a, b, rtol=self.rtol, atol=self.atol) for a, b in zip(live, shadow))
            with self._lock:
                self._owed -= len(rows)
                if generation != self._generation:
                    continue
                if len(shadow) != len(live):
                    self.errors += len(rows)
                else:
                    self.rows += len(rows)
                    self.agreed += agreed
                    self._shadow_ms.append(ms)

    def replace(self, run: ShadowRun, *, version: str | None) -> None:
        """A new shadow model (a reload): its run from the next queued batch on, and the comparison counts
        (agreement, errors, latencies) started again, since they describe a pair of models."""
        with self._lock:
            self._run, self.version = run, version
            self._generation += 1  # a batch the old model is running now is not counted for the new one
            self.rows = self.agreed = self.errors = 0
            self._shadow_ms.clear()

    def _log(self, message: str) -> None:
        now = time.monotonic()
        self._unlogged += 1
        if now - self._logged_at >= self._log_every:
            log.warning("%s (%d such failures since the last report)", message, self._unlogged)
            self._logged_at, self._unlogged = now, 0

    def snapshot(self) -> dict[str, Any]:
        """``{"model", "version", "rows", "agreement", "latency_ratio", "dropped", "errors"}`` for the metrics JSON.

        ``agreement`` and ``latency_ratio`` are None until the shadow has compared a row.
        """
        with self._lock:
            rows, agreed, dropped, errors = self.rows, self.agreed, self.dropped, self.errors
            shadow_ms = list(self._shadow_ms)
        live_ms = list(self._live_ms)
        ratio = None
        if shadow_ms and live_ms and np.median(live_ms) > 0:
            ratio = round(float(np.median(shadow_ms) / np.median(live_ms)), 3)
        return {
            "model": self.model,
            "version": self.version,
            "rows": rows,
            "agreement": round(agreed / rows, 4) if rows else None,
            "latency_ratio": ratio,
            "dropped": dropped,
            "errors": errors,
        }

    def latencies(self) -> tuple[list[float], list[float]]:
        """The per-row inference times kept (ms, the last 1024 batches): the live model's and the shadow's."""
        with self._lock:
            shadow_ms = list(self._shadow_ms)
        return list(self._live_ms), shadow_ms

    def counts(self) -> tuple[int, int, int]:
        """``(rows, agreed, errors)``: rows compared, those that agreed, rows the shadow failed on."""
        with self._lock:
            return self.rows, self.agreed, self.errors

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every queued row has been compared (for tests and shutdown); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._owed:
                    return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued (within ``timeout``) and stop the thread."""
        self._stop.set()
        self._thread.join(timeout)
