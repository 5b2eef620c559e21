"""The runtime: routes wired from the MQTT link through decode, batch, infer and encode back to the link.

Everything runs in one thread (see link.py for why). Each turn of the loop waits for the socket no longer
than the nearest batch deadline, takes in what has arrived, and serves every batch that is due.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.detect import profile_for
from devices.profiles import DeviceProfile

from .. import __version__
from ..bundle import load_bundle
from ..config import Config, RouteConfig
from ..engines import Engine
from ..errors import ConfigError, PayloadError
from ..mqtt.link import Link, Message
from ..observability.metrics import RouteSnapshot, RouteStats, RuntimeSnapshot
from ..tasks import Decoder
from ..tasks.codecs import encode
from ..topics import TopicFilter, TopicTemplate
from ..vocabulary import DropReason
from .announce import OFFLINE, Announcer
from .batcher import Batcher, Pending
from .control import parse_control
from .reload import Outcome, Reloader
from .snapshots import Snapshots

__all__ = ["Runtime"]

log = logging.getLogger("edge_runtime")


@dataclass
class Route:
    config: RouteConfig
    engine: Engine
    filter: TopicFilter
    publish: TopicTemplate
    errors: TopicTemplate
    decoder: Decoder
    batcher: Batcher[Message]
    snapshots: Snapshots | None = None
    stats: RouteStats = field(default_factory=RouteStats)

    @property
    def name(self) -> str:
        return self.config.subscribe


def _load_engine(config: Config, name: str, profile: DeviceProfile) -> Engine:
    """Load, verify and warm up one model: used at start and for every reload."""
    import os

    m = next(m for m in config.models if m.name == name)
    key = None
    if m.signing_key_env:
        value = os.environ.get(m.signing_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {m.signing_key_env} is not set", key=f"models.{m.name}.signing_key_env"
            )
        key = value.encode()
    engine = Engine(
        load_bundle(m.bundle, signing_key=key),
        threads=m.threads or profile.ort.intra_op_threads,
        spinning=profile.ort.allow_spinning,
    )
    if m.warmup:
        engine.warm_up(tuple({1} | {r.max_batch for r in config.routes if r.model == name}))
    return engine


def _decoder(engine: Engine, rc: RouteConfig) -> Decoder:
    return engine.task.decoder(engine.manifest, max_bytes=rc.max_payload_bytes)


class Runtime:
    """Serves every route of a config until ``stop()`` (or SIGINT/SIGTERM under ``run``)."""

    def __init__(self, config: Config):
        self.config = config
        # ONNX Runtime settings come from the board this runs on (or the one the config names).
        self.profile = profile_for(config.device.profile)
        self.engines = {m.name: _load_engine(config, m.name, self.profile) for m in config.models}
        self.routes: list[Route] = []
        for i, rc in enumerate(config.routes):
            engine = self.engines[rc.model]
            flt = TopicFilter(rc.subscribe)
            snapshots = None
            if rc.snapshot is not None:
                if not hasattr(engine.task, "annotate"):
                    raise ConfigError(
                        f"snapshot needs an image model; {rc.model!r} is a {engine.task.name}",
                        key=f"routes[{i}].snapshot",
                    )
                snapshots = Snapshots(
                    TopicTemplate(rc.snapshot, wildcards=flt.wildcards),
                    flt,
                    lambda topic, jpeg: self.link.publish(topic, jpeg, 0),
                )
            self.routes.append(
                Route(
                    config=rc,
                    engine=engine,
                    filter=flt,
                    publish=TopicTemplate(rc.publish, wildcards=flt.wildcards),
                    errors=TopicTemplate(rc.error_topic, wildcards=flt.wildcards),
                    decoder=_decoder(engine, rc),
                    snapshots=snapshots,
                    batcher=Batcher(
                        max_batch=rc.max_batch,
                        max_delay=rc.max_delay_ms / 1000,
                        max_queue=rc.max_queue or self.profile.max_queue,
                        overflow=rc.overflow,
                        deadline=None if rc.deadline_ms is None else rc.deadline_ms / 1000,
                    ),
                )
            )
        self._route_cache: dict[str, list[Route]] = {}
        self._started = time.monotonic()
        self._closing = False
        self._stop = threading.Event()
        client_id = config.broker.client_id
        self.announcer = Announcer(
            client_id=client_id,
            version=__version__,
            device=self.profile.name,
            publish=lambda topic, payload, qos, retain: self.link.publish(topic, payload, qos, retain=retain),
            discovery_prefix=config.homeassistant.prefix if config.homeassistant.discovery else None,
        )
        self.status_topic = self.announcer.status_topic
        self.control_topic = f"edge-runtime/{client_id}/control"
        self.metrics_topic = config.metrics.topic or f"edge-runtime/{client_id}/metrics"
        self._metrics_every = config.metrics.interval_s or None
        self._metrics_due = float("inf")
        self._prometheus: Any = None
        self.reloader = Reloader(
            {m.name: m.bundle for m in config.models},
            lambda name: _load_engine(config, name, self.profile),
            watched={m.name for m in config.models if m.watch},
        )
        self.link = Link(
            config.broker,
            on_message=self._accept,
            subscriptions=[(r.config.subscribe, r.config.qos) for r in self.routes] + [(self.control_topic, 1)],
            persistent=any(r.config.qos > 0 for r in self.routes),
            will=(self.status_topic, OFFLINE),
        )
        self.link.on_connected.append(self._announce)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.link.connect()
        self.reloader.start()
        if self._metrics_every:
            self._metrics_due = time.monotonic() + self._metrics_every
        if self.config.metrics.prometheus_port:
            from ..observability.prometheus import serve_prometheus

            self._prometheus = serve_prometheus(
                self.snapshot, self.config.metrics.prometheus_host, self.config.metrics.prometheus_port
            )

    def stop(self) -> None:
        """Ask the loop to finish: batches in hand are served and their results published first."""
        self._stop.set()

    def run(self, *, duration: float | None = None, handle_signals: bool = True) -> None:
        """Connect, serve until stopped (or for ``duration`` seconds), then shut down cleanly."""
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        self.start()
        try:
            self.serve(duration=duration)
        finally:
            self.shutdown()

    def serve(self, *, duration: float | None = None) -> None:
        end = None if duration is None else time.monotonic() + duration
        link, routes, stop, reloads = self.link, self.routes, self._stop, self.reloader.outcomes
        while not stop.is_set():
            if not reloads.empty():
                self._swap(reloads.get())
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if now >= self._metrics_due:
                self.publish_metrics()
                self._metrics_due = now + self._metrics_every
            timeout = min(0.5, self._metrics_due - now)
            for r in routes:
                d = r.batcher.next_due()
                if d is not None:
                    timeout = min(timeout, max(0.0, d - now))
            link.poll(timeout)
            self._serve_due(time.monotonic())

    def shutdown(self) -> None:
        self.reloader.close()
        if self._prometheus is not None:
            self._prometheus.shutdown()
        for route in self.routes:  # whatever was accepted is answered before we go
            while len(route.batcher):
                self._serve_batch(route, *route.batcher.take(time.monotonic()))
        # From here on the link is only polled to flush results; inputs still arriving are not taken.
        self._closing = True
        if self.link.connected:
            if self._metrics_every:
                self.publish_metrics()  # the last word on what this run did
            self.announcer.offline()
            self.link.drain(5.0)
        self.link.close()

    def _announce(self) -> None:
        self.announcer.online({n: e.manifest.version for n, e in self.engines.items()})

    def publish_metrics(self) -> None:
        """The stats as JSON on the metrics topic (QoS 0: the next one supersedes a lost one)."""
        self.link.publish(self.metrics_topic, encode({"ts": time.time(), **self.stats()}), 0)

    def _swap(self, outcome: Outcome) -> None:
        """Between two batches: serve the new model from now on, or say on the status topic why not."""
        name, engine = outcome.model, outcome.engine
        if engine is None:
            self.announcer.last_reload = {
                "model": name,
                "ok": False,
                "reason": outcome.reason,
                "serving": self.engines[name].manifest.version,
            }
        else:
            self.engines[name] = engine
            for route in self.routes:
                if route.config.model == name:
                    route.engine, route.decoder = engine, _decoder(engine, route.config)
            self.announcer.last_reload = {"model": name, "ok": True, "serving": engine.manifest.version}
            log.info("model %s reloaded: now serving version %s", name, engine.manifest.version)
        if self.link.connected:
            self._announce()

    def _control(self, msg: Message) -> None:
        """A control message: acknowledged at once (it asks for work, it is not work to answer)."""
        self.link.ack(msg)
        parse_control(msg.payload, self.reloader.request)

    def snapshot(self) -> RuntimeSnapshot:
        """Everything counted so far: per route, per model, and the link's counters (see observability)."""
        routes = [
            RouteSnapshot(
                name=r.name,
                model=r.config.model,
                stats=r.stats,
                queue_depth=len(r.batcher),
                queue_high_water=r.batcher.high_water,
                queue_max=r.batcher.max_queue,
            )
            for r in self.routes
        ]
        return RuntimeSnapshot(
            runtime=self.config.broker.client_id,
            version=__version__,
            uptime_s=time.monotonic() - self._started,
            routes=routes,
            models={n: e.manifest.version for n, e in self.engines.items()},
            connected=self.link.connected,
            pending_out=self.link.pending_out(),
            link=dict(self.link.counters),
        )

    def stats(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data: what the metrics topic publishes and ``run --stats-json`` writes."""
        return self.snapshot().as_dict()

    # -- the data path ----------------------------------------------------------------------

    def _accept(self, msg: Message) -> None:
        """Called by paho for every input: only queue it here; all work happens in ``_serve_due``."""
        routes = self._route_cache.get(msg.topic)
        if routes is None:
            if msg.topic == self.control_topic:
                return self._control(msg)
            routes = [r for r in self.routes if r.filter.match(msg.topic) is not None]
            if len(self._route_cache) < 10_000:
                self._route_cache[msg.topic] = routes
        now = time.monotonic()
        if self._closing:  # not acknowledged: the broker redelivers a QoS 1 input to our next session
            for route in routes:
                route.stats.received += 1
                route.stats.dropped["shutdown"] += 1
            return
        for route in routes:
            route.stats.received += 1
            for given_up, reason in route.batcher.offer(msg, now, msg.topic):
                self._give_up(route, given_up, reason)
        if not routes:
            self.link.ack(msg)

    def _give_up(self, route: Route, msg: Message, reason: DropReason) -> None:
        """An input the overload policy gave up: counted by reason; ``reject`` also answers it."""
        if reason == "rejected":
            self._publish_error(route, msg, PayloadError("overloaded", "the route's queue is full; input refused"))
            return
        route.stats.dropped[reason] += 1
        self.link.ack(msg)

    def _serve_due(self, now: float) -> None:
        for route in self.routes:
            while route.batcher.ready(now):
                self._serve_batch(route, *route.batcher.take(now))

    def _serve_batch(self, route: Route, batch: list[Pending[Message]], expired: list[Message]) -> None:
        for msg in expired:
            self._give_up(route, msg, "expired")
        if not batch:
            return
        stats = route.stats
        t0 = time.monotonic()
        decode = route.decoder.decode
        rows: list[np.ndarray] = []
        accepted: list[tuple[Pending[Message], Any, Any]] = []
        for p in batch:
            msg = p.item
            try:
                msg_id, row, meta = decode(msg.payload, getattr(msg, "properties", None))
            except PayloadError as err:
                self._publish_error(route, msg, err)
                continue
            rows.append(row)
            accepted.append((p, msg_id, meta))
        if not rows:
            return
        engine = route.engine
        t1 = time.monotonic()
        try:
            outputs = engine.run(np.stack(rows))
            results = engine.task.results(engine.manifest, outputs, [meta for _, _, meta in accepted])
        except Exception as err:  # one bad batch must not stop the runtime
            log.exception("inference failed on route %s", route.name)
            for p, msg_id, _ in accepted:
                self._publish_error(
                    route, p.item, PayloadError("inference_failed", str(err).splitlines()[0], id=msg_id)
                )
            return
        t2 = time.monotonic()
        m = engine.manifest
        qos = route.config.qos
        publish, ack = self.link.publish, self.link.ack
        announce = self.announcer.result_topic
        snapshots = route.snapshots
        annotate = getattr(engine.task, "annotate", None)
        for (p, msg_id, _), result in zip(accepted, results):
            msg = p.item
            body = {"id": msg_id, "model": m.name, "version": m.version, **result}
            topic, props = self._reply_target(route, route.publish, msg)
            publish(topic, encode(body), qos, properties=props)
            announce(topic, task=m.task, model=m.name, version=m.version)
            if snapshots is not None and annotate is not None:
                snapshots.publish(annotate, msg.topic, msg.payload, result)
            ack(msg)
        self.link.flush_writes()
        t3 = time.monotonic()
        n = len(accepted)
        stats.batches += 1
        stats.batch_sizes[n] += 1
        stats.results += n
        stages = stats.stages
        stages["decode"].observe((t1 - t0) * 1000)
        stages["infer"].observe((t2 - t1) * 1000)
        stages["publish"].observe((t3 - t2) * 1000)
        observe, queue_wait = stats.latency.observe, stages["queue"].observe
        for p, _, _ in accepted:
            observe((t3 - p.arrived) * 1000)
            queue_wait((t0 - p.arrived) * 1000)

    def _reply_target(self, route: Route, template: TopicTemplate, msg: Message) -> tuple[str, Properties | None]:
        props_in = getattr(msg, "properties", None)
        response = getattr(props_in, "ResponseTopic", None) if props_in is not None else None
        if response:  # MQTT v5 request/response: answer (results and errors) where the requester listens
            props = Properties(PacketTypes.PUBLISH)
            corr = getattr(props_in, "CorrelationData", None)
            if corr is not None:
                props.CorrelationData = corr
            return response, props
        captures = route.filter.match(msg.topic) if template.needs_captures else []
        return template.render(captures or [], msg.topic), None

    def _publish_error(self, route: Route, msg: Message, err: PayloadError) -> None:
        route.stats.errors[err.code] += 1
        # One line per refused input, with what an operator needs to find it; overload is counted, not logged.
        log.log(
            logging.DEBUG if err.code == "overloaded" else logging.WARNING,
            "route %s: input %r from %s refused: %s",
            route.name,
            err.id,
            msg.topic,
            err,
            extra={"route": route.name, "id": err.id, "code": err.code, "topic": msg.topic},
        )
        topic, props = self._reply_target(route, route.errors, msg)
        body = {"id": err.id, "error": err.code, "detail": err.detail, "topic": msg.topic}
        self.link.publish(topic, encode(body), route.config.qos, properties=props)
        self.link.ack(msg)
