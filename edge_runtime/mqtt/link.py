"""The MQTT connection: paho as a packet codec, driven from the runtime's own loop, with our own delivery state.

paho's background thread is not used. The runtime's single loop waits on the socket with ``select``, reads
every packet that has arrived (``loop_read``), serves whatever batches are due, and writes (``loop_write``).
That keeps the network and the batcher in one thread: no hand-off between threads to fight over the GIL,
and no inference inside paho's callbacks stalling keep-alives (paho #379, #435).

What is delivered, and when, is decided here, not in paho (whose session state lives in memory only and
whose own in-flight window is not the broker's):

- **Outgoing** messages wait in our queue and are handed to paho only while the broker's Receive Maximum
  (from its CONNACK) leaves room for another QoS 1 message in flight and the socket buffer has room.
  A QoS 1 message is *safe* when the broker's PUBACK for it arrives; a QoS 0 one when it is handed to the
  socket (the byte stream is ordered: whatever is written after it reaches the broker after it). Each
  message may carry an ``on_safe`` callback: that is how an input is acknowledged only after its result
  is safe. What was in flight when a connection drops goes back to the front of the queue.
- **Inputs** arrive as ``Inbound`` messages. ``ack`` acknowledges a QoS 1 input; an ack asked for while the
  broker is away is sent after the next CONNACK if the broker resumed the session, and never if it started
  a new one (the packet id then means nothing, or another message). A QoS 1 input the broker redelivers
  while we still hold it from before a reconnect is not served twice.
- **Each connection** is a fresh paho client: subscriptions are sent on every connect (a resumed session
  may lack a route added since, or hold an old QoS grant), MQTT v5 falls back to v3.1.1 only when the
  broker refuses v5 (and the next connection tries v5 again), and reconnects back off exponentially with
  jitter.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import BrokerConfig
from ..errors import BrokerError
from ..topics import topic_problem
from . import _paho

__all__ = ["Link", "Inbound", "set_nodelay", "V5_PROBE_S", "MAX_PACKET"]

log = logging.getLogger("edge_runtime.link")

# How long a v5 CONNECT may go unanswered before tools (not the runtime) assume a v3.1.1-only broker.
V5_PROBE_S = 3.0

# CONNACK reason codes that mean "this broker does not speak MQTT v5": v3.1.1's 1 and v5's 0x84.
_UNSUPPORTED_PROTOCOL = {1, 0x84}

# The largest packet MQTT can carry (the remaining-length field's limit).
MAX_PACKET = 268_435_455

# QoS 1 messages in flight to a broker that states no Receive Maximum (v3.1.1): Mosquitto's default is 20.
_V311_WINDOW = 20

# What our socket buffer may hold before paho is told to wait (see _BufferedSocket).
_WRITE_LIMIT = 1 << 20
_READ_CHUNK = 256 * 1024

Callback = Callable[[], None]


class Inbound:
    """One input as the runtime sees it: paho's message with its topic decoded once, and its connection."""

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

    def __init__(self, msg: mqtt.MQTTMessage, topic: str, generation: int):
        self.topic = topic
        self.payload: bytes = bytes(msg.payload)
        self.qos: int = msg.qos
        self.mid: int = msg.mid
        self.dup: bool = bool(msg.dup)
        self.retain: bool = bool(msg.retain)
        self.properties: Properties | None = getattr(msg, "properties", None)
        self.property_bytes = _paho.property_bytes(self.properties)  # as sent: user properties can be many
        self.generation = generation
        self.waiting = 0  # answers still to be made safe before the input may be acknowledged (runtime's count)
        self.ahead: Any = None  # (route, decoder, future) while the runtime decodes it ahead of its batch


class _Outgoing:
    __slots__ = ("topic", "payload", "qos", "retain", "properties", "on_safe")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None,
        on_safe: Callback | None,
    ):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.properties, self.on_safe = properties, on_safe


