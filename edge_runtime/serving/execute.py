"""Serving one batch: decode, infer (row by row if the batch as a whole fails), answer, measure, observe.

Image routes run the model on a thread of its own (prefetch.ModelThread) while the loop's thread goes on
reading the socket; so does their row-by-row fallback (a CNN call on the loop's thread would stall
keep-alives and acknowledgements for its tens of milliseconds). Tensor models are called in place: a thread
hand-off would cost more than the call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ..engines import InferenceEngine as Engine
from ..errors import PayloadError, first_line
from ..mqtt.delivery import Inbound
from ..observability.ratelog import RateLimitedLog
from .batcher import Pending
from .ingress import Ingress
from .observers import ServedBatch
from .prefetch import ModelThread
from .responder import Responder
from .routes import Route
from .video import FrameInput

__all__ = ["BatchExecutor"]

log = logging.getLogger("edge_runtime")

T = TypeVar("T")


class BatchExecutor:
    def __init__(
        self,
        *,
        ingress: Ingress,
        responder: Responder,
        model_thread: ModelThread,
        meanwhile: Callable[[float, Sequence[int]], None],
        flush: Callable[[], None],
        ratelog: RateLimitedLog,
    ):
        self.ingress = ingress
        self.responder = responder
        self.model_thread = model_thread
        self._meanwhile = meanwhile
        self._flush = flush
        self._ratelog = ratelog

    def serve(self, route: Route, batch: list[Pending[Inbound]], expired: list[Inbound]) -> None:
        for inbound in expired:
            self.ingress.give_up(route, inbound, "expired")
        if not batch:
            return
        responder, stats = self.responder, route.stats
        t0 = time.monotonic()
        rows: list[np.ndarray] = []
        accepted: list[tuple[Pending[Inbound], Any, Any]] = []
        for p in batch:
            try:
                msg_id, row, meta = self._decode(route, p.item)
            except PayloadError as err:
                responder.error(route, p.item, err)
                continue
            except Exception as err:  # noqa: BLE001 - a decoder bug must cost one input, not the loop
                self._ratelog.log("decode", "decoding an input of route %s failed", route.name, exc_info=True)
                responder.error(route, p.item, PayloadError("internal", f"the input could not be decoded: {err}"))
                continue
            rows.append(row)
            accepted.append((p, msg_id, meta))
        if not rows:
            return
        engine = route.engine
        if route.prefetch:  # the next batch's frames are decoded while this one is in the model
            for nxt in route.batcher.head(route.config.max_batch):
                if nxt.waiting == 1:  # an input other routes wait for too is decoded by each in its turn
                    self.ingress.start_ahead(route, nxt)
        t1 = time.monotonic()
        metas = [meta for _, _, meta in accepted]
        answers, stacked, outputs = self._infer(route, rows, metas)
        t2 = time.monotonic()
        m = engine.manifest
        base = {"model": m.name, "version": m.version}
        served = 0
        for (p, msg_id, _), answer in zip(accepted, answers):
            inbound = p.item
            if isinstance(answer, PayloadError):
                answer.id = msg_id
                responder.error(route, inbound, answer)
                continue
            served += 1
            body = {"id": msg_id, **base, **answer}
            if inbound.dup:  # a redelivery (or a retained input): its result may already have been published once
                body["repeat"] = True
            responder.result(route, inbound, body, answer)
        self._flush()
        t3 = time.monotonic()
        n = len(accepted)
        stats.batches += 1
        stats.batch_sizes[n] += 1
        stats.results += served
        stages = stats.stages
        stages["decode"].observe((t1 - t0) * 1000)
        stages["infer"].observe((t2 - t1) * 1000)
        stages["publish"].observe((t3 - t2) * 1000)
        observe, queue_wait = stats.latency.observe, stages["queue"].observe
        for p, _, _ in accepted:
            observe((t3 - p.arrived) * 1000)
            queue_wait((t0 - p.arrived) * 1000)
        if route.observers:
            served_batch = ServedBatch(
                route=route.name,
                model=m.name,
                inputs=[p.item for p, _, _ in accepted],
                ids=[msg_id for _, msg_id, _ in accepted],
                arrived=[p.arrived for p, _, _ in accepted],
                rows=stacked,
                outputs=outputs,
                metas=metas,
                answers=answers,
                t_started=t0,
                t_decoded=t1,
                t_inferred=t2,
                t_published=t3,
            )
            for observer in route.observers:
                try:
                    observer.observe(served_batch)
                except Exception:  # noqa: BLE001 - an observer must cost its own work, never the loop
                    self._ratelog.log("observer", "route %s: an observer failed", route.name, exc_info=True)

    def _decode(self, route: Route, inbound: Inbound) -> tuple[Any, np.ndarray, Any]:
        """(id, row, meta): decoded ahead while the last batch ran, already decoded by a video source, or now."""
        ahead, inbound.ahead = inbound.ahead, None
        if ahead is not None:
            owner, decoder, future, nbytes = ahead
            owner.ahead -= 1
            owner.batcher.release(nbytes)
            self.ingress.decode_ahead.used += 1
            if decoder is route.decoder:
                decoded: tuple[Any, np.ndarray, Any] = future.result()
                return decoded
        if route.video is not None and isinstance(inbound, FrameInput):
            decode_array = getattr(route.decoder, "decode_array", None)
            if decode_array is not None:
                decoded = decode_array(inbound.image, id=inbound.frame_id, timestamp=inbound.timestamp)
                return decoded
        return route.decoder.decode(inbound.payload, inbound.properties)

    def _call(self, route: Route, call: Callable[[Any], T], arg: Any) -> T:
        """A model call: on the model thread for image routes (the socket is read meanwhile), else in place."""
        if route.prefetch:
            return self.model_thread.run(call, arg, meanwhile=self._meanwhile)
        return call(arg)

    def _infer(
        self, route: Route, rows: list[np.ndarray], metas: list[Any]
    ) -> tuple[list[dict[str, Any] | PayloadError], np.ndarray | None, dict[str, np.ndarray] | None]:
        """Results for a batch (with the stacked rows and raw outputs, for observers); if the batch as a whole
        fails (rows that cannot be stacked, a row the model refuses), row by row, so that one bad row fails
        alone (and observers get no stacked batch)."""
        engine: Engine = route.engine
        try:
            stacked = np.stack(rows)
            outputs = self._call(route, engine.run, stacked)
            results = engine.task.results(engine.manifest, outputs, metas)
            if len(results) != len(rows):
                raise ValueError(f"the task returned {len(results)} results for {len(rows)} rows")
            return list(results), stacked, outputs
        except Exception as err:  # noqa: BLE001 - whatever the model or task raises, each row gets its own answer
            if len(rows) == 1:
                self._ratelog.log("infer", "inference failed on route %s: %s", route.name, first_line(err, 500))
                return [PayloadError("inference_failed", first_line(err, 500))], None, None
        answers: list[dict[str, Any] | PayloadError] = []
        for row, meta in zip(rows, metas):
            try:
                out = self._call(route, engine.run, row[np.newaxis])
                (result,) = engine.task.results(engine.manifest, out, [meta])
                answers.append(result)
            except Exception as err:  # noqa: BLE001
                self._ratelog.log("infer", "inference failed on route %s: %s", route.name, first_line(err, 500))
                answers.append(PayloadError("inference_failed", first_line(err, 500)))
        return answers, None, None
