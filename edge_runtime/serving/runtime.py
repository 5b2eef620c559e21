"""The runtime: routes wired from the MQTT link through decode, batch, infer and encode back to the link.

Everything runs in one thread (see mqtt/link.py for why). Each turn of the loop waits for the socket no
longer than the nearest batch deadline, takes in what has arrived, and serves the routes that are due,
one batch per route per round (a flooded route cannot starve another), servicing the socket between
batches (keep-alives, the broker's acknowledgements, new inputs) and checking the stop flag.

Two promises are kept here:

- **Nothing acknowledged before its result is safe.** An input is acknowledged when every route it matched
  has made its answer (result, error, or a counted drop) safe: for a QoS 1 answer, when the broker has
  acknowledged it. When results cannot leave (the outgoing queue is full), no batch is served: QoS 1
  inputs wait unacknowledged (the broker holds the rest, up to our Receive Maximum) and QoS 0 ones meet
  their route's bounded queue and overflow policy, counted.
- **Every client is a stranger.** No single input can raise out of the loop (a failing batch is served row
  by row), decide where results go (response topics only within a route's ``reply_to``), publish on a topic
  MQTT does not allow (counted as ``bad_topic`` and acknowledged), or hold more memory than the route's
  byte bound.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devices.detect import profile_for
from devices.profiles import DeviceProfile

from .. import __version__
from ..bundle import use_bundle
from ..config import Config, RouteConfig
from ..engines import InferenceEngine as Engine
from ..engines import open_engine
from ..errors import ConfigError, PayloadError, first_line
from ..mqtt.link import Inbound, Link, publish_properties
from ..observability.metrics import RouteSnapshot, RouteStats, RuntimeSnapshot
from ..observability.ratelog import RateLimitedLog
from ..tasks import Decoder, Task
from ..tasks.codecs import encode
from ..topics import MAX_TOPIC_BYTES, TopicFilter, TopicTemplate
from ..vocabulary import DropReason
from .announce import OFFLINE, Announcer
from .batcher import Batcher, Pending
from .bounded import ENTRY_OVERHEAD
from .control import parse_control
from .discovery import Discovery
from .monitors import RouteMonitors
from .observers import BatchObserver, ServedBatch
from .prefetch import DecodeAhead, ModelThread
from .reload import Outcome, Reloader
from .snapshots import Snapshots
from .video import FrameInput, TrackingObserver, VideoInput

__all__ = ["Runtime"]

log = logging.getLogger("edge_runtime")

# How long a stopping runtime goes on serving what it has already accepted before it gives the rest up
# (unacknowledged: the broker redelivers QoS 1 inputs), and how long it then waits for the broker to
# acknowledge what it published.
SHUTDOWN_SERVE_S = 0.5
SHUTDOWN_DRAIN_S = 2.0

# MQTT v5 properties an input may carry (bytes on the wire): a response topic, correlation data and a few user
# properties fit many times over. Unpacked, they cost up to ~30x that in Python objects (a tuple of two str
# per user property), which is what an input's size in the queue's byte bound counts.
MAX_PROPERTY_BYTES = 8192
_PROPERTY_COST = 32

# Input topics remembered with the routes they match, and rendered answer topics per route, at most (bytes).
_ROUTE_CACHE_BYTES = 4 << 20
_RENDERED_BYTES = 1 << 20


@dataclass
class Route:
    config: RouteConfig
    engine: Engine
    filter: TopicFilter | None  # None: the route reads a video source, not MQTT
    publish: TopicTemplate
    errors: TopicTemplate
    reply_to: list[TopicFilter]
    decoder: Decoder
    batcher: Batcher[Inbound]
    snapshots: Snapshots | None = None
    video: VideoInput | None = None
    observers: list[BatchObserver] = field(default_factory=list)
    monitors: RouteMonitors | None = None
    stats: RouteStats = field(default_factory=RouteStats)
    prefetch: bool = False  # image routes: frames decoded ahead while the model runs (see prefetch.py)
    ahead: int = 0  # decodes ahead in progress or done and not yet used
    # Rendered answer topics per input topic (rendering costs more than a lookup), bounded in bytes.
    rendered: dict[tuple[bool, str], str] = field(default_factory=dict)
    rendered_bytes: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    def captures(self, topic: str) -> list[str]:
        """What ``{1}``.. in the route's topics stand for: the filter's wildcard matches, or a source's name."""
        if self.filter is None:
            return [topic]
        return self.filter.match(topic) or []


