"""A link without a broker, and a model of the broker behind it, for driving the runtime through interleavings.

``FakeLink`` implements the runtime's ``Link`` protocol on the same ``Delivery`` state as the real link
(edge_runtime/mqtt/delivery.py), so what is tested here is the real logic of windows, holds, deferred and
skipped acknowledgements, retries and refusals; only the socket is replaced. ``BrokerModel`` plays the
broker: it delivers inputs (at most Receive Maximum unacknowledged QoS 1 ones, as a broker must), assigns
and reuses packet ids, acknowledges the runtime's messages with chosen reason codes, drops connections,
resumes or loses sessions, and records every packet, so that a test can check the promises on the wire:

- a QoS 1 input is acknowledged only after an answer to it (result or error) was acknowledged by the broker
  with a success code, or after an error answering it was refused for good (nothing more can be done);
- an input is answered no more often than it was delivered (plus the errors that replace refused results);
- no acknowledgement names a packet id the broker's current session does not hold (never into a new session).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from edge_runtime.mqtt.delivery import Delivery, Outgoing, Refusal
from edge_runtime.mqtt.protocol import LinkSpec


@dataclass
class Copy:
    """One copy of an input, as the broker delivers it through one subscription."""

    uid: str
    topic: str
    payload: bytes
    qos: int
    route: str  # the route (subscription) this copy is for
    sub_id: int | None
    property_bytes: int = 0
    deliveries: int = 0


@dataclass
class Sent:
    """A message the runtime published."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    seq: int
    conn: int


@dataclass
class BrokerModel:
    persistent_session: bool = False
    session: int = 0  # +1 whenever the broker starts a new session for the client
    conn: int = 0  # +1 per connection
    connected: bool = False
    receive_maximum: int = 1024
    max_packet: int | None = None
    backlog: deque[Copy] = field(default_factory=deque)  # waiting to be sent to the client
    unacked: dict[int, Copy] = field(default_factory=dict)  # sent at QoS 1, not yet acknowledged by the client
    redeliver: list[Copy] = field(default_factory=list)
    inflight: dict[int, Sent] = field(default_factory=dict)  # the client's QoS 1 messages, not yet acknowledged
    safe: set[tuple[str, str]] = field(default_factory=set)  # (uid, route) answered with a success code
    error_refused: set[tuple[str, str]] = field(default_factory=set)
    result_refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    answers: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    acked: Counter[str] = field(default_factory=Counter)  # uid -> acknowledgements received
    qos1_delivered: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    published_topics: list[str] = field(default_factory=list)  # every message the client published, in order
    link: FakeLink | None = None

    # -- from the client ------------------------------------------------------------------------

    def client_published(self, msg: Outgoing, mid: int) -> None:
        sent = Sent(msg.topic, msg.payload, msg.qos, mid, msg.seq, self.conn)
        self.published_topics.append(msg.topic)
        answer = _answer_of(msg.topic)
        if answer is not None:
            uid, route, _ = answer
            self.answers[(uid, route)].add(msg.seq)
            if msg.qos == 0:
                self.safe.add((uid, route))  # QoS 0: safe once written (the stream is ordered)
        if msg.qos:
            self.inflight[mid] = sent

    def client_acked(self, mid: int) -> None:
        # Recorded, not raised: the runtime's own guards would catch an exception raised here.
        copy = self.unacked.pop(mid, None)
        if copy is None:
            self.violations.append(f"PUBACK for packet id {mid}, which session {self.session} does not hold")
            return
        key = (copy.uid, copy.route)
        if copy.route != "control" and key not in self.safe and key not in self.error_refused:
            self.violations.append(f"input {copy.uid} acknowledged for route {copy.route} before any answer was safe")
        self.acked[copy.uid] += 1

    # -- the broker's own moves -----------------------------------------------------------------

    def publish_input(self, copies: Sequence[Copy]) -> None:
        self.backlog.extend(copies)

    def deliver(self, n: int, *, respect_window: bool = True) -> int:
        """Send up to ``n`` queued copies to the client (redeliveries first). Returns how many were sent."""
        link = self.link
        if link is None or not self.connected:
            return 0
        sent = 0
        while self.redeliver and sent < n:
            copy = self.redeliver.pop(0)
            mid = next(m for m, c in self.unacked.items() if c is copy)
            self._send(copy, mid, dup=True)
            sent += 1
        while self.backlog and sent < n:
            copy = self.backlog[0]
            if copy.qos and respect_window and len(self.unacked) >= self.receive_maximum:
                break
            self.backlog.popleft()
            mid = 0
            if copy.qos:
                mid = next(m for m in range(1, 65536) if m not in self.unacked)
                self.unacked[mid] = copy
                self.qos1_delivered.add(copy.uid)
            self._send(copy, mid, dup=False)
            sent += 1
        return sent

    def _send(self, copy: Copy, mid: int, *, dup: bool) -> None:
        copy.deliveries += 1
        self.deliveries[(copy.uid, copy.route)] += 1
        props = SimpleNamespace(SubscriptionIdentifier=[copy.sub_id]) if copy.sub_id is not None else None
        assert self.link is not None
        self.link.incoming(copy, mid, dup=dup, properties=props)

    def puback(self, n: int, code: int | None) -> int:
        """Acknowledge the ``n`` oldest messages in flight from the client with ``code`` (None: success)."""
        done = 0
        for mid in list(self.inflight)[:n]:
            sent = self.inflight.pop(mid)
            answer = _answer_of(sent.topic)
            if answer is not None:
                uid, route, kind = answer
                if code is None or code < 0x80:
                    self.safe.add((uid, route))
                elif code in (0x87, 0x90, 0x95, 0x99):  # permanent: the runtime gives up on this message
                    if kind == "error":
                        self.error_refused.add((uid, route))
                    else:
                        self.result_refused[(uid, route)] += 1
            assert self.link is not None
            self.link.delivery.puback(mid, code, "model")
            done += 1
        return done

    def drop_connection(self) -> None:
        if not self.connected:
            return
        self.connected = False
        self.inflight.clear()
        assert self.link is not None
        self.link.lost()

    def reconnect(self, *, session_present: bool) -> None:
        if self.connected:
            return
        link = self.link
        assert link is not None
        resumed = session_present and self.persistent_session and link.spec.persistent
        if not resumed:
            self.session += 1
            self.unacked.clear()
            self.backlog = deque(c for c in self.backlog if c.qos == 0 or not self.persistent_session)
        self.persistent_session = link.spec.persistent
        self.conn += 1
        self.connected = True
        link.connack(session_present=resumed)
        if resumed:  # unacknowledged QoS 1 inputs are sent again, before anything new
            self.redeliver = list(self.unacked.values())


