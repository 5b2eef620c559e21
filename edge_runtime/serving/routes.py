"""Routes: what a config's ``[[routes]]`` become once their models are loaded, checked against those models.

A route ties an input (an MQTT filter, or a video source) to a model, a batcher, answer topics and the
observers of its batches. Everything a config asks of a model that the model cannot do (snapshots or
tracking on a model that draws no boxes, a video source for a model that takes no images) is refused
here, at start, with the key that asked for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from devices.profiles import DeviceProfile

from ..config import Config, RouteConfig
from ..engines import InferenceEngine as Engine
from ..errors import ConfigError
from ..mqtt.delivery import Inbound
from ..mqtt.protocol import Subscription
from ..observability.metrics import RouteStats
from ..tasks import Decoder
from ..topics import TopicFilter, TopicTemplate
from .batcher import Batcher
from .discovery import Discovery
from .models import route_decoder
from .monitors import RouteMonitors
from .observers import BatchObserver
from .snapshots import Snapshots
from .video import TrackingObserver, VideoInput

__all__ = ["Route", "build_routes", "subscriptions", "receive_maximum", "ROW_ALLOWANCE"]

Publish = Callable[[str, bytes, int, bool], object]  # (topic, payload, qos, retain)

# What an input costs beside its payload when its route's byte bound is turned into a count of inputs (the
# Receive Maximum): a topic and a few properties.
ROW_ALLOWANCE = 1024


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
    subscription_id: int | None = None  # MQTT v5 Subscription Identifier, where filters overlap

    @property
    def name(self) -> str:
        return self.config.name

    def captures(self, topic: str) -> list[str]:
        """What ``{1}``.. in the route's topics stand for: the filter's wildcard matches, or a source's name."""
        if self.filter is None:
            return [topic]
        return self.filter.match(topic) or []


def build_routes(
    config: Config,
    engines: dict[str, Engine],
    profile: DeviceProfile,
    *,
    shadows: dict[int, Engine],
    publish: Publish,
    snapshot: Callable[[str, bytes], object],
    ready: Callable[[], bool],
    client_id: str,
    discovery: Discovery | None,
) -> list[Route]:
    """The config's routes, each checked against its model. ``shadows``: route index -> the engine instance its
    shadow model runs (its own, see models.py). ``publish`` sends side messages (alerts, events), ``snapshot``
    a JPEG, while ``ready()`` (connected, room to send) is true."""
    budget = profile.queue_budget_mb * (1 << 20) // len(config.routes)
    routes: list[Route] = []
    for i, rc in enumerate(config.routes):
        engine = engines[rc.model]
        flt = TopicFilter(rc.subscribe) if rc.subscribe is not None else None
        wildcards = rc.wildcards
        snapshots = None
        if rc.snapshot is not None:
            if not hasattr(engine.task, "annotate"):
                raise ConfigError(
                    f"snapshot needs an image model; {rc.model!r} is a {engine.task.name}",
                    key=f"routes[{i}].snapshot",
                )
            snapshots = Snapshots(TopicTemplate(rc.snapshot, wildcards=wildcards), flt, snapshot, ready=ready)
        if rc.track and not hasattr(engine.task, "annotate"):
            raise ConfigError(f"track needs a detector; {rc.model!r} is a {engine.task.name}", key=f"routes[{i}].track")
        decoder = route_decoder(engine, rc)
        if rc.source is not None and not hasattr(decoder, "decode_array"):
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
            decoder=decoder,
            snapshots=snapshots,
            batcher=Batcher(
                max_batch=rc.max_batch,
                max_delay=rc.max_delay_ms / 1000,
                max_queue=rc.max_queue or profile.max_queue,
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
            shadow=shadows.get(i),
            publish=publish,
            client_id=client_id,
        )
        route.observers.append(route.monitors)
        if rc.track:
            route.observers.append(TrackingObserver(rc, publish=publish, node=client_id, discovery=discovery))
        routes.append(route)
    _number_overlapping(routes)
    return routes


def _number_overlapping(routes: list[Route]) -> None:
    """Overlapping filters: the broker sends one copy of an input per subscription it matches, each at that
    subscription's QoS. With MQTT v5 subscription identifiers each copy goes to its own route only (served once
    per route, a QoS 1 copy by a QoS 1 route); without them, every copy to every matching route."""
    subscribed = [r for r in routes if r.filter is not None]
    overlapping = any(
        a.filter is not None and b.filter is not None and a.filter.overlaps(b.filter)
        for i, a in enumerate(subscribed)
        for b in subscribed[i + 1 :]
    )
    if overlapping:
        for n, route in enumerate(subscribed, start=1):
            route.subscription_id = n


def subscriptions(routes: list[Route]) -> list[Subscription]:
    return [Subscription(r.filter.text, r.config.qos, r.subscription_id) for r in routes if r.filter is not None]


def receive_maximum(config: Config, routes: list[Route]) -> int:
    """How many unacknowledged QoS 1 inputs the broker may send us: never more than every QoS 1 route can hold
    waiting, by count and by bytes (its byte bound over its largest input), so that a backlog is paced by the
    broker instead of overflowing a queue. A config's own ``receive_maximum`` is an upper bound."""
    limit = config.broker.receive_maximum
    for r in routes:
        if r.filter is not None and r.config.qos:
            by_bytes = (r.batcher.max_bytes or 0) // (r.config.max_payload_bytes + ROW_ALLOWANCE)
            limit = min(limit, r.batcher.max_queue, max(1, by_bytes))
    return max(1, limit)