def _load_engine(config: Config, name: str, profile: DeviceProfile) -> Engine:
    """Load, verify and warm up one model: used at start and for every reload."""
    m = next(m for m in config.models if m.name == name)
    key = None
    if m.signing_key_env:
        value = os.environ.get(m.signing_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {m.signing_key_env} is not set", key=f"models.{m.name}.signing_key_env"
            )
        key = value.encode()
    default, spinning = profile.ort.intra_op_threads, profile.ort.allow_spinning
    # Threads: the config's, else what the converter measured, else the profile's. The engine: the one the
    # bundle was measured fastest with, or ONNX Runtime where that one is not installed (with a warning).
    # use_bundle: if the directory is swapped between verification and the session, both are done again.
    engine = use_bundle(
        m.bundle,
        lambda b: open_engine(b, threads=m.threads, default_threads=default, spinning=spinning),
        signing_key=key,
    )
    if m.warmup:
        engine.warm_up(tuple({1} | {r.max_batch for r in config.routes if r.model == name}))
    return engine


def _decoder(engine: Engine, rc: RouteConfig) -> Decoder:
    task: Task = engine.task
    return task.decoder(engine.manifest, max_bytes=rc.max_payload_bytes)


def _max_packet(config: Config) -> int:
    """The largest packet we accept (MQTT v5 Maximum Packet Size): the largest payload a route takes, plus the
    longest topic and room for properties. The broker drops anything bigger before it reaches us."""
    return max(r.max_payload_bytes for r in config.routes) + MAX_TOPIC_BYTES + MAX_PROPERTY_BYTES


