"""What is delivered, and when: the link's state, apart from any socket.

The MQTT link (link.py) reads and writes packets with paho; this module decides what those packets are,
from events the link hands it (CONNACK, PUBACK, PUBLISH, a lost connection). Keeping the decisions here,
with the socket behind the small ``Wire`` protocol, lets the same code run under a fake wire in the tests,
where every interleaving of inputs, acknowledgements, refusals and reconnects can be generated.

- **Outgoing** messages wait in a queue bounded in count and bytes, and are handed to the wire only while the
  broker's Receive Maximum (from its CONNACK) leaves room for another QoS 1 message in flight, the packet fits
  the broker's Maximum Packet Size, and the wire has room. A message's ``on_done`` is called once, with
  ``None`` when it is *safe* (a QoS 1 PUBACK with a success code; a QoS 0 write) or with a ``Refusal``: too
  large for this broker, refused by paho, or refused by the broker with a permanent reason code. A PUBACK
  with a transient failure code (quota exceeded, unspecified) is retried with backoff a few times before it
  counts as a refusal. What was in flight when a connection drops is sent again on the next one.
- **Inputs**: a QoS 1 input is *held* from its arrival until it is acknowledged. ``ack`` acknowledges one now,
  after the next CONNACK if the broker is away and resumes the session, and never if the broker starts a
  new session (its packet id then means nothing, or another message). A redelivery of an input still held
  or already answered is not handed on twice.
- **Side messages** (no ``on_done``: status, metrics, events) never hold an input back; over the bounds they
  are dropped and counted, and a retained one replaces the queued one on the same topic (only the newest
  state matters).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from ..topics import topic_problem

__all__ = [
    "Delivery",
    "Inbound",
    "Outgoing",
    "Refusal",
    "OnDone",
    "Wire",
    "MAX_PACKET",
    "PERMANENT_REFUSALS",
    "packet_size",
]

log = logging.getLogger("edge_runtime.link")

# The largest packet MQTT can carry (the remaining-length field's limit).
MAX_PACKET = 268_435_455

# PUBACK reason codes that will not change if the message is sent again (MQTT v5, 3.4.2.1).
PERMANENT_REFUSALS = {
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x99: "payload format invalid",
}
# Other failure codes (unspecified 0x80, implementation specific 0x83, quota exceeded 0x97, packet id in use
# 0x91) may pass: tried again after 0.5, 1, 2, 4, 8 s, then counted as refused.
_RETRIES = 5
_RETRY_FIRST_S = 0.5

# QoS 1 messages in flight to a broker that states no Receive Maximum (v3.1.1): Mosquitto's default is 20.
V311_WINDOW = 20

# Properties we send (a response's correlation data) are small; past this, a message's size is computed exactly.
_PROPERTIES_ROOM = 64 << 10

# What one queued message costs beside its topic and payload (the objects around them).
_MESSAGE_OVERHEAD = 200


class Refusal(NamedTuple):
    """Why a message could not be made safe: ``code`` for machines, ``detail`` for people."""

    code: str  # "too_large" (for this broker), "unpublishable" (paho or MQTT refuse it), "refused" (the broker)
    detail: str


OnDone = Callable[[Refusal | None], None]


class Inbound:
    """One input as the runtime sees it: topic decoded once, and the connection it arrived on."""

    __slots__ = (
        "topic",
        "payload",
        "qos",
        "mid",
        "dup",
        "retain",
        "properties",
        "property_bytes",
        "generation",
        "waiting",
        "ahead",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        mid: int = 0,
        dup: bool = False,
        retain: bool = False,
        properties: Any = None,
        property_bytes: int = 0,
        generation: int = 0,
    ):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.mid = mid
        self.dup = dup
        self.retain = retain
        self.properties = properties
        self.property_bytes = property_bytes  # as sent: user properties can be many
        self.generation = generation
        self.waiting = 0  # answers still to be made safe before the input may be acknowledged (runtime's count)
        self.ahead: Any = None  # (route, decoder, future) while the runtime decodes it ahead of its batch


class Outgoing:
    __slots__ = ("topic", "payload", "qos", "retain", "properties", "on_done", "seq", "attempts", "due", "nbytes")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Any,
        on_done: OnDone | None,
        seq: int,
    ):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.properties, self.on_done, self.seq = properties, on_done, seq
        self.attempts = 0
        self.due = 0.0
        self.nbytes = len(topic) + len(payload) + _MESSAGE_OVERHEAD


class Wire(Protocol):
    """The socket side, as the delivery state needs it."""

    def send_publish(self, msg: Outgoing) -> int | None:
        """Write a PUBLISH; its packet id (0 for QoS 0), or None if the connection is gone. Raises ValueError
        when the MQTT library refuses the message itself."""

    def send_ack(self, mid: int) -> None:
        """Write the PUBACK for a received QoS 1 message."""

    def next_mid(self) -> int:
        """The packet id the next PUBLISH will get."""

    def room(self) -> bool:
        """Whether another packet may be written now (the socket buffer is not full)."""


def packet_size(msg: Outgoing) -> int:
    """A PUBLISH packet's size on the wire, properties included (what a broker's Maximum Packet Size limits)."""
    props = 0
    if msg.properties is not None:
        try:
            props = len(msg.properties.pack())
        except Exception:  # noqa: BLE001 - a property set paho cannot pack is refused by paho itself
            props = 0
    body = 2 + len(msg.topic.encode("utf-8", "surrogatepass")) + (2 if msg.qos else 0) + props + len(msg.payload)
    if msg.properties is None:
        body += 1  # the property length byte (MQTT v5); v3.1.1 has none, and counting it errs on the safe side
    header = 2 if body < 128 else 3 if body < 16_384 else 4 if body < 2_097_152 else 5
    return header + body


class Delivery:
    """The state of one MQTT session as this client sees it (see the module's docstring)."""

    def __init__(
        self,
        *,
        persistent: bool,
        max_outgoing: int,
        max_outgoing_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.persistent = persistent
        self.max_outgoing, self.max_outgoing_bytes = max_outgoing, max_outgoing_bytes
        self._clock = clock
        self.generation = 0  # +1 per accepted connection
        self.epoch = 0  # the generation that started the broker's current session for us
        self.window = V311_WINDOW
        self.max_packet = MAX_PACKET  # the broker's Maximum Packet Size (CONNACK), MQTT's own limit if none
        self.retain_available = True
        self.connected = False
        self._outgoing: deque[Outgoing] = deque()
        self._retained: dict[str, Outgoing] = {}  # queued retained side messages by topic (coalesced)
        self._retry: list[Outgoing] = []  # refused for a reason that may pass, waiting for their time
        self._inflight: dict[int, Outgoing] = {}
        self._bytes = 0  # bytes of every message not yet done: queued, waiting to retry, or in flight
        self._seq = 0
        self._held: dict[int, Inbound] = {}  # unacknowledged QoS 1 inputs of the current session, by packet id
        self._deferred_acks: dict[int, Inbound] = {}  # asked for while the broker was away
        self._answered_dups: set[int] = set()  # ids acknowledged after a resume, whose redelivery is a duplicate
        self.counters: Counter[str] = Counter()

    # -- what the runtime asks ------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Any = None,
        on_done: OnDone | None = None,
    ) -> Refusal | None:
        """Queue a message (None), or say why not (nothing queued, ``on_done`` not called).

        A message that answers an input (``on_done`` given) at QoS 1 is always queued: the runtime makes no
        more answers than fit (``has_room``). At QoS 0, and for side messages, a full queue drops it, counted.
        """
        if topic_problem(topic) is not None or len(payload) > MAX_PACKET - 65_600:
            self.counters["refused_unpublishable"] += 1
            return Refusal("unpublishable", "the topic is not one MQTT allows, or the payload is over its limit")
        msg = Outgoing(topic, payload, qos, retain, properties, on_done, self._seq)
        self._seq += 1
        if on_done is None and retain:
            queued = self._retained.get(topic)
            if queued is not None:  # only the newest retained state matters; the older one is not sent
                self._bytes += msg.nbytes - queued.nbytes
                queued.payload, queued.qos, queued.properties, queued.nbytes = payload, qos, properties, msg.nbytes
                self.counters["retained_coalesced"] += 1
                return None
        if (on_done is None or qos == 0) and not self.has_room(1, msg.nbytes):
            self.counters["outgoing_dropped"] += 1
            return Refusal("full", "the outgoing queue is full")
        self._outgoing.append(msg)
        self._bytes += msg.nbytes
        if on_done is None and retain:
            self._retained[topic] = msg
        return None

    def has_room(self, n: int = 1, nbytes: int = 0) -> bool:
        """Whether ``n`` more messages (``nbytes`` more bytes) fit in the outgoing queue."""
        return len(self._outgoing) + n <= self.max_outgoing and self._bytes + nbytes <= self.max_outgoing_bytes

    def ack(self, inbound: Inbound, wire: Wire | None) -> None:
        """Acknowledge a QoS 1 input: now (``wire`` given), after the next CONNACK if the broker is away, or never
        if the broker has since started a new session (it may redeliver the input: a duplicate, never a loss)."""
        if not inbound.qos:
            return
        if inbound.generation < self.epoch:
            self.counters["acks_skipped_new_session"] += 1
            return
        if self._held.get(inbound.mid) is not inbound or inbound.mid in self._deferred_acks:
            # Acknowledged already, or its packet id now belongs to another input: a PUBACK now would
            # acknowledge that one before its result is safe.
            self.counters["acks_not_held"] += 1
            return
        if wire is None:
            self._deferred_acks[inbound.mid] = inbound
            return
        wire.send_ack(inbound.mid)
        del self._held[inbound.mid]

    def pending_out(self) -> int:
        """Messages not yet done (queued, waiting to retry, in flight) and acknowledgements not yet sent."""
        return len(self._outgoing) + len(self._retry) + len(self._inflight) + len(self._deferred_acks)

    def state(self) -> dict[str, int]:
        return {
            "outgoing": len(self._outgoing),
            "outgoing_bytes": self._bytes,
            "in_flight": len(self._inflight),
            "retrying": len(self._retry),
            "window": self.window,
            "held_inputs": len(self._held),
            "broker_max_packet": self.max_packet,
        }

    # -- what the connection tells -------------------------------------------------------------

    def connected_to(
        self,
        wire: Wire,
        *,
        session_present: bool,
        receive_maximum: int | None,
        maximum_packet_size: int | None,
        retain_available: bool,
        v5: bool,
    ) -> bool:
        """A CONNACK accepted the connection; acknowledgements asked for while away are sent if the session was
        resumed. True if it was."""
        self.generation += 1
        resumed = session_present and self.persistent
        if not resumed:
            # A new session: packet ids from before mean nothing now (or another message): never ack them.
            self.epoch = self.generation
            self._held.clear()
            self.counters["acks_skipped_new_session"] += len(self._deferred_acks)  # answered while away
            self._deferred_acks.clear()
        self._answered_dups.clear()
        self.window = receive_maximum or (65535 if v5 else V311_WINDOW)
        self.max_packet = min(maximum_packet_size, MAX_PACKET) if maximum_packet_size else MAX_PACKET
        self.retain_available = retain_available
        self.connected = True
        for mid, inbound in self._deferred_acks.items():  # their packet ids are valid in the resumed session
            wire.send_ack(mid)
            self._held.pop(mid, None)
            self._answered_dups.add(inbound.mid)
        self._deferred_acks.clear()
        return resumed

    def disconnected(self) -> None:
        """The connection is gone: what was in flight goes back to the front of the queue, in its order."""
        self.connected = False
        if self._inflight:
            self._outgoing.extendleft(sorted(self._inflight.values(), key=lambda m: m.seq, reverse=True))
            self._inflight.clear()

    def received(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        mid: int,
        dup: bool,
        retain: bool,
        properties: Any,
        property_bytes: int,
    ) -> Inbound | None:
        """An input arrived: the Inbound to hand on, or None for a redelivery already held or answered."""
        if qos and dup and (mid in self._held or mid in self._answered_dups):
            self.counters["redelivered_not_served_twice"] += 1  # we hold it, or answered it, from before
            return None
        inbound = Inbound(
            topic,
            payload,
            qos=qos,
            mid=mid,
            dup=dup,
            retain=retain,
            properties=properties,
            property_bytes=property_bytes,
            generation=self.generation,
        )
        if qos:
            self._held[mid] = inbound
        return inbound

    def puback(self, mid: int, code: int | None, reason: str = "") -> None:
        """The broker acknowledged a QoS 1 message (``code`` None or below 0x80: accepted)."""
        msg = self._inflight.pop(mid, None)
        if msg is None:
            return  # not ours (a QoS 0 write that paho reports), or an id we no longer wait for
        if code is None or code < 0x80:
            self._done(msg, None)
            return
        permanent = PERMANENT_REFUSALS.get(code)
        if permanent is None and msg.attempts < _RETRIES:
            msg.attempts += 1
            msg.due = self._clock() + _RETRY_FIRST_S * 2 ** (msg.attempts - 1)
            self._retry.append(msg)
            self.counters["retried_after_refusal"] += 1
            return
        self.counters[f"refused_by_broker_{code:#x}"] += 1
        detail = f"the broker refused it: {reason or permanent or 'failure'} ({code:#x})"
        log.warning("broker refused a message on %r: %s", msg.topic[:200], detail)
        self._done(msg, Refusal("refused", detail))

    # -- writing -------------------------------------------------------------------------------

    def pump(self, wire: Wire) -> None:
        """Hand queued messages to the wire while the broker's window, its packet limit and the wire allow."""
        if not self.connected:
            return
        out, inflight = self._outgoing, self._inflight
        if self._retry:
            now = self._clock()
            due = sorted((m for m in self._retry if m.due <= now), key=lambda m: m.seq, reverse=True)
            if due:
                self._retry = [m for m in self._retry if m.due > now]
                out.extendleft(due)
        while out:
            msg = out[0]
            if msg.qos and len(inflight) >= self.window:
                break
            if inflight and wire.next_mid() in inflight:
                # Packet ids wrapped round to one still unacknowledged: its write (a QoS 0 one too may be
                # reported) would be taken for that message's PUBACK. Wait for the broker.
                self.counters["waits_for_packet_id"] += 1
                break
            if not wire.room():
                break
            # Exact size only near the broker's limit (a topic's UTF-8 is at most 4 bytes a character): most
            # brokers state none, and encoding every topic would cost more than the check is worth.
            near = len(msg.payload) + 4 * len(msg.topic) + (_PROPERTIES_ROOM if msg.properties is not None else 0)
            if near + 16 > self.max_packet and (size := packet_size(msg)) > self.max_packet:
                # the broker would drop the connection, and we would send it again
                self._leave(msg)
                self.counters["refused_too_large_for_broker"] += 1
                self._done(msg, Refusal("too_large", f"{size} bytes; the broker takes at most {self.max_packet}"))
                continue
            if msg.retain and not self.retain_available:  # the broker would disconnect us (0x9A)
                msg.retain = False
                self.counters["retain_unavailable"] += 1
            try:
                mid = wire.send_publish(msg)
            except ValueError as err:  # the MQTT library's own checks; ours ran first, so it knows better
                self._leave(msg)
                self.counters["refused_unpublishable"] += 1
                log.warning("paho refused to publish on %r: %s", msg.topic[:200], err)
                self._done(msg, Refusal("unpublishable", str(err)[:200]))
                continue
            if mid is None:
                break  # the connection went away under us: it leaves on the next one
            self._leave(msg)
            if msg.qos:
                inflight[mid] = msg
            else:
                self._done(msg, None)

    def _leave(self, msg: Outgoing) -> None:
        """``msg`` (the head of the queue) leaves the queue for the wire (or for good)."""
        self._outgoing.popleft()
        if msg.on_done is None and msg.retain and self._retained.get(msg.topic) is msg:
            del self._retained[msg.topic]

    def _done(self, msg: Outgoing, refusal: Refusal | None) -> None:
        self._bytes -= msg.nbytes
        if msg.on_done is not None:
            try:
                msg.on_done(refusal)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("a callback for a message on %r failed", msg.topic[:200])