class _BufferedSocket:
    """Sits between paho and its socket so that a burst costs a few syscalls, not several per message.

    paho reads each packet with one ``recv`` per header byte and one for the rest, and writes each packet
    with its own ``send``. Here one ``recv`` takes everything the kernel holds (paho's small reads are then
    served from memory), and sends are gathered and flushed once per turn of the loop. The send buffer is
    bounded: when it holds ``_WRITE_LIMIT`` bytes that the kernel will not take, ``send`` raises
    ``BlockingIOError`` and paho keeps the packet in its own queue, as with a full kernel buffer. What a
    connection that dies leaves in the buffer is counted by the link.
    """

    __slots__ = ("_sock", "_in", "_out")

    def __init__(self, sock: Any):
        self._sock = sock
        self._in = bytearray()
        self._out = bytearray()

    def recv(self, n: int) -> bytes:
        if not self._in:
            data = self._sock.recv(_READ_CHUNK)  # BlockingIOError/SSLWantRead propagate to paho as usual
            if not data:
                return b""
            self._in += data
        chunk = bytes(self._in[:n])
        del self._in[:n]
        return chunk

    def buffered(self) -> bool:
        """Bytes are waiting that select() cannot see (ours, or TLS's decrypted ones)."""
        pending = getattr(self._sock, "pending", None)
        return bool(self._in) or bool(pending and pending())

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if len(self._out) >= _WRITE_LIMIT:
            self.flush()
            if len(self._out) >= _WRITE_LIMIT:
                raise BlockingIOError("edge-runtime send buffer full")
        self._out += data
        return len(data)

    def flush(self) -> None:
        """Write what can be written now; the rest stays for the next flush (when select says writable)."""
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            del self._out[:sent]

    def unsent(self) -> int:
        return len(self._out)

    def room(self) -> bool:
        return len(self._out) < _WRITE_LIMIT

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:  # setsockopt, getpeername, pending, ... of the real socket
        return getattr(self._sock, name)