class Runtime:
    """Serves every route of a config until ``stop()`` (or SIGINT/SIGTERM under ``run``)."""

    def __init__(self, config: Config):
        self.config = config
        # ONNX Runtime settings and queue budgets come from the board this runs on (or the one the config names).
        self.profile = profile_for(config.device.profile)
        self.engines = {m.name: _load_engine(config, m.name, self.profile) for m in config.models}
        budget = self.profile.queue_budget_mb * (1 << 20) // len(config.routes)
        self.routes: list[Route] = []
        client_id = config.broker.client_id
        publish = self._publish_raw
        discovery = Discovery.for_config(config.homeassistant, node=client_id, publish=publish)
        for i, rc in enumerate(config.routes):
            engine = self.engines[rc.model]
            flt = TopicFilter(rc.subscribe) if rc.subscribe is not None else None
            wildcards = rc.wildcards
            snapshots = None
            if rc.snapshot is not None:
                if not hasattr(engine.task, "annotate"):
                    raise ConfigError(
                        f"snapshot needs an image model; {rc.model!r} is a {engine.task.name}",
                        key=f"routes[{i}].snapshot",
                    )
                snapshots = Snapshots(
                    TopicTemplate(rc.snapshot, wildcards=wildcards),
                    flt,
                    lambda topic, jpeg: self.link.publish(topic, jpeg, 0),
                )
            if rc.track and not hasattr(engine.task, "annotate"):
                raise ConfigError(
                    f"track needs a detector; {rc.model!r} is a {engine.task.name}", key=f"routes[{i}].track"
                )
            if rc.source is not None and not hasattr(_decoder(engine, rc), "decode_array"):
                raise ConfigError(
                    f"a video source needs an image model; {rc.model!r} is a {engine.task.name}",
                    key=f"routes[{i}].source",
                )
            route = Route(
                config=rc,
                engine=engine,
                filter=flt,
                publish=TopicTemplate(rc.publish, wildcards=wildcards),
                errors=TopicTemplate(rc.error_topic, wildcards=wildcards),
                reply_to=[TopicFilter(f) for f in rc.reply_to],
                decoder=_decoder(engine, rc),
                snapshots=snapshots,
                batcher=Batcher(
                    max_batch=rc.max_batch,
                    max_delay=rc.max_delay_ms / 1000,
                    max_queue=rc.max_queue or self.profile.max_queue,
                    # never below one payload: a route always takes at least the largest input it accepts
                    max_bytes=max(rc.max_queue_bytes or budget, rc.max_payload_bytes),
                    overflow=rc.overflow,
                    deadline=None if rc.deadline_ms is None else rc.deadline_ms / 1000,
                ),
                video=VideoInput(rc) if rc.source is not None else None,
                prefetch=hasattr(engine.task, "annotate"),
            )
            route.monitors = RouteMonitors(
                rc,
                route=route.name,
                engine=engine,
                shadow=self.engines.get(rc.shadow) if rc.shadow else None,
                publish=publish,
                client_id=client_id,
            )
            route.observers.append(route.monitors)
            if rc.track:
                route.observers.append(TrackingObserver(rc, publish=publish, node=client_id, discovery=discovery))
            self.routes.append(route)
        self._videos = [r for r in self.routes if r.video is not None]
        self._wake_fds = [r.video.fileno() for r in self._videos if r.video is not None]
        self._decode_ahead = DecodeAhead()
        self._model_thread = ModelThread()
        self._next_tick = 0.0
        self._route_cache: dict[str, list[Route]] = {}
        self._route_cache_bytes = 0
        self._started = time.monotonic()
        self._closing = False
        self._stop = threading.Event()
        self._next_route = 0  # round-robin start, so that no route is always served first
        self._ratelog = RateLimitedLog(log)
        self.announcer = Announcer(
            client_id=client_id,
            version=__version__,
            device=self.profile.name,
            publish=publish,
            discovery=discovery,
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
        subscribed = [r for r in self.routes if r.filter is not None]
        # Overlapping filters: the broker sends one copy of an input per subscription it matches, each at that
        # subscription's QoS. With MQTT v5 subscription identifiers each copy goes to its own route only
        # (served once per route, a QoS 1 copy by a QoS 1 route); without them, every copy to every route.
        overlapping = any(
            a.filter is not None and b.filter is not None and a.filter.overlaps(b.filter)
            for i, a in enumerate(subscribed)
            for b in subscribed[i + 1 :]
        )
        self._by_subscription = {i: r for i, r in enumerate(subscribed, start=1)} if overlapping else None
        self.link = Link(
            config.broker,
            on_message=self._accept,
            subscriptions=[(r.filter.text, r.config.qos) for r in subscribed if r.filter is not None]
            + [(self.control_topic, 1)],
            subscription_ids=overlapping,
            persistent=any(r.config.qos > 0 for r in self.routes),
            will=(self.status_topic, OFFLINE),
            max_packet=_max_packet(config),
        )
        self.link.on_connected.append(self._announce)

    # -- lifecycle --------------------------------------------------------------------------

    def _publish_raw(self, topic: str, payload: bytes, qos: int, retain: bool) -> object:
        return self.link.publish(topic, payload, qos, retain=retain)

    def start(self) -> None:
        self.link.connect()
        self.reloader.start()
        for route in self._videos:
            assert route.video is not None
            route.video.start()
        if self._metrics_every:
            self._metrics_due = time.monotonic() + self._metrics_every
        if self.config.metrics.prometheus_port:
            from ..observability.prometheus import serve_prometheus

            self._prometheus = serve_prometheus(
                self.snapshot, self.config.metrics.prometheus_host, self.config.metrics.prometheus_port
            )

    def stop(self) -> None:
        """Ask the loop to finish: it stops after the batch in hand; ``shutdown`` answers what it can."""
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
        link, stop, reloads = self.link, self._stop, self.reloader.outcomes
        wake = self._wake_fds
        while not stop.is_set():
            if not reloads.empty():
                self._swap(reloads.get())
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if now >= self._metrics_due:
                self.publish_metrics()
                self._metrics_due = now + (self._metrics_every or 0)
            if now >= self._next_tick:
                self._tick(now)
            link.poll(self._wait(now), wake=wake)
            if self._videos:
                self._take_frames()
            self._serve_round()

    def _meanwhile(self, timeout: float, wake: Sequence[int]) -> None:
        """While a model runs: new inputs are read (and frames decoded ahead), acknowledgements and keep-alives
        handled. No batch is served and no reload applied here, and a lost connection is re-made by the loop.
        Video sources wait for the loop: their slot holds the newest frame, and a file replayed as fast as it
        is served reads its next frame only when this one is taken (taken here, one would supersede the other)."""
        self.link.poll(timeout, reconnect=False, wake=wake)

    def _take_frames(self) -> None:
        """Each video source's newest frame, into its route's queue (never more than one waits in a slot)."""
        for route in self._videos:
            assert route.video is not None
            taken = route.video.take()
            if taken is not None:
                frame, captured = taken
                route.stats.received += 1
                frame.waiting = 1
                # Counted in bytes like any input: while results cannot leave, decoded frames (1-25 MB each)
                # must not pile up beyond the route's byte bound. Capped at the bound, so that one frame
                # always fits (a frame larger than the budget: only the newest waits).
                nbytes = min(frame.image.nbytes, route.batcher.max_bytes or frame.image.nbytes)
                for given_up, reason in route.batcher.offer(frame, captured, route.video.name, nbytes):
                    self._give_up(route, given_up, reason)
                if route.prefetch:
                    self._ahead(route, frame)

    def _tick(self, now: float) -> None:
        """About once a second: observers' timed work (tracks that ended), and sources whose state changed."""
        self._next_tick = now + 1.0
        for route in self.routes:
            for observer in route.observers:
                try:
                    observer.tick(now)
                except Exception:  # noqa: BLE001 - an observer must not stop the loop
                    self._ratelog.log("observer", "route %s: an observer failed", route.name, exc_info=True)
        self.announcer.tick()
        if any(r.video.changed() for r in self._videos if r.video is not None) and self.link.connected:
            self._announce()

    def _wait(self, now: float) -> float:
        """How long the loop may wait for the socket: until the next batch is due, at most half a second."""
        timeout = min(0.5, self._metrics_due - now)
        link = self.link
        for r in self.routes:
            due = r.batcher.next_due()
            # A due batch whose results would not fit cannot be served (backpressure): waiting for it would
            # spin the loop for as long as the broker is away. The socket (or a source) wakes the loop.
            if due is not None and link.has_room(r.config.max_batch):
                timeout = min(timeout, max(0.0, due - now))
        return max(0.0, timeout)

    def _serve_round(self, *, stopping: bool = False) -> bool:
        """Serve at most one due batch per route, servicing the socket between batches. True if any was served."""
        routes, link = self.routes, self.link
        n = len(routes)
        start, self._next_route = self._next_route, (self._next_route + 1) % n
        served = False
        for k in range(n):
            if self._stop.is_set() and not stopping:
                break
            route = routes[(start + k) % n]
            now = time.monotonic()
            if not route.batcher.ready(now) and not (stopping and len(route.batcher)):
                continue
            if not link.has_room(route.config.max_batch):
                break  # backpressure: results cannot leave, so none are made
            self._serve_batch(route, *route.batcher.take(now))
            served = True
            # Service the socket between batches: keep-alives, acknowledgements, and new inputs, read at once
            # so that the overload policy (drop_oldest, latest_only, deadlines) sees what is really waiting.
            link.poll(0)
        return served

    def shutdown(self) -> None:
        self.reloader.close()
        if self._prometheus is not None:
            self._prometheus.shutdown()
        # Answer what was accepted, for a moment; what is left is given up unacknowledged (redelivered).
        deadline = time.monotonic() + SHUTDOWN_SERVE_S
        while any(len(r.batcher) for r in self.routes) and time.monotonic() < deadline:
            if not self._serve_round(stopping=True):
                self.link.poll(0.01, reconnect=False)
        self._closing = True  # inputs still arriving are not taken (nor acknowledged)
        for route in self.routes:
            left = route.batcher.drain()
            if left:
                route.stats.dropped["shutdown"] += len(left)
            for inbound in left:
                self._forget_ahead(inbound)
            if route.video is not None:
                route.video.stop()
        self._decode_ahead.close()
        self._model_thread.close()
        for route in self.routes:
            for observer in route.observers:
                try:
                    observer.close()  # trackers publish their objects' end here
                except Exception:  # noqa: BLE001
                    self._ratelog.log("observer", "route %s: an observer failed to close", route.name, exc_info=True)
        if self.link.connected:
            if self._metrics_every:
                self.publish_metrics()  # the last word on what this run did
            self.announcer.offline()
            self.link.drain(SHUTDOWN_DRAIN_S)
        self.link.close()
        self.announcer.close()

    def _announce(self) -> None:
        sources = {r.video.name: r.video.status() for r in self._videos if r.video is not None}
        self.announcer.online({n: e.manifest.version for n, e in self.engines.items()}, sources=sources or None)
        for observer in (o for r in self.routes for o in r.observers if isinstance(o, TrackingObserver)):
            observer.republish()  # retained counts and occupancy, for a broker or Home Assistant that lost them

    def publish_metrics(self) -> None:
        """The stats as JSON on the metrics topic (QoS 0: the next one supersedes a lost one)."""
        self.link.publish(self.metrics_topic, encode({"ts": time.time(), **self.stats()}), 0)

    def _swap(self, outcome: Outcome) -> None:
        """Between two batches: serve the new model from now on, or say on the status topic why not."""
        name, engine, reason = outcome.model, outcome.engine, outcome.reason
        plans: list[tuple[Route, Decoder, Any]] = []
        if engine is not None:
            try:  # everything the routes need from the new model, before anything changes
                plans = self._plan_swap(name, engine)
            except Exception as err:  # noqa: BLE001 - a bundle that cannot serve this config leaves the old one
                engine, reason = None, f"the new bundle cannot serve this config: {first_line(err, 500)}"
                log.warning("model %s not reloaded: %s", name, reason)
        if engine is None:
            self.announcer.last_reload = {
                "model": name,
                "ok": False,
                "reason": reason,
                "serving": self.engines[name].manifest.version,
            }
        else:
            self.engines[name] = engine
            for route, decoder, drift in plans:
                route.engine, route.decoder = engine, decoder
                if route.monitors is not None:
                    route.monitors.model_changed(engine, drift)
            self.announcer.last_reload = {"model": name, "ok": True, "serving": engine.manifest.version}
            log.info("model %s reloaded: now serving version %s", name, engine.manifest.version)
        if self.link.connected:
            self._announce()

    def _plan_swap(self, name: str, engine: Engine) -> list[tuple[Route, Decoder, Any]]:
        """Per route serving model ``name``: its decoder and drift monitor for ``engine``. Raises if the new
        model cannot serve a route as configured (another task, a reference or shadow it does not match)."""
        serving = self.engines[name].task.name
        if engine.task.name != serving:
            raise ValueError(f"its task is {engine.task.name}, the routes serve a {serving}; restart to change it")
        return [
            (route, _decoder(engine, route.config), route.monitors.prepare(engine) if route.monitors else None)
            for route in self.routes
            if route.config.model == name
        ]

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
                queue_bytes=r.batcher.bytes,
                queue_max_bytes=r.batcher.max_bytes or 0,
                extra=self._route_extra(r),
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
            link={**self.link.counters, **self.link.state()},
        )

    def _route_extra(self, route: Route) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for observer in route.observers:
            try:
                extra.update(observer.snapshot())
            except Exception:  # noqa: BLE001
                self._ratelog.log("observer", "route %s: an observer's snapshot failed", route.name, exc_info=True)
        if route.video is not None:
            extra["source"] = route.video.status()
        if route.snapshots is not None and route.snapshots.failed:
            extra["snapshots_failed"] = route.snapshots.failed
        return extra

    def stats(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data: what the metrics topic publishes and ``run --stats-json`` writes."""
        return self.snapshot().as_dict()

    # -- inputs -----------------------------------------------------------------------------

    def _accept(self, inbound: Inbound) -> None:
        """Called by the link for every input: only queue it here; all work happens in ``_serve_round``."""
        try:
            self._take(inbound)
        except Exception:  # noqa: BLE001 - no input may raise out of the loop; this one is answered with an ack
            self._ratelog.log("accept", "input on %r could not be taken", inbound.topic[:200], exc_info=True)
            self.link.ack(inbound)

    def _routes_for(self, inbound: Inbound) -> list[Route]:
        by_subscription = self._by_subscription
        if by_subscription is not None and inbound.properties is not None:
            ids = getattr(inbound.properties, "SubscriptionIdentifier", None)
            if ids:  # this copy came through these subscriptions (the control topic's is not a route's)
                return [by_subscription[i] for i in ids if i in by_subscription]
        topic = inbound.topic
        routes = self._route_cache.get(topic)
        if routes is None:
            routes = [r for r in self.routes if r.filter is not None and r.filter.match(topic) is not None]
            cost = len(topic) + ENTRY_OVERHEAD
            if self._route_cache_bytes + cost <= _ROUTE_CACHE_BYTES:
                self._route_cache[topic] = routes
                self._route_cache_bytes += cost
        return routes

    def _take(self, inbound: Inbound) -> None:
        topic = inbound.topic
        if topic == self.control_topic:
            self.link.ack(inbound)  # a request for work, not work to answer
            parse_control(inbound.payload, self.reloader.request, retained=inbound.retain, log=self._ratelog)
            return
        routes = self._routes_for(inbound)
        if self._closing:  # not acknowledged: the broker redelivers a QoS 1 input to our next session
            for route in routes:
                route.stats.received += 1
                route.stats.dropped["shutdown"] += 1
            return
        if not routes:
            self.link.ack(inbound)
            return
        inbound.waiting = len(routes)
        now = time.monotonic()
        payload_size, property_size = len(inbound.payload), inbound.property_bytes
        # What it holds while it waits: payload, topic and unpacked properties, all the sender's to choose.
        size = payload_size + len(topic) + _PROPERTY_COST * property_size
        for route in routes:
            route.stats.received += 1
            limit = route.config.max_payload_bytes
            if payload_size > limit or property_size > MAX_PROPERTY_BYTES:  # refused before it is queued
                detail = (
                    f"payload is {payload_size} bytes; this route accepts at most {limit}"
                    if payload_size > limit
                    else f"MQTT properties are {property_size} bytes; at most {MAX_PROPERTY_BYTES} are accepted"
                )
                self._publish_error(route, inbound, PayloadError("too_large", detail))
                continue
            given_up = route.batcher.offer(inbound, now, topic, size)
            for item, reason in given_up:
                self._give_up(route, item, reason)
            if route.prefetch and inbound.waiting == 1 and all(item is not inbound for item, _ in given_up):
                self._ahead(route, inbound)

    def _answered(self, inbound: Inbound) -> None:
        """One route's answer to ``inbound`` is safe; when all are, the input is acknowledged."""
        inbound.waiting -= 1
        if inbound.waiting <= 0:
            self.link.ack(inbound)

    def _ahead(self, route: Route, inbound: Inbound) -> None:
        """Start decoding ``inbound`` on the decode thread, if the route has room for one more ahead."""
        if inbound.ahead is not None or route.ahead >= route.config.max_batch + 1:
            return
        decoder = route.decoder
        if isinstance(inbound, FrameInput):
            decode_array = getattr(decoder, "decode_array", None)
            if decode_array is None:
                return
            future = self._decode_ahead.submit(
                decode_array, inbound.image, id=inbound.frame_id, timestamp=inbound.timestamp
            )
        else:
            future = self._decode_ahead.submit(decoder.decode, inbound.payload, inbound.properties)
        inbound.ahead = (route, decoder, future)  # the route whose count it is in, whichever route serves it
        route.ahead += 1

    def _forget_ahead(self, inbound: Inbound) -> None:
        if inbound.ahead is not None:
            owner, _, future = inbound.ahead
            future.cancel()
            inbound.ahead = None
            owner.ahead -= 1

    def _give_up(self, route: Route, inbound: Inbound, reason: DropReason) -> None:
        """An input the overload policy gave up: counted by reason; ``reject`` also answers it."""
        self._forget_ahead(inbound)
        if reason == "rejected":
            self._publish_error(route, inbound, PayloadError("overloaded", "the route's queue is full; input refused"))
            return
        route.stats.dropped[reason] += 1
        self._answered(inbound)

    # -- serving ----------------------------------------------------------------------------

    def _serve_batch(self, route: Route, batch: list[Pending[Inbound]], expired: list[Inbound]) -> None:
        for inbound in expired:
            self._give_up(route, inbound, "expired")
        if not batch:
            return
        stats = route.stats
        t0 = time.monotonic()
        decode = route.decoder.decode
        decode_array = getattr(route.decoder, "decode_array", None) if route.video is not None else None
        rows: list[np.ndarray] = []
        accepted: list[tuple[Pending[Inbound], Any, Any]] = []
        for p in batch:
            inbound = p.item
            ahead, inbound.ahead = inbound.ahead, None
            try:
                if ahead is not None:
                    ahead[0].ahead -= 1
                    self._decode_ahead.used += 1
                if ahead is not None and ahead[1] is route.decoder:  # decoded while the last batch ran
                    msg_id, row, meta = ahead[2].result()
                elif decode_array is not None and isinstance(inbound, FrameInput):  # already decoded by the source
                    msg_id, row, meta = decode_array(inbound.image, id=inbound.frame_id, timestamp=inbound.timestamp)
                else:
                    msg_id, row, meta = decode(inbound.payload, inbound.properties)
            except PayloadError as err:
                self._publish_error(route, inbound, err)
                continue
            except Exception as err:  # noqa: BLE001 - a decoder bug must cost one input, not the loop
                self._ratelog.log("decode", "decoding an input of route %s failed", route.name, exc_info=True)
                self._publish_error(route, inbound, PayloadError("internal", f"the input could not be decoded: {err}"))
                continue
            rows.append(row)
            accepted.append((p, msg_id, meta))
        if not rows:
            return
        engine = route.engine
        if route.prefetch:  # the next batch's frames are decoded while this one is in the model
            for nxt in route.batcher.head(route.config.max_batch):
                if nxt.waiting == 1:  # an input other routes wait for too is decoded by each in its turn
                    self._ahead(route, nxt)
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
                self._publish_error(route, inbound, answer)
                continue
            served += 1
            body = {"id": msg_id, **base, **answer}
            if inbound.dup:  # a redelivery: its result may already have been published once
                body["repeat"] = True
            self._answer(route, inbound, body, answer)
        self.link.flush_writes()
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

    def _infer(
        self, route: Route, rows: list[np.ndarray], metas: list[Any]
    ) -> tuple[list[dict[str, Any] | PayloadError], np.ndarray | None, dict[str, np.ndarray] | None]:
        """Results for a batch (with the stacked rows and raw outputs, for observers); if the batch as a whole
        fails (rows that cannot be stacked, a row the model refuses), row by row, so that one bad row fails
        alone (and observers get no stacked batch)."""
        engine = route.engine
        try:
            stacked = np.stack(rows)
            if route.prefetch:  # a CNN's tens of milliseconds: the socket is read meanwhile (prefetch.py)
                outputs = self._model_thread.run(engine.run, stacked, meanwhile=self._meanwhile)
            else:
                outputs = engine.run(stacked)
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
                (result,) = engine.task.results(engine.manifest, engine.run(row[np.newaxis]), [meta])
                answers.append(result)
            except Exception as err:  # noqa: BLE001
                self._ratelog.log("infer", "inference failed on route %s: %s", route.name, first_line(err, 500))
                answers.append(PayloadError("inference_failed", first_line(err, 500)))
        return answers, None, None

    def _target(self, route: Route, template: TopicTemplate, inbound: Inbound) -> tuple[str, Any, bool]:
        """(topic, properties, own): where an answer goes. A response topic is honoured only inside the
        route's ``reply_to``; otherwise the route's own topic, and the refusal is counted."""
        props_in = inbound.properties
        response = getattr(props_in, "ResponseTopic", None) if props_in is not None else None
        if response:
            if any(f.match(response) is not None for f in route.reply_to):
                corr = getattr(props_in, "CorrelationData", None)
                return response, publish_properties(correlation=corr), False
            route.stats.reply_to_refused += 1
        key = (template is route.publish, inbound.topic)
        topic = route.rendered.get(key)
        if topic is None:
            captures = route.captures(inbound.topic) if template.needs_captures else []
            topic = template.render(captures, inbound.topic)
            size = len(topic) + len(inbound.topic) + ENTRY_OVERHEAD
            if route.rendered_bytes + size <= _RENDERED_BYTES:
                route.rendered[key] = topic
                route.rendered_bytes += size
        return topic, None, True

    def _answer(self, route: Route, inbound: Inbound, body: dict[str, Any], result: dict[str, Any]) -> None:
        try:
            payload = encode(body)
        except TypeError as err:  # orjson's JSONEncodeError: one input's error, never the loop's
            self._ratelog.log("encode", "route %s: a result could not be encoded", route.name, exc_info=True)
            failed = PayloadError("internal", f"the result could not be encoded: {first_line(err, 500)}")
            self._publish_error(route, inbound, failed)
            return
        topic, props, own = self._target(route, route.publish, inbound)
        if not self._send(route, inbound, topic, payload, props):
            return
        if own:  # discovery only ever for the route's own result topics
            self.announcer.result_topic(topic, route.engine.manifest)
        snapshots = route.snapshots
        annotate = getattr(route.engine.task, "annotate", None)
        if snapshots is not None and annotate is not None:
            frame = inbound.image if isinstance(inbound, FrameInput) else inbound.payload
            snapshots.publish(annotate, inbound.topic, frame, result)

    def _send(self, route: Route, inbound: Inbound, topic: str, payload: bytes, props: Any) -> bool:
        if not inbound.qos and not self.link.has_room():
            # An answer to a QoS 0 input may be lost as the input may; it may never grow the outgoing queue
            # past its bound (errors are answered on arrival, before backpressure can hold them back).
            route.stats.dropped["outgoing_full"] += 1
            self._answered(inbound)
            return False
        on_safe = functools.partial(self._answered, inbound)
        # A QoS 1 input is answered at QoS 1 even on a QoS 0 route (it can reach one through an overlapping
        # subscription): it is acknowledged only once its answer is acknowledged.
        qos = route.config.qos or inbound.qos
        if self.link.publish(topic, payload, qos, properties=props, on_safe=on_safe):
            return True
        # Unpublishable (a topic too long or with wildcards, rendered from the input's topic): counted and
        # acknowledged, or it would come back after every restart.
        route.stats.dropped["bad_topic"] += 1
        self._ratelog.log(
            "bad-topic",
            "route %s: an input on %r has no publishable answer topic (%d bytes); "
            "counted as bad_topic and acknowledged",
            route.name,
            inbound.topic[:100],
            len(topic),
        )
        self._answered(inbound)
        return False

    def _publish_error(self, route: Route, inbound: Inbound, err: PayloadError) -> None:
        route.stats.errors[err.code] += 1
        # What an operator needs to find the input, at most once per interval per route and code: anyone can
        # send bad inputs as fast as the broker takes them, and logs live on an SD card. Every one is counted
        # and answered on the error topic; overload is counted only.
        if err.code != "overloaded":
            shown_id = _shown_id(err.id)
            self._ratelog.log(
                f"refused:{route.name}:{err.code}",  # routes and codes are fixed by the config and the code
                "route %s: input %r from %s refused: %s",
                route.name,
                shown_id,
                inbound.topic[:200],
                err,
                extra={"route": route.name, "id": shown_id, "code": err.code, "topic": inbound.topic[:200]},
            )
        topic, props, _ = self._target(route, route.errors, inbound)
        body = {"id": err.id, "error": err.code, "detail": err.detail, "topic": inbound.topic}
        try:
            payload = encode(body)
        except TypeError:  # an id orjson cannot write back; the error itself still goes out
            payload = encode({**body, "id": None})
        self._send(route, inbound, topic, payload, props)


def _shown_id(msg_id: object) -> object:
    """An input's id as a log line shows it: numbers as they are, anything else cut to 100 characters."""
    if msg_id is None or isinstance(msg_id, (int, float)):
        return msg_id
    return (msg_id if isinstance(msg_id, str) else repr(msg_id))[:100]
