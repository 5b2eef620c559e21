"""The runtime: routes wired from the MQTT link through decode, batch, infer and encode back to the link.

Everything runs in one thread (see mqtt/link.py for why). Each turn of the loop waits for the socket no
longer than the nearest batch deadline, takes in what has arrived, and serves the routes that are due,
one batch per route per round (a flooded route cannot starve another), servicing the socket between
batches (keep-alives, the broker's acknowledgements, new inputs) and checking the stop flag.

The parts, each with one job: ``routes`` (a config's routes built and checked against their models),
``ingress`` (inputs into the routes' queues, or refused at the door), ``execute`` (one batch: decode, infer,
answer, observe), ``responder`` (where answers go, and when an input may be acknowledged). This module holds
the loop, the lifecycle (start, shutdown, reloads) and what is reported (status, metrics). The link comes
through a small protocol (mqtt/protocol.py), so that all of it can be driven without a broker.

Two promises are kept:

- **Nothing acknowledged before its result is safe** (responder.py). When results cannot leave (the outgoing
  queue is full), no batch is served: QoS 1 inputs wait unacknowledged, and the broker holds the rest, up to a
  Receive Maximum derived from the routes' queue bounds (routes.receive_maximum), so that a backlog is paced
  by the broker, not dropped.
- **Every client is a stranger.** No single input can raise out of the loop (a failing batch is served row by
  row), decide where results go (response topics only within a route's ``reply_to``), publish on a topic MQTT
  does not allow, or hold more memory than the route's byte bound.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from devices.detect import profile_for

from .. import __version__
from ..config import Config
from ..engines import InferenceEngine as Engine
from ..errors import first_line
from ..mqtt._paho import MAX_PROPERTY_BYTES
from ..mqtt.delivery import Inbound
from ..mqtt.link import MqttLink
from ..mqtt.protocol import Link, LinkFactory, LinkSpec, Subscription
from ..observability.metrics import RouteSnapshot, RuntimeSnapshot
from ..observability.ratelog import RateLimitedLog
from ..tasks import Decoder
from ..tasks.codecs import encode
from ..topics import MAX_TOPIC_BYTES
from .announce import OFFLINE, Announcer
from .control import parse_control
from .discovery import Discovery
from .execute import BatchExecutor
from .fleet_host import FleetHost, fleet_config
from .ingress import Ingress
from .models import load_model, route_decoder
from .prefetch import DecodeAhead, ModelThread
from .reload import Outcome, Reloader
from .responder import Responder
from .routes import ROW_ALLOWANCE, Route, build_routes, receive_maximum, subscriptions
from .state import session_file, state_dir
from .video import TrackingObserver

__all__ = ["Runtime"]

log = logging.getLogger("edge_runtime")

# How long a stopping runtime goes on serving what it has already accepted before it gives the rest up
# (unacknowledged: the broker redelivers QoS 1 inputs), and how long it then waits for the broker to
# acknowledge what it published.
SHUTDOWN_SERVE_S = 0.5
SHUTDOWN_DRAIN_S = 2.0

# Packets read from the socket per poll at most, when nothing holds reading back.
_READ_BUDGET = 512


def _max_packet(config: Config) -> int:
    """The largest packet we accept (MQTT v5 Maximum Packet Size): the largest payload a route takes, plus the
    longest topic and room for properties. The broker drops anything bigger before it reaches us."""
    return max(r.max_payload_bytes for r in config.routes) + MAX_TOPIC_BYTES + MAX_PROPERTY_BYTES


class Runtime:
    """Serves every route of a config until ``stop()`` (or SIGINT/SIGTERM under ``run``).

    ``link`` makes the MQTT link from what the runtime asks of it (default: a real connection, ``MqttLink``).
    """

    def __init__(self, config: Config, *, link: LinkFactory = MqttLink.from_spec):
        configured = config
        config = fleet_config(config)  # [fleet]: each managed model serves its live release (fleet_host.py)
        self.config = config
        # ONNX Runtime settings and queue budgets come from the board this runs on (or the one the config names).
        self.profile = profile_for(config.device.profile)
        loaded = {m.name: load_model(config, m.name, self.profile) for m in config.models}
        self.engines = {name: model.engine for name, model in loaded.items()}
        client_id = config.broker.client_id
        discovery = Discovery.for_config(
            config.homeassistant, node=client_id, publish=self._publish_raw, state_dir=state_dir(config)
        )
        self._ratelog = RateLimitedLog(log)
        self.routes: list[Route] = build_routes(
            config,
            self.engines,
            self.profile,
            shadows={i: loaded[rc.shadow].shadows[i] for i, rc in enumerate(config.routes) if rc.shadow},
            publish=self._publish_raw,
            snapshot=lambda topic, jpeg: self.link.publish(topic, jpeg, 0),
            ready=lambda: self.link.connected and self.link.has_room(),
            client_id=client_id,
            discovery=discovery,
        )
        self._videos = [r for r in self.routes if r.video is not None]
        self._reliable = [r for r in self.routes if r.filter is not None and r.config.qos]  # QoS 1 inputs come here
        self._widest_batch = max(r.config.max_batch for r in self.routes)
        self._wake_fds = [r.video.fileno() for r in self._videos if r.video is not None]
        self._next_tick = 0.0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._next_route = 0  # round-robin start, so that no route is always served first
        self.announcer = Announcer(
            client_id=client_id,
            version=__version__,
            device=self.profile.name,
            publish=self._publish_raw,
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
            lambda name: load_model(self.config, name, self.profile),  # a promoted release changes config
            watched={m.name for m in config.models if m.watch},
            serving=self.engines,
        )
        persistent = any(r.config.qos > 0 for r in self.routes)
        self.link: Link = link(
            LinkSpec(
                broker=config.broker,
                on_message=self._accept,
                subscriptions=[*subscriptions(self.routes), *self._control_subscription()],
                persistent=persistent,
                will=(self.status_topic, OFFLINE),
                max_packet=_max_packet(config),
                receive_maximum=receive_maximum(config, self.routes),
                max_outgoing_bytes=config.broker.max_outgoing_bytes or self.profile.outgoing_budget_mb << 20,
                state_file=session_file(config) if persistent else None,
                on_connected=self._announce,
                read_budget=self._read_budget,
            )
        )
        self.responder = Responder(self.link, self.announcer, self._ratelog)
        self.ingress = Ingress(
            self.routes,
            link=self.link,
            responder=self.responder,
            control_topic=self.control_topic,
            on_control=self._control,
            decode_ahead=DecodeAhead(),
            ratelog=self._ratelog,
        )
        self._model_thread = ModelThread()
        self.executor = BatchExecutor(
            ingress=self.ingress,
            responder=self.responder,
            model_thread=self._model_thread,
            meanwhile=self._meanwhile,
            flush=self.link.flush_writes,
            ratelog=self._ratelog,
        )
        self.fleet = FleetHost(self, configured) if configured.fleet is not None else None

    def _control_subscription(self) -> list[Subscription]:
        return [Subscription(self.control_topic, 1)]

    # -- lifecycle --------------------------------------------------------------------------

    def _publish_raw(self, topic: str, payload: bytes, qos: int, retain: bool) -> object:
        return self.link.publish(topic, payload, qos, retain=retain)

    def _accept(self, inbound: Inbound) -> None:
        self.ingress.accept(inbound)

    def _control(self, inbound: Inbound) -> None:
        parse_control(inbound.payload, self.reloader.request, retained=inbound.retain, log=self._ratelog)

    def start(self) -> None:
        """Connect, and serve until every subscription is in place: a resumed session's inputs arrive before the
        SUBACK, and only serving makes room to read the rest (see _read_budget)."""
        self.link.connect()
        deadline = time.monotonic() + self.config.broker.connect_timeout_s
        while not self.link.subscribed and self.link.connected and time.monotonic() < deadline:
            self.turn()
        self.reloader.start()
        if self.fleet is not None:
            self.fleet.start()
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
        while not self._stop.is_set():
            if end is not None and time.monotonic() >= end:
                break
            self.turn()

    def turn(self) -> None:
        """One turn of the loop: reloads, timed work, the socket (waiting until the next batch is due), a round."""
        reloads = self.reloader.outcomes
        if not reloads.empty():
            self._swap(reloads.get())
        if self.fleet is not None:
            self.fleet.apply_pending()  # a release's shadow or promotion, between two batches like a reload
        now = time.monotonic()
        if now >= self._metrics_due:
            self.publish_metrics()
            self._metrics_due = now + (self._metrics_every or 0)
        if now >= self._next_tick:
            self._tick(now)
        self.link.poll(self._wait(now), wake=self._wake_fds)
        if self._videos:
            self.ingress.take_frames(self._videos)
        self._serve_round()

    def _meanwhile(self, timeout: float, wake: Sequence[int]) -> None:
        """While a model runs: new inputs are read (and frames decoded ahead), acknowledgements and keep-alives
        handled. No batch is served and no reload applied here, and a lost connection is re-made by the loop.
        Video sources wait for the loop: their slot holds the newest frame, and a file replayed as fast as it
        is served reads its next frame only when this one is taken (taken here, one would supersede the other)."""
        self.link.poll(timeout, reconnect=False, wake=wake)

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

    def _read_budget(self) -> int:
        """How many packets the link may read now: as many QoS 1 inputs as every QoS 1 route still has room for.

        The Receive Maximum (routes.receive_maximum) already asks the broker for no more; this holds where a
        broker sends more anyway (Mosquitto 2.0 does, for a resumed session's queued messages, once
        acknowledgements flow: eclipse-mosquitto #2301). Unread, they wait in TCP and the broker is held back,
        instead of being dropped here. Only while batches can be served: when results cannot leave, the socket
        must be read for the broker's acknowledgements, and overflow is answered as usual (responder.py).
        """
        budget = _READ_BUDGET
        if not self._reliable or self.ingress.closing or not self.link.has_room(self._widest_batch):
            return budget
        for route in self._reliable:
            budget = min(budget, route.batcher.room(route.config.max_payload_bytes + ROW_ALLOWANCE))
        return budget

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
            self.executor.serve(route, *route.batcher.take(now))
            served = True
            # Service the socket between batches: keep-alives, acknowledgements, and new inputs, read at once
            # so that the overload policy (drop_oldest, latest_only, deadlines) sees what is really waiting.
            link.poll(0)
        return served

    def shutdown(self) -> None:
        """Answer what was accepted, for a moment; give the rest up unacknowledged (the broker redelivers it);
        wait for the broker to take what was published; close. Each step is guarded: a failing one must not
        leave the link open."""
        try:
            self._shutdown_serving()
        finally:
            try:
                if self.fleet is not None:
                    self.fleet.close()  # its own connection, closed after the answers so as never to delay them
            finally:
                self.link.close()
                self.announcer.close()  # what was announced to Home Assistant, saved for the next run

    def _shutdown_serving(self) -> None:
        self.reloader.close()
        if self._prometheus is not None:
            self._prometheus.shutdown()
        deadline = time.monotonic() + SHUTDOWN_SERVE_S
        while any(len(r.batcher) for r in self.routes) and time.monotonic() < deadline:
            if not self._serve_round(stopping=True):
                self.link.poll(0.01, reconnect=False)
        self.ingress.closing = True  # inputs still arriving are not taken (nor acknowledged)
        for route in self.routes:
            left = route.batcher.drain()
            if left:
                route.stats.dropped["shutdown"] += len(left)
            for inbound in left:
                self.ingress.forget_ahead(inbound)
            if route.video is not None:
                route.video.stop()
        self.ingress.decode_ahead.close()
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
        if outcome.unchanged:
            version = self.engines[name].manifest.version
            self.announcer.last_reload = {"model": name, "ok": True, "unchanged": True, "serving": version}
            if self.link.connected:
                self._announce()
            return
        if engine is not None:
            try:  # everything the routes need from the new model, before anything changes
                plans = self._plan_swap(name, engine)
                for i, shadow in outcome.shadows.items():
                    if (monitors := self.routes[i].monitors) is not None:
                        monitors.check_shadow(shadow)
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
            for i, shadow in outcome.shadows.items():  # the routes running this model as their shadow
                if (monitors := self.routes[i].monitors) is not None:
                    monitors.shadow_changed(shadow)
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
            (route, route_decoder(engine, route.config), route.monitors.prepare(engine) if route.monitors else None)
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
        if route.snapshots is not None and route.snapshots.skipped:
            extra["snapshots_skipped"] = route.snapshots.skipped
        return extra

    def stats(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data: what the metrics topic publishes and ``run --stats-json`` writes."""
        return self.snapshot().as_dict()