def _answer_of(topic: str) -> tuple[str, str, str] | None:
    """results/<uid>/<route> or errors/<uid>/<route> -> (uid, route, kind)."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] in ("results", "errors"):
        return parts[1], parts[2], "result" if parts[0] == "results" else "error"
    return None


class _FakeWire:
    def __init__(self, link: FakeLink):
        self._link = link
        self._mid = 0

    def send_publish(self, msg: Outgoing) -> int | None:
        broker = self._link.broker
        if not broker.connected:
            return None
        mid = 0
        if msg.qos:
            self._mid = self._mid % 65535 + 1
            mid = self._mid
        broker.client_published(msg, mid)
        return mid

    def send_ack(self, mid: int) -> None:
        self._link.broker.client_acked(mid)

    def next_mid(self) -> int:
        return self._mid % 65535 + 1

    def room(self) -> bool:
        return True


class FakeLink:
    """The runtime's Link protocol over a ``BrokerModel`` (see the module's docstring)."""

    def __init__(self, spec: LinkSpec, broker: BrokerModel, *, clock: Any):
        self.spec = spec
        self.broker = broker
        broker.link = self
        broker.receive_maximum = spec.receive_maximum
        self.delivery = Delivery(
            persistent=spec.persistent,
            max_outgoing=spec.broker.max_outgoing,
            max_outgoing_bytes=spec.max_outgoing_bytes,
            clock=clock,
        )
        self.counters = self.delivery.counters
        self.connected = self.subscribed = False
        self.socket: deque[tuple[Copy, int, bool, Any]] = deque()
        self._wire = _FakeWire(self)
        self.on_connected = [spec.on_connected] if spec.on_connected else []

    # the broker model's doorway: what it sends waits here (the socket) until the runtime polls for it
    def incoming(self, copy: Copy, mid: int, *, dup: bool, properties: Any) -> None:
        self.socket.append((copy, mid, dup, properties))

    def _read(self, budget: int) -> None:
        for _ in range(min(budget, len(self.socket))):
            self._take(*self.socket.popleft())

    def _take(self, copy: Copy, mid: int, dup: bool, properties: Any) -> None:
        inbound = self.delivery.received(
            copy.topic,
            copy.payload,
            qos=copy.qos,
            mid=mid,
            dup=dup,
            retain=False,
            properties=properties,
            property_bytes=copy.property_bytes,
        )
        if inbound is not None:
            self.spec.on_message(inbound)

    def connack(self, *, session_present: bool) -> None:
        self.delivery.connected_to(
            self._wire,
            session_present=session_present,
            receive_maximum=None,
            maximum_packet_size=self.broker.max_packet,
            retain_available=True,
            v5=True,
        )
        self.connected = self.subscribed = True
        for cb in self.on_connected:
            cb()
        self.delivery.pump(self._wire)

    def lost(self) -> None:
        self.connected = self.subscribed = False
        self.socket.clear()  # what the broker had sent and we had not read is gone with the connection
        self.delivery.disconnected()

    # the Link protocol
    def connect(self, timeout: float | None = None) -> None:
        self.broker.reconnect(session_present=True)

    def poll(
        self, timeout: float, *, budget: int | None = None, reconnect: bool = True, wake: Sequence[int] = ()
    ) -> None:
        if budget is None:
            budget = self.spec.read_budget() if self.spec.read_budget is not None else 512
        if self.connected:
            self._read(budget)
        self.delivery.pump(self._wire)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Any = None,
        on_done: Any = None,
    ) -> Refusal | None:
        refused = self.delivery.publish(topic, payload, qos, retain=retain, properties=properties, on_done=on_done)
        if refused is None and self.connected:
            self.delivery.pump(self._wire)
        return refused

    def ack(self, inbound: Any) -> None:
        self.delivery.ack(inbound, self._wire if self.connected else None)

    def has_room(self, n: int = 1) -> bool:
        return self.delivery.has_room(n)

    def flush_writes(self) -> None:
        pass

    def drain(self, timeout: float) -> bool:
        self.delivery.pump(self._wire)
        return self.delivery.pending_out() == 0

    def close(self) -> None:
        self.broker.drop_connection()

    def pending_out(self) -> int:
        return self.delivery.pending_out()

    def state(self) -> dict[str, int]:
        return self.delivery.state()
