"""The MQTT connection: paho as a packet codec, driven from the runtime's own loop, with our own delivery state.

paho's background thread is not used. The runtime's single loop waits on the socket with ``select``, reads
every packet that has arrived (``loop_read``), serves whatever batches are due, and writes (``loop_write``).
That keeps the network and the batcher in one thread: no hand-off between threads to fight over the GIL,
and no inference inside paho's callbacks stalling keep-alives (paho #379, #435).

What is delivered, and when, is decided by ``Delivery`` (delivery.py), not by paho (whose session state lives
in memory only and whose own in-flight window is not the broker's); this module turns paho's callbacks into
its events and its decisions into packets.

**Each connection** is a fresh paho client: subscriptions are sent on every connect (a resumed session may
lack a route added since, or hold an old QoS grant), filters the resumed session holds that the config no
longer has are unsubscribed (they are remembered in a small state file), retained messages are not sent to
us at subscribe time (MQTT v5 Retain Handling 2: an input is served when it is published, not again at every
start), MQTT v5 falls back to v3.1.1 only when the broker refuses v5 (and the next connection tries v5
again), and reconnects back off exponentially with jitter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import BrokerConfig
from ..errors import BrokerError
from . import _paho
from .delivery import MAX_PACKET, Delivery, Inbound, OnDone, Outgoing, Refusal
from .protocol import LinkSpec, Subscription

__all__ = ["MqttLink", "set_nodelay", "publish_properties", "forwarded_properties", "V5_PROBE_S", "MAX_PACKET"]

log = logging.getLogger("edge_runtime.link")

# How long a v5 CONNECT may go unanswered before tools (not the runtime) assume a v3.1.1-only broker.
V5_PROBE_S = 3.0

# CONNACK reason codes that mean "this broker does not speak MQTT v5": v3.1.1's 1 and v5's 0x84.
_UNSUPPORTED_PROTOCOL = {1, 0x84}

# Packets read per poll at most, when nothing holds reading back.
_READ_BUDGET = 512

# What our socket buffer may hold before paho is told to wait (see _BufferedSocket).
_WRITE_LIMIT = 1 << 20
_READ_CHUNK = 256 * 1024

# Filters remembered in the state file, at most (a config names a few; the file is ours, but read defensively).
_MAX_REMEMBERED_FILTERS = 1024

Callback = Callable[[], None]


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


class _PahoWire:
    """The ``Wire`` of one paho client (delivery.py): PUBLISH and PUBACK packets, and room in our buffer."""

    __slots__ = ("_client", "_link")

    def __init__(self, client: mqtt.Client, link: MqttLink):
        self._client, self._link = client, link

    def send_publish(self, msg: Outgoing) -> int | None:
        client = self._client
        info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=msg.properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        if msg.qos and client.on_publish is None:
            # Set only while QoS 1 messages are in flight: for every QoS 0 message paho writes, it would build
            # a ReasonCode (and Properties) just to call it.
            client.on_publish = self._link._handle_publish
        return int(info.mid)

    def send_ack(self, mid: int) -> None:
        self._client.ack(mid, 1)

    def next_mid(self) -> int:
        return _paho.next_mid(self._client)

    def room(self) -> bool:
        sock = self._client.socket()
        if not isinstance(sock, _BufferedSocket) or sock.room():
            return True
        try:
            sock.flush()
        except OSError as err:
            self._link._write_failed(self._client, err)
            return False
        return sock.room()


class MqttLink:
    """One MQTT connection (v5, or v3.1.1 where the broker refuses v5), pumped by ``poll`` from one thread."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        on_message: Callable[[Inbound], None],
        subscriptions: Iterable[Subscription | tuple[str, int]] = (),
        persistent: bool = False,
        will: tuple[str, bytes] | None = None,
        max_packet: int | None = None,
        receive_maximum: int | None = None,
        max_outgoing_bytes: int = 64 << 20,
        state_file: Path | None = None,
        on_connected: Callback | None = None,
        unsubscribe: Sequence[str] = (),
        read_budget: Callable[[], int] | None = None,
    ):
        self.broker = broker
        self.subscriptions = [s if isinstance(s, Subscription) else Subscription(*s) for s in subscriptions]
        self._subacks: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters, until its SUBACK
        self._unsubacks: set[int] = set()
        self.persistent = persistent
        self._on_message = on_message
        self._will = will
        self._max_packet = min(max_packet, MAX_PACKET) if max_packet else None
        self.receive_maximum = receive_maximum or broker.receive_maximum
        self._state_file = state_file
        self._unsubscribe = list(unsubscribe)  # filters a resumed session may hold that we never want
        self._read_budget = read_budget  # how many packets may be read now (the caller's room for inputs)
        self._prefer_v5 = broker.protocol == "5"
        self.protocol = MQTTProtocolVersion.MQTTv5 if self._prefer_v5 else MQTTProtocolVersion.MQTTv311
        self._tls = broker.tls_context()  # the one place a TLS context is made (None for mqtt://)
        self._password = broker.password()
        self.client: mqtt.Client | None = None
        self._wire: _PahoWire | None = None
        self.connected = False  # CONNACK received: inputs flow, results may leave
        self.subscribed = False  # SUBACK received too (on_connected has run)
        self._connack = False
        self.reconnects = 0
        self._backoff = 0.5
        self._next_attempt = 0.0
        self._attempt_started = 0.0
        self._refused: str | None = None
        self.on_connected: list[Callback] = [on_connected] if on_connected is not None else []
        self.delivery = Delivery(
            persistent=persistent, max_outgoing=broker.max_outgoing, max_outgoing_bytes=max_outgoing_bytes
        )
        self.counters: Counter[str] = self.delivery.counters

    @classmethod
    def from_spec(cls, spec: LinkSpec) -> MqttLink:
        return cls(
            spec.broker,
            on_message=spec.on_message,
            subscriptions=spec.subscriptions,
            persistent=spec.persistent,
            will=spec.will,
            max_packet=spec.max_packet,
            receive_maximum=spec.receive_maximum,
            max_outgoing_bytes=spec.max_outgoing_bytes,
            state_file=spec.state_file,
            on_connected=spec.on_connected,
            read_budget=spec.read_budget,
        )

    @property
    def generation(self) -> int:
        return self.delivery.generation

    @property
    def session_resumed(self) -> bool:
        """Whether the broker's current session for us began before this process's first connection."""
        return self.delivery.epoch == 0 and self.delivery.generation > 0

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
        client.on_unsubscribe = self._handle_unsubscribe
        client.on_message = self._handle_message
        return client

    def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for the broker's CONNACK; raise BrokerError if it does not come. The SUBACK comes
        later (``subscribed``): a resumed session's inputs may arrive first, and are the caller's to serve."""
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
        self._wire = _PahoWire(client, self)
        props = None
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = _paho.connect_properties(
                session_expiry=self.broker.session_expiry_s if self.persistent else 0,
                receive_maximum=self.receive_maximum,
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
            self.client = self._wire = None
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
        self._backoff = 0.5
        assert self._wire is not None
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        resumed = self.delivery.connected_to(
            self._wire,
            session_present=bool(flags.session_present),
            receive_maximum=_int_property(props, "ReceiveMaximum"),
            maximum_packet_size=_int_property(props, "MaximumPacketSize"),
            retain_available=_int_property(props, "RetainAvailable") != 0,
            v5=v5,
        )
        # Results may leave from now on, and a resumed session's inputs arrive before the SUBACK: the caller
        # serves them (within its read budget) while the subscriptions are renewed.
        self.connected = True
        if self.reconnects or self.delivery.pending_out():
            log.info(
                "connected to %s (session %s, %d messages waiting to leave)",
                self.broker.url,
                "resumed" if resumed else "new",
                self.delivery.pending_out(),
            )
        # A resumed session keeps yesterday's subscriptions: those the config no longer has are removed (a
        # stale one would bring inputs no route serves), and today's are sent every time (a route added
        # since, or an old QoS grant).
        self._subacks, self._unsubacks = {}, set()
        stale = self._stale_filters() if resumed else []
        if stale:
            log.info("unsubscribing %d filter(s) the session kept from an earlier config: %s", len(stale), stale[:5])
            _, mid = client.unsubscribe(stale)
            if mid is None:
                return
            self._unsubacks.add(mid)
        for subscriptions, sub_props in self._subscribe_packets(v5):
            _, mid = client.subscribe(subscriptions, properties=sub_props)
            if mid is None:
                return  # the connection is gone already: the next one subscribes again
            self._subacks[mid] = [flt for flt, _ in subscriptions]
        if not self._subacks and not self._unsubacks:
            self._ready()

    def _subscribe_packets(self, v5: bool) -> list[tuple[list[tuple[str, Any]], Properties | None]]:
        if not v5:
            return [([(s.filter, s.qos) for s in self.subscriptions], None)] if self.subscriptions else []
        # Retain Handling 2: a retained message is not sent at subscribe time (it would be served again at every
        # start and reconnect, as if it were new).
        options = [(s.filter, SubscribeOptions(qos=s.qos, retainHandling=2)) for s in self.subscriptions]
        if not any(s.identifier for s in self.subscriptions):
            return [(options, None)] if options else []
        return [
            ([opt], _paho.subscribe_properties(s.identifier) if s.identifier else None)
            for s, opt in zip(self.subscriptions, options)
        ]

    def _handle_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        for flt, r in zip(self._subacks.pop(mid, []), reasons):
            if getattr(r, "is_failure", False):
                log.error("broker refused the subscription %r: %s", flt, r)
        self._maybe_ready()

    def _handle_unsubscribe(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        self._unsubacks.discard(mid)
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if not self._subacks and not self._unsubacks:  # inputs flow once every subscription is in place
            self._remember_filters()
            self._ready()

    def _ready(self) -> None:
        if self.subscribed:
            return
        self.subscribed = True
        for cb in self.on_connected:
            try:
                cb()
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("a callback after connecting failed")
        self._pump()

    # -- the filters a persistent session holds -------------------------------------------------

    def _stale_filters(self) -> list[str]:
        """Filters the resumed session may hold that today's config has not: those an earlier run remembered in
        the state file, and any we were told never to want."""
        remembered: list[str] = []
        if self._state_file is not None:
            try:
                with open(self._state_file, "rb") as f:
                    doc = orjson.loads(f.read(1 << 20))
                held = doc.get("subscriptions") if isinstance(doc, dict) else None
                if isinstance(held, list):
                    remembered = [f for f in held[:_MAX_REMEMBERED_FILTERS] if isinstance(f, str)]
            except (OSError, orjson.JSONDecodeError):
                pass  # nothing remembered (a first run), or unreadable: nothing to remove but what we were told
        return sorted({*remembered, *self._unsubscribe} - {s.filter for s in self.subscriptions})

    def _remember_filters(self) -> None:
        if self._state_file is None or not self.persistent:
            return
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            data = orjson.dumps({"subscriptions": [s.filter for s in self.subscriptions]})
            fd, tmp = tempfile.mkstemp(dir=self._state_file.parent, prefix=".subscriptions-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._state_file)
        except OSError as err:
            if not self.counters["state_not_saved"]:
                log.warning("cannot remember the session's subscriptions in %s: %s", self._state_file, err)
            self.counters["state_not_saved"] += 1

    # -- losing and re-making the connection ---------------------------------------------------

    def _handle_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning("disconnected from %s: %s", self.broker.url, reason)
        self._drop_client(lost=True)

    def _drop_client(self, *, lost: bool) -> None:
        """Forget the paho client of a dead connection; what it had in flight leaves again on the next one."""
        client, self.client, self._wire = self.client, None, None
        was_connected = self.connected
        self.connected = self.subscribed = self._connack = False
        if client is not None:
            sock = _paho.socket_of(client)
            if isinstance(sock, _BufferedSocket) and sock.unsent():
                self.counters["bytes_lost_on_disconnect"] += sock.unsent()
            client.on_disconnect = None
            _paho.close_socket(client)
        self.delivery.disconnected()
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

    def poll(
        self, timeout: float, *, budget: int | None = None, reconnect: bool = True, wake: Sequence[int] = ()
    ) -> None:
        """Wait up to ``timeout`` for the socket (or a ``wake`` descriptor), read up to ``budget`` packets (default:
        what ``read_budget`` says, else 512; none: the socket is not read), and write what is pending."""
        if budget is None:
            budget = self._read_budget() if self._read_budget is not None else _READ_BUDGET
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
        if budget and buffered and sock.buffered():
            readable = True
        else:
            # With no budget (the runtime has no room for another input) the socket is not read: what the broker
            # sends waits in the kernel, and TCP holds the broker back. It is written to, and woken from, as usual.
            want_write = client.want_write() or (buffered and sock.unsent() > 0)
            try:
                r, _, _ = select.select(
                    [sock, *wake] if budget else list(wake), [sock] if want_write else [], [], max(0.0, timeout)
                )
            except (OSError, ValueError):
                r = []
            readable = bool(budget) and sock in r
        if readable:
            for _ in range(budget):
                if _paho.read_packet(client) != MQTTErrorCode.MQTT_ERR_SUCCESS or self.client is not client:
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
        on_done: OnDone | None = None,
    ) -> Refusal | None:
        """Queue a message; ``on_done`` is called once it is safe or refused (see delivery.py). A Refusal, with
        nothing queued and ``on_done`` not called, when it cannot even be queued."""
        refused = self.delivery.publish(topic, payload, qos, retain=retain, properties=properties, on_done=on_done)
        if refused is None and self.connected:
            self._pump()
        return refused

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more results fit in the outgoing queue: the runtime serves no batch when they do not."""
        return self.delivery.has_room(n)

    def _pump(self) -> None:
        if self._wire is not None and self.connected:
            self.delivery.pump(self._wire)

    def _handle_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode | None, _p: Any) -> None:
        failed = reason is not None and getattr(reason, "is_failure", False)
        self.delivery.puback(mid, reason.value if failed and reason is not None else None, str(reason or ""))
        if not self.delivery.state()["in_flight"] and self.client is not None:
            self.client.on_publish = None

    def _handle_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        props = getattr(msg, "properties", None)
        inbound = self.delivery.received(
            topic if topic is not None else "",
            bytes(msg.payload),
            qos=msg.qos,
            mid=msg.mid,
            dup=bool(msg.dup),
            retain=bool(msg.retain),
            properties=props,
            property_bytes=_paho.property_bytes(props),
        )
        if inbound is None:
            return
        if topic is None:  # MQTT requires UTF-8; a broker that passes this on is answered with an ack only
            self.counters["bad_input_topic"] += 1
            self.ack(inbound)
            return
        self._on_message(inbound)

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge a QoS 1 input (see ``Delivery.ack``)."""
        self.delivery.ack(inbound, self._wire if self._connack else None)

    # -- state ------------------------------------------------------------------------------

    def pending_out(self) -> int:
        """Messages not yet safe, acknowledgements not yet sent, and bytes not yet written."""
        sock = self.client.socket() if self.client is not None else None
        unsent = 1 if isinstance(sock, _BufferedSocket) and sock.unsent() else 0
        return self.delivery.pending_out() + unsent

    def state(self) -> dict[str, int]:
        return {**self.delivery.state(), "receive_maximum": self.receive_maximum}

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


def _int_property(props: Any, name: str) -> int | None:
    value = getattr(props, name, None) if props is not None else None
    return int(value) if isinstance(value, int) else None


# What a PUBLISH's properties say about the message itself (kept when it is published again elsewhere); the
# rest (subscription identifiers, topic aliases) belong to one connection.
_FORWARDED = (
    "PayloadFormatIndicator",
    "MessageExpiryInterval",
    "ContentType",
    "ResponseTopic",
    "CorrelationData",
    "UserProperty",
)


def forwarded_properties(props: Any) -> Properties | None:
    """A received message's own properties, for publishing it again (None when it had none)."""
    if props is None:
        return None
    out = _paho.new_properties(PacketTypes.PUBLISH)
    found = False
    for name in _FORWARDED:
        value = getattr(props, name, None)
        if value is not None:
            setattr(out, name, value)
            found = True
    return out if found else None


def publish_properties(*, response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    """PUBLISH properties for an answer to an MQTT v5 request."""
    props = _paho.new_properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props