def set_nodelay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off: paho leaves it on, which costs ~40 ms stalls on small packets."""
    sock = _paho.socket_of(client)
    if sock is not None:
        with contextlib.suppress(OSError):  # not TCP (a unix socket): nothing to do
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Link:
    """One MQTT connection (v5, or v3.1.1 where the broker refuses v5), pumped by ``poll`` from one thread."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        on_message: Callable[[Inbound], None],
        subscriptions: Iterable[tuple[str, int]] = (),
        subscription_ids: bool = False,
        persistent: bool = False,
        will: tuple[str, bytes] | None = None,
        max_packet: int | None = None,
    ):
        self.broker = broker
        self.subscriptions = list(subscriptions)
        # MQTT v5: subscription i (from 1) is made with Subscription Identifier i, so that each copy of an input
        # says which subscription it came through (a broker sends one copy per overlapping subscription).
        self.subscription_ids = subscription_ids
        self._subacks: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters, until its SUBACK
        self.persistent = persistent
        self._on_message = on_message
        self._will = will
        self._max_packet = min(max_packet, MAX_PACKET) if max_packet else None
        self._prefer_v5 = broker.protocol == "5"
        self.protocol = MQTTProtocolVersion.MQTTv5 if self._prefer_v5 else MQTTProtocolVersion.MQTTv311
        self._tls = broker.tls_context()  # the one place a TLS context is made (None for mqtt://)
        self._password = broker.password()
        self.client: mqtt.Client | None = None
        self.connected = False  # CONNACK received and SUBACK too: inputs flow, results may leave
        self._connack = False
        self.reconnects = 0
        self._backoff = 0.5
        self._next_attempt = 0.0
        self._attempt_started = 0.0
        self._refused: str | None = None
        self.generation = 0  # +1 per accepted connection
        self._epoch = 0  # the generation that started the broker's current session for us
        self.on_connected: list[Callback] = []
        self._outgoing: deque[_Outgoing] = deque()
        self._inflight: dict[int, _Outgoing] = {}
        self._window = _V311_WINDOW
        self._held: dict[int, Inbound] = {}  # unacknowledged QoS 1 inputs of the current session, by packet id
        self._deferred_acks: list[Inbound] = []  # asked for while the broker was away
        self._answered_dups: set[int] = set()  # ids acknowledged after a resume, whose redelivery is a duplicate
        self.counters: Counter[str] = Counter()

    # -- connection -------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        b = self.broker
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=b.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else not self.persistent,
            reconnect_on_failure=False,
            # Inputs are acknowledged by us, when their results are safe, never by paho on return.
            manual_ack=True,
        )
        if b.username:
            client.username_pw_set(b.username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self._will:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        # Our own window (the broker's Receive Maximum) decides what is in flight; paho's must never hold back.
        client.max_inflight_messages_set(65535)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        # on_publish is set only while QoS 1 messages are in flight (see _pump): for every QoS 0 message paho
        # writes, it would build a ReasonCode (and Properties) just to call it.
        return client

    def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for the broker's CONNACK and SUBACK; raise BrokerError if they do not come."""
        timeout = self.broker.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            try:
                self._start_connect()
            except OSError as err:
                last_error = err.strerror or str(err)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            while not self.connected and self.client is not None and time.monotonic() < deadline:
                self.poll(min(0.1, max(0.0, deadline - time.monotonic())), reconnect=False)
            if self.connected:
                return
            if self._refused is not None:
                raise BrokerError(f"broker {self.broker.url} refused the connection: {self._refused}")
            if self.client is not None:
                last_error = "no CONNACK"
            self._drop_client(lost=False)
        raise BrokerError(
            f"cannot reach the broker at {self.broker.url} within {timeout:g}s ({last_error}); "
            f"is it running? (start one with `edge-runtime broker --port {self.broker.port}`)"
        )

    def _start_connect(self) -> None:
        self._refused = None
        self._connack = False
        self.client = client = self._make_client()
        props = None
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = _paho.connect_properties(
                session_expiry=self.broker.session_expiry_s if self.persistent else 0,
                receive_maximum=self.broker.receive_maximum,
                maximum_packet_size=self._max_packet,
            )
        self._attempt_started = time.monotonic()
        try:
            client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=self.broker.keepalive_s,
                clean_start=not self.persistent
                if self.protocol == MQTTProtocolVersion.MQTTv5
                else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props,
            )
        except Exception:
            self.client = None
            raise
        set_nodelay(client)
        sock = client.socket()
        if sock is not None and not isinstance(sock, _BufferedSocket):
            _paho.replace_socket(client, _BufferedSocket(sock))

    def _handle_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            self._refused = "v5" if reason.value in _UNSUPPORTED_PROTOCOL else str(reason)
            return
        self._connack = True
        self.generation += 1
        self._backoff = 0.5
        resumed = bool(flags.session_present) and self.persistent
        if not resumed:
            # A new session: packet ids from before mean nothing now (or another message): never ack them.
            self._epoch = self.generation
            self._held.clear()
            self.counters["acks_skipped_new_session"] += len(self._deferred_acks)  # answered while away
            self._deferred_acks.clear()
        self._answered_dups.clear()
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._window = (
            int(receive_max)
            if receive_max
            else (65535 if self.protocol == MQTTProtocolVersion.MQTTv5 else _V311_WINDOW)
        )
        if self.reconnects or self._outgoing:
            log.info(
                "connected to %s (session %s, %d messages waiting to leave)",
                self.broker.url,
                "resumed" if resumed else "new",
                len(self._outgoing),
            )
        for inbound in self._deferred_acks:  # their packet ids are valid in the resumed session
            client.ack(inbound.mid, inbound.qos)
            self._held.pop(inbound.mid, None)
            self._answered_dups.add(inbound.mid)
        self._deferred_acks.clear()
        # Every time: a resumed session keeps yesterday's subscriptions, which may not be today's.
        self._subacks = {}
        packets: list[tuple[list[tuple[str, int]], Properties | None]]
        if self.subscription_ids and self.protocol == MQTTProtocolVersion.MQTTv5:
            packets = [
                ([(flt, qos)], _paho.subscribe_properties(i)) for i, (flt, qos) in enumerate(self.subscriptions, 1)
            ]
        else:
            packets = [(self.subscriptions, None)] if self.subscriptions else []
        for subscriptions, sub_props in packets:
            _, mid = client.subscribe(subscriptions, properties=sub_props)
            if mid is None:
                return  # the connection is gone already: the next one subscribes again
            self._subacks[mid] = [flt for flt, _ in subscriptions]
        if not self._subacks:
            self._ready()

    def _handle_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        for flt, r in zip(self._subacks.pop(mid, []), reasons):
            if getattr(r, "is_failure", False):
                log.error("broker refused the subscription %r: %s", flt, r)
        if not self._subacks:  # inputs flow once every subscription is in place
            self._ready()

    def _ready(self) -> None:
        if self.connected:
            return
        self.connected = True
        for cb in self.on_connected:
            cb()
        self._pump()

    def _handle_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning("disconnected from %s: %s", self.broker.url, reason)
        self._drop_client(lost=True)

    def _drop_client(self, *, lost: bool) -> None:
        """Forget the paho client of a dead connection; what it had in flight leaves again on the next one."""
        client, self.client = self.client, None
        was_connected = self.connected
        self.connected = self._connack = False
        if client is not None:
            sock = _paho.socket_of(client)
            if isinstance(sock, _BufferedSocket) and sock.unsent():
                self.counters["bytes_lost_on_disconnect"] += sock.unsent()
            client.on_disconnect = None
            _paho.close_socket(client)
        if self._inflight:
            self._outgoing.extendleft(reversed([self._inflight[mid] for mid in sorted(self._inflight)]))
            self._inflight.clear()
        if lost and was_connected:
            self.counters["disconnects"] += 1

    def _maybe_reconnect(self) -> None:
        now = time.monotonic()
        if now < self._next_attempt:
            return
        # Exponential backoff with full jitter, capped: a fleet coming back does not hammer the broker.
        self._next_attempt = now + random.uniform(0, self._backoff)
        self._backoff = min(self._backoff * 2, 30.0)
        self.protocol = MQTTProtocolVersion.MQTTv5 if self._prefer_v5 else MQTTProtocolVersion.MQTTv311
        try:
            self._start_connect()
            self.reconnects += 1
            self.counters["reconnects"] += 1
        except OSError as err:
            log.debug("reconnect to %s failed: %s", self.broker.url, err)

    def _after_refusal(self) -> None:
        """A CONNACK said no. v5 refused as such: v3.1.1 at once; anything else: back off and try again."""
        refused, self._refused = self._refused, None
        self._drop_client(lost=False)
        if refused == "v5" and self.protocol == MQTTProtocolVersion.MQTTv5:  # refused as such, not silent
            log.warning(
                "broker %s refuses MQTT v5; using v3.1.1 for this connection (no response topics, "
                "no shared subscriptions)",
                self.broker.url,
            )
            self.protocol = MQTTProtocolVersion.MQTTv311
            self._next_attempt = 0.0
            try:
                self._start_connect()
            except OSError as err:
                log.debug("reconnect to %s failed: %s", self.broker.url, err)
        else:
            self._refused = refused  # kept for connect() to report
            log.error("broker %s refused the connection: %s", self.broker.url, refused)

    # -- the loop ---------------------------------------------------------------------------

    def poll(self, timeout: float, *, budget: int = 512, reconnect: bool = True, wake: Sequence[int] = ()) -> None:
        """Wait up to ``timeout`` for the socket (or a ``wake`` descriptor), read up to ``budget`` packets, and
        write what is pending."""
        client = self.client
        if client is None or client.socket() is None:
            if client is not None:
                self._drop_client(lost=True)
            if reconnect:
                self._maybe_reconnect()
            if self.client is None or self.client.socket() is None:
                if wake:
                    with contextlib.suppress(OSError, ValueError):
                        select.select(list(wake), [], [], min(timeout, 0.05))
                else:
                    time.sleep(min(timeout, 0.05))
                return
            client = self.client
        sock = _paho.socket_of(client)
        buffered = isinstance(sock, _BufferedSocket)
        if buffered and sock.buffered():
            readable = True
        else:
            want_write = client.want_write() or (buffered and sock.unsent() > 0)
            try:
                r, _, _ = select.select([sock, *wake], [sock] if want_write else [], [], max(0.0, timeout))
            except (OSError, ValueError):
                r = []
            readable = sock in r
        if readable:
            for _ in range(budget):
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self.client is not client:
                    break
                if not (sock.buffered() if buffered else select.select([sock], [], [], 0)[0]):
                    break
        if self._refused is not None:  # before the check below: paho drops a refused connection itself
            self._after_refusal()
            return
        if self.client is not client:
            return
        if not self._connack and time.monotonic() - self._attempt_started > self.broker.connect_timeout_s:
            log.warning("no CONNACK from %s within %gs; trying again", self.broker.url, self.broker.connect_timeout_s)
            self._drop_client(lost=False)
            return
        self._pump()
        self.flush_writes()
        if self.client is client:
            client.loop_misc()

    def flush_writes(self) -> None:
        """Hand everything queued to the kernel (our send buffer, then paho's queue, then our buffer again)."""
        client = self.client
        if client is None:
            return
        sock = client.socket()
        if sock is None:
            return
        try:
            if isinstance(sock, _BufferedSocket):
                sock.flush()
            if client.want_write():
                client.loop_write()
            if isinstance(sock, _BufferedSocket):
                sock.flush()
        except OSError as err:
            self._write_failed(client, err)

    def _write_failed(self, client: mqtt.Client, err: OSError) -> None:
        """Our buffer's write failed (EPIPE, ECONNRESET), which paho cannot see: the connection is lost, and
        what was in flight leaves again on the next one."""
        log.warning("write to %s failed: %s", self.broker.url, err)
        _paho.connection_lost(client)

    # -- traffic ----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        on_safe: Callback | None = None,
    ) -> bool:
        """Queue a message; ``on_safe`` runs once it is safe (see the module's docstring).

        False, with nothing queued and ``on_safe`` not called, when the message can never be published (a
        topic MQTT does not allow, a payload over MQTT's limit) or, for QoS 0 only, when it had to be
        dropped because the outgoing queue is full (counted).
        """
        if topic_problem(topic) is not None or len(payload) > MAX_PACKET - 65_600:
            self.counters["refused_unpublishable"] += 1
            return False
        if qos == 0 and len(self._outgoing) >= self.broker.max_outgoing:
            self.counters["outgoing_dropped"] += 1
            return False
        self._outgoing.append(_Outgoing(topic, payload, qos, retain, properties, on_safe))
        if self.connected:
            self._pump()
        return True

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more results fit in the outgoing queue: the runtime serves no batch when they do not."""
        return len(self._outgoing) + n <= self.broker.max_outgoing

    def _pump(self) -> None:
        """Hand queued messages to paho while the broker's window and our socket buffer allow."""
        client = self.client
        if client is None or not self.connected:
            return
        out, inflight = self._outgoing, self._inflight
        sock = client.socket()
        while out:
            msg = out[0]
            if msg.qos and len(inflight) >= self._window:
                break
            if inflight and _paho.next_mid(client) in inflight:
                # paho's packet ids wrapped round to one still unacknowledged: its write (a QoS 0 one too
                # fires on_publish) would be taken for that message's PUBACK. Wait for the broker.
                self.counters["waits_for_packet_id"] += 1
                break
            if isinstance(sock, _BufferedSocket) and not sock.room():
                try:
                    sock.flush()
                except OSError as err:
                    self._write_failed(client, err)
                    return
                if not sock.room():
                    break
            try:
                info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=msg.properties)
            except ValueError as err:  # paho's own checks; ours ran first, so this is paho knowing better
                out.popleft()
                self.counters["refused_unpublishable"] += 1
                log.warning("paho refused to publish on %r: %s", msg.topic[:200], err)
                if msg.on_safe is not None:
                    msg.on_safe()
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # the connection went away under us: it leaves on the next one
            out.popleft()
            if msg.qos:
                if not inflight:
                    client.on_publish = self._handle_publish
                inflight[info.mid] = msg
            elif msg.on_safe is not None:
                msg.on_safe()

    def _handle_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        msg = self._inflight.pop(mid, None)
        if msg is None:
            return  # a QoS 0 message written out: it was safe already
        if not self._inflight and self.client is not None:
            self.client.on_publish = None
        if reason is not None and getattr(reason, "is_failure", False):
            # The broker took it and said no (not authorised, quota...): publishing again will not change that.
            self.counters[f"refused_by_broker_{reason.value:#x}"] += 1
            log.warning("broker refused a message on %r: %s", msg.topic[:200], reason)
        if msg.on_safe is not None:
            msg.on_safe()

    def _handle_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        if msg.qos and msg.dup and (msg.mid in self._held or msg.mid in self._answered_dups):
            self.counters["redelivered_not_served_twice"] += 1  # we hold it, or answered it, from before
            return
        inbound = Inbound(msg, topic if topic is not None else "", self.generation)
        if msg.qos:
            self._held[msg.mid] = inbound
        if topic is None:  # MQTT requires UTF-8; a broker that passes this on is answered with an ack only
            self.counters["bad_input_topic"] += 1
            self.ack(inbound)
            return
        self._on_message(inbound)

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge a QoS 1 input: now, after the next CONNACK if the broker is away, or never if the
        broker has since started a new session (it may redeliver the input: a duplicate, never a loss)."""
        if not inbound.qos:
            return
        if inbound.generation < self._epoch:
            self.counters["acks_skipped_new_session"] += 1
            return
        if self._held.get(inbound.mid) is not inbound:
            # Acknowledged already, or its packet id now belongs to another input: a PUBACK now would
            # acknowledge that one before its result is safe.
            self.counters["acks_not_held"] += 1
            return
        client = self.client
        if not self._connack or client is None:
            self._deferred_acks.append(inbound)
            return
        client.ack(inbound.mid, inbound.qos)
        self._held.pop(inbound.mid, None)

    # -- state ------------------------------------------------------------------------------

    def pending_out(self) -> int:
        """Messages not yet safe: queued here, or in flight and not yet acknowledged, or bytes unsent."""
        sock = self.client.socket() if self.client is not None else None
        unsent = 1 if isinstance(sock, _BufferedSocket) and sock.unsent() else 0
        return len(self._outgoing) + len(self._inflight) + unsent + len(self._deferred_acks)

    def state(self) -> dict[str, int]:
        return {
            "outgoing": len(self._outgoing),
            "in_flight": len(self._inflight),
            "window": self._window,
            "held_inputs": len(self._held),
        }

    def drain(self, timeout: float) -> bool:
        """Write out and wait for acknowledgements until nothing is pending or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.pending_out() and time.monotonic() < deadline and self.client is not None:
            self.poll(0.02, reconnect=False)
        return self.pending_out() == 0

    def close(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            client.on_disconnect = None
            if client.socket() is not None:
                client.disconnect()
                self.flush_writes()
        finally:
            self._drop_client(lost=False)


def publish_properties(*, response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    """PUBLISH properties for an answer to an MQTT v5 request."""
    props = _paho.new_properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props
