"""Inputs in: from the link (and video sources) into the routes' queues, or refused at the door.

Everything here runs on the loop's thread, in the link's read: only queue, never serve. An input reaches the
routes whose filter matches its topic (with MQTT v5 subscription identifiers, the one route whose
subscription this copy came through, and only if that route's filter matches the topic: a resumed session
may still deliver through yesterday's subscriptions). Too large a payload or too many properties are refused
before anything is queued; a full queue gives up what its overload policy says (see responder.py for how a
given-up input is answered). Image routes start decoding the next frames while the model runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import PayloadError
from ..mqtt._paho import MAX_PROPERTY_BYTES
from ..mqtt.delivery import Inbound
from ..mqtt.protocol import Link
from ..observability.ratelog import RateLimitedLog
from ..vocabulary import DropReason
from .bounded import ENTRY_OVERHEAD
from .prefetch import DecodeAhead
from .responder import Responder
from .routes import Route
from .video import FrameInput

__all__ = ["Ingress", "PROPERTY_COST"]

log = logging.getLogger("edge_runtime")

# Unpacked, MQTT v5 properties cost up to ~30x their wire size in Python objects (a tuple of two str per user
# property), which is what an input's size in the queue's byte bound counts.
PROPERTY_COST = 32

# Input topics remembered with the routes they match, at most (bytes).
_ROUTE_CACHE_BYTES = 4 << 20


class Ingress:
    """Takes inputs from the link and video sources into the routes' batchers."""

    def __init__(
        self,
        routes: list[Route],
        *,
        link: Link,
        responder: Responder,
        control_topic: str,
        on_control: Callable[[Inbound], None],
        decode_ahead: DecodeAhead,
        ratelog: RateLimitedLog,
    ):
        self.routes = routes
        self.link = link
        self.responder = responder
        self.control_topic = control_topic
        self._on_control = on_control
        self.decode_ahead = decode_ahead
        self._ratelog = ratelog
        self._by_subscription = {r.subscription_id: r for r in routes if r.subscription_id is not None}
        self._route_cache: dict[str, list[Route]] = {}
        self._route_cache_bytes = 0
        self.closing = False  # set at shutdown: inputs still arriving are not taken (nor acknowledged)

    def accept(self, inbound: Inbound) -> None:
        """Called by the link for every input: only queue it here; all work happens in the loop's rounds."""
        try:
            self._take(inbound)
        except Exception:  # noqa: BLE001 - no input may raise out of the loop; this one is answered with an ack
            self._ratelog.log("accept", "input on %r could not be taken", inbound.topic[:200], exc_info=True)
            self.link.ack(inbound)

    def routes_for(self, inbound: Inbound) -> list[Route]:
        topic = inbound.topic
        if self._by_subscription and inbound.properties is not None:
            ids = getattr(inbound.properties, "SubscriptionIdentifier", None)
            if ids:  # this copy came through these subscriptions (the control topic's is not a route's)
                named = [self._by_subscription[i] for i in ids if i in self._by_subscription]
                # An identifier is trusted only where its route's filter matches the topic: a session resumed
                # from another config numbers its subscriptions differently.
                return [r for r in named if r.filter is not None and r.filter.match(topic) is not None]
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
            self._on_control(inbound)
            return
        routes = self.routes_for(inbound)
        if self.closing:  # not acknowledged: the broker redelivers a QoS 1 input to our next session
            for route in routes:
                route.stats.received += 1
                route.stats.dropped["shutdown"] += 1
            return
        if not routes:
            self.link.ack(inbound)
            return
        inbound.waiting = len(routes)
        if inbound.retain:
            # Retained: published before we subscribed (MQTT v3.1.1 has no Retain Handling to refuse it), so
            # answered as what it is, a repeat.
            inbound.dup = True
        payload_size, property_size = len(inbound.payload), inbound.property_bytes
        # What it holds while it waits: payload, topic and unpacked properties, all the sender's to choose.
        size = payload_size + len(topic) + PROPERTY_COST * property_size
        for route in routes:
            route.stats.received += 1
            limit = route.config.max_payload_bytes
            if payload_size > limit or property_size > MAX_PROPERTY_BYTES:  # refused before it is queued
                detail = (
                    f"payload is {payload_size} bytes; this route accepts at most {limit}"
                    if payload_size > limit
                    else f"MQTT properties are {property_size} bytes; at most {MAX_PROPERTY_BYTES} are accepted"
                )
                self.responder.error(route, inbound, PayloadError("too_large", detail))
                continue
            self._offer(route, inbound, size)

    def _offer(self, route: Route, inbound: Inbound, nbytes: int) -> None:
        given_up = route.batcher.offer(inbound, time.monotonic(), inbound.topic, nbytes)
        for item, reason in given_up:
            self.give_up(route, item, reason)
        if route.prefetch and inbound.waiting == 1 and all(item is not inbound for item, _ in given_up):
            self.start_ahead(route, inbound)

    def take_frames(self, videos: list[Route]) -> None:
        """Each video source's newest frame, into its route's queue (never more than one waits in a slot)."""
        for route in videos:
            assert route.video is not None
            taken = route.video.take()
            if taken is None:
                continue
            frame, captured = taken
            route.stats.received += 1
            frame.waiting = 1
            # Counted in bytes like any input: while results cannot leave, decoded frames (1-25 MB each) must
            # not pile up beyond the route's byte bound. Capped at the bound, so that one frame always fits (a
            # frame larger than the budget: only the newest waits).
            nbytes = min(frame.image.nbytes, route.batcher.max_bytes or frame.image.nbytes)
            for given_up, reason in route.batcher.offer(frame, captured, route.video.name, nbytes):
                self.give_up(route, given_up, reason)
            if route.prefetch and frame.image.size:
                self.start_ahead(route, frame)

    def give_up(self, route: Route, inbound: Inbound, reason: DropReason) -> None:
        """An input the overload policy gave up: its decode ahead cancelled, answered, and its payload let go
        unless another route still waits to serve it."""
        self.forget_ahead(inbound)
        if inbound.waiting <= 1:  # no other route still has it to serve (one input can wait in several queues)
            inbound.payload = b""  # nothing needs it now, and it may wait for its answer's acknowledgement
            if isinstance(inbound, FrameInput):
                inbound.release()
        self.responder.drop(route, inbound, reason)

    # -- decoding ahead (image routes) ---------------------------------------------------------------

    def start_ahead(self, route: Route, inbound: Inbound) -> None:
        """Start decoding ``inbound`` on the decode thread, if the route has room for one more ahead (in count,
        and in its byte bound: a decoded frame is counted there until it is used)."""
        if inbound.ahead is not None or route.ahead >= route.config.max_batch + 1:
            return
        decoder = route.decoder
        nbytes = int(getattr(decoder, "row_nbytes", 0))
        if not route.batcher.reserve(nbytes):
            return
        if isinstance(inbound, FrameInput):
            decode_array = getattr(decoder, "decode_array", None)
            if decode_array is None:
                route.batcher.release(nbytes)
                return
            future = self.decode_ahead.submit(
                decode_array, inbound.image, id=inbound.frame_id, timestamp=inbound.timestamp
            )
        else:
            future = self.decode_ahead.submit(decoder.decode, inbound.payload, inbound.properties)
        inbound.ahead = (route, decoder, future, nbytes)  # the route whose count it is in, whichever serves it
        route.ahead += 1

    def forget_ahead(self, inbound: Inbound) -> None:
        if inbound.ahead is not None:
            owner, _, future, nbytes = inbound.ahead
            future.cancel()
            inbound.ahead = None
            owner.ahead -= 1
            owner.batcher.release(nbytes)
