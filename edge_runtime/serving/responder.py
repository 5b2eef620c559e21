"""Answers: where each goes, what it says, and when the input it answers may be acknowledged.

This is the one place the acknowledgement promise is kept. Every route an input reaches *settles* it exactly
once, and the input is acknowledged when every route has:

- by a **result** or an **error** the broker has acknowledged (QoS 1) or that was written (QoS 0);
- by a **drop** (overload, superseded, expired): a QoS 1 input is answered with an error whose code says why,
  and settles when that error is safe; a QoS 0 one is counted only (it may be lost as it may be lost on the
  way in);
- when an answer cannot be published (the broker refuses it for good, it is larger than the broker takes, its
  topic is not one MQTT allows): the input is answered with a short error instead; only if that error cannot
  be published either does the input settle unanswered, counted as ``unanswerable`` (or ``bad_topic``) and
  logged. Holding it would bring it back at every reconnect, forever.

An input that a stopping runtime gives up settles nothing: it stays unacknowledged and the broker delivers it
again to the next session.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ..errors import PayloadError, first_line
from ..mqtt.delivery import Inbound, Refusal
from ..mqtt.link import publish_properties
from ..mqtt.protocol import Link
from ..observability.ratelog import RateLimitedLog
from ..tasks.codecs import encode
from ..topics import TopicTemplate
from ..vocabulary import DropReason, ErrorCode
from .announce import Announcer
from .bounded import ENTRY_OVERHEAD
from .routes import Route
from .video import FrameInput

__all__ = ["Responder", "ERROR_TOPIC_ECHO"]

log = logging.getLogger("edge_runtime")

# Rendered answer topics per route, at most (bytes).
_RENDERED_BYTES = 1 << 20
# An error message repeats the input's topic, cut to this many characters (topics may be 65,535 bytes long:
# an error must stay small enough for any broker to take).
ERROR_TOPIC_ECHO = 256

# What a QoS 1 input that is given up is answered with, per reason.
_DROP_ERRORS: dict[DropReason, tuple[ErrorCode, str]] = {
    "queue_full": ("overloaded", "the route's queue is full; input dropped"),
    "rejected": ("overloaded", "the route's queue is full; input refused"),
    "superseded": ("superseded", "a newer input on the same topic replaced it before it was served"),
    "expired": ("expired", "it waited longer than the route's deadline_ms"),
}

# Why an answer could not be published -> the error the input gets instead.
_REFUSED_ANSWERS: dict[str, ErrorCode] = {
    "too_large": "answer_too_large",
    "unpublishable": "bad_topic",
    "refused": "answer_refused",
}


class Responder:
    """Publishes results and errors for the routes, and acknowledges inputs once every route has settled them."""

    def __init__(self, link: Link, announcer: Announcer, ratelog: RateLimitedLog):
        self.link = link
        self.announcer = announcer
        self._ratelog = ratelog

    # -- settling --------------------------------------------------------------------------------

    def settle(self, inbound: Inbound) -> None:
        """One route's part of ``inbound`` is done; when every route's is, the input is acknowledged."""
        inbound.waiting -= 1
        if inbound.waiting <= 0:
            self.link.ack(inbound)

    def drop(self, route: Route, inbound: Inbound, reason: DropReason) -> None:
        """An input given up under overload: a ``rejected`` one is answered and counted as an ``overloaded``
        error (the policy promises an answer); any other is counted as dropped, and answered if it is QoS 1."""
        code, detail = _DROP_ERRORS.get(reason, ("overloaded", f"input dropped ({reason})"))
        if reason == "rejected":
            self.error(route, inbound, PayloadError(code, detail))
            return
        route.stats.dropped[reason] += 1
        if inbound.qos:
            self._error(route, inbound, PayloadError(code, detail), counted=False)
        else:
            self.settle(inbound)

    # -- answers ---------------------------------------------------------------------------------

    def result(self, route: Route, inbound: Inbound, body: dict[str, Any], result: dict[str, Any]) -> None:
        try:
            payload = encode(body)
        except TypeError as err:  # orjson's JSONEncodeError: one input's error, never the loop's
            self._ratelog.log("encode", "route %s: a result could not be encoded", route.name, exc_info=True)
            self.error(route, inbound, PayloadError("internal", f"the result could not be encoded: {first_line(err)}"))
            return
        topic, props, own = self._target(route, route.publish, inbound)
        if not self._send(route, inbound, topic, payload, props, is_error=False, msg_id=body.get("id")):
            return
        if own:  # discovery only ever for the route's own result topics
            self.announcer.result_topic(topic, route.engine.manifest)
        snapshots = route.snapshots
        annotate = getattr(route.engine.task, "annotate", None)
        if snapshots is not None and annotate is not None:
            frame = inbound.image if isinstance(inbound, FrameInput) else inbound.payload
            snapshots.publish(annotate, inbound.topic, frame, result)

    def error(self, route: Route, inbound: Inbound, err: PayloadError) -> None:
        """An input refused (bad payload, failed inference): counted by code, logged (rate limited), answered."""
        self._error(route, inbound, err, counted=True)

    def _error(self, route: Route, inbound: Inbound, err: PayloadError, *, counted: bool) -> None:
        if counted:
            route.stats.errors[err.code] += 1
        # What an operator needs to find the input, at most once per interval per route and code: anyone can
        # send bad inputs as fast as the broker takes them, and logs live on an SD card. Every one is counted
        # and answered on the error topic; overload is counted only.
        if counted and err.code != "overloaded":
            shown_id = _shown_id(err.id)
            self._ratelog.log(
                f"refused:{route.name}:{err.code}",  # routes and codes are fixed by the config and the code
                "route %s: input %r from %r refused: %s",
                route.name,
                shown_id,
                inbound.topic[:200],
                err,
                extra={"route": route.name, "id": shown_id, "code": err.code, "topic": inbound.topic[:200]},
            )
        topic, props, _ = self._target(route, route.errors, inbound)
        body = {"id": err.id, "error": err.code, "detail": err.detail, "topic": inbound.topic[:ERROR_TOPIC_ECHO]}
        try:
            payload = encode(body)
        except TypeError:  # an id orjson cannot write back; the error itself still goes out
            payload = encode({**body, "id": None})
        self._send(route, inbound, topic, payload, props, is_error=True, msg_id=err.id)

    def _send(
        self, route: Route, inbound: Inbound, topic: str, payload: bytes, props: Any, *, is_error: bool, msg_id: Any
    ) -> bool:
        """Publish an answer to ``inbound``; it settles the input when it is done. True if it was queued."""
        if not inbound.qos and not self.link.has_room():
            # An answer to a QoS 0 input may be lost as the input may; it may never grow the outgoing queue
            # past its bound (errors are answered on arrival, before backpressure can hold them back).
            route.stats.dropped["outgoing_full"] += 1
            self.settle(inbound)
            return False
        # A QoS 1 input is answered at QoS 1 even on a QoS 0 route (it can reach one through an overlapping
        # subscription): it is acknowledged only once its answer is acknowledged.
        qos = route.config.qos or inbound.qos
        on_done = functools.partial(self._done, route, inbound, is_error, msg_id)
        refused = self.link.publish(topic, payload, qos, properties=props, on_done=on_done)
        if refused is not None:
            self._done(route, inbound, is_error, msg_id, refused)
            return False
        return True

    def _done(self, route: Route, inbound: Inbound, was_error: bool, msg_id: Any, refusal: Refusal | None) -> None:
        """An answer is safe (``refusal`` None) or could not be published: settle, or answer with an error."""
        if refusal is None:
            self.settle(inbound)
        elif refusal.code == "full":  # a QoS 0 answer that did not fit (see _send)
            route.stats.dropped["outgoing_full"] += 1
            self.settle(inbound)
        elif not was_error:
            code = _REFUSED_ANSWERS.get(refusal.code, "answer_refused")
            detail = f"the result could not be published: {refusal.detail}"
            self.error(route, inbound, PayloadError(code, detail, id=msg_id))
        else:
            reason: DropReason = "bad_topic" if refusal.code == "unpublishable" else "unanswerable"
            route.stats.dropped[reason] += 1
            self._ratelog.log(
                f"unanswerable:{route.name}",
                "route %s: an input on %r could not be answered (neither its result nor its error could be "
                "published: %s); counted as %s and acknowledged",
                route.name,
                inbound.topic[:100],
                refusal.detail,
                reason,
            )
            self.settle(inbound)

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


def _shown_id(msg_id: object) -> object:
    """An input's id as a log line shows it: numbers as they are, anything else cut to 100 characters."""
    if msg_id is None or isinstance(msg_id, (int, float)):
        return msg_id
    return (msg_id if isinstance(msg_id, str) else repr(msg_id))[:100]
