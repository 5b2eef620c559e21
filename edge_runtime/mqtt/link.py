"""The MQTT connection: one paho client, driven from the runtime's own loop.

paho's background thread is not used. The runtime's single loop waits on the socket with ``select``,
reads every packet that has arrived (``loop_read``), serves whatever batches are due, and writes
(``loop_write``). That keeps the network and the batcher in one thread: no hand-off between threads to
fight over the GIL, and no inference inside paho's callbacks stalling keep-alives (paho #379, #435).
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
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import BrokerConfig
from ..errors import BrokerError
from . import _paho

__all__ = ["Link", "Message", "set_nodelay", "V5_PROBE_S"]

log = logging.getLogger("edge_runtime.link")

Message = mqtt.MQTTMessage

# How long a v5 CONNECT may go unanswered before we assume a v3.1.1-only broker.
V5_PROBE_S = 3.0

# CONNACK reason codes that mean "this broker does not speak MQTT v5": v3.1.1's 1 and v5's 0x84.
_UNSUPPORTED_PROTOCOL = {1, 0x84}


class _BufferedSocket:
    """Sits between paho and its socket so that a burst costs a few syscalls, not several per message.

    paho reads each packet with one ``recv`` per header byte and one for the rest, and writes each
    packet with its own ``send``. Here one ``recv`` takes everything the kernel holds (paho's small
    reads are then served from memory), and sends are gathered until ``flush``, which the runtime
    calls once per batch of results. paho sees an ordinary non-blocking socket.
    """

    __slots__ = ("_sock", "_in", "_out")

    def __init__(self, sock):
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

    def send(self, data) -> int:
        self._out += data
        if len(self._out) >= _WRITE_CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Write what can be written now; the rest stays for the next flush (when select says writable)."""
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            del self._out[:sent]

    def want_write(self) -> bool:
        return bool(self._out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.close()

    def __getattr__(self, name):  # fileno, setsockopt, getpeername, ... of the real socket
        return getattr(self._sock, name)


_READ_CHUNK = 256 * 1024
_WRITE_CHUNK = 64 * 1024


def _buffer_socket(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None and not isinstance(sock, _BufferedSocket):
        _paho.replace_socket(client, _BufferedSocket(sock))


def set_nodelay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off: paho leaves it on, which costs ~40 ms stalls on small packets."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):  # not TCP (a unix socket): nothing to do
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Link:
    """One MQTT v5 connection (falls back to v3.1.1 when the broker has no v5), pumped by ``poll``."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        on_message: Callable[[Message], None],
        subscriptions: Iterable[tuple[str, int]] = (),
        persistent: bool = False,
        will: tuple[str, bytes] | None = None,
        protocol: MQTTProtocolVersion | None = None,
    ):
        self.broker = broker
        self.subscriptions = list(subscriptions)
        self.persistent = persistent
        self._on_message = on_message
        self._will = will
        if protocol is None:
            protocol = MQTTProtocolVersion.MQTTv5 if broker.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self.protocol = protocol
        self.connected = False
        self.reconnects = 0
        self._backoff = 0.5
        self._next_attempt = 0.0
        self._refused: str | None = None
        self.on_connected: list[Callable[[], None]] = []
        self.subscribed = False
        # Results published while the broker is away, replayed in order on reconnect (bounded).
        self._backlog: deque[tuple[str, bytes, int, bool, Properties | None]] = deque()
        self.counters: Counter[str] = Counter()
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        b = self.broker
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=b.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else not self.persistent,
            reconnect_on_failure=False,
            # With manual acks a QoS 1 input is acknowledged only once its result is on its way.
            manual_ack=True,
        )
        if b.username:
            client.username_pw_set(b.username, b.password())
        if b.tls:
            context = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
            if b.cert_file and b.key_file:
                context.load_cert_chain(str(b.cert_file), str(b.key_file))
            client.tls_set_context(context)
        if self._will:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        # paho's own queue of QoS>0 messages awaiting the broker is bounded too.
        client.max_queued_messages_set(b.max_outgoing)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = lambda _c, _u, msg: self._on_message(msg)
        return client

    # -- connection -------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for the broker's CONNACK and SUBACK; raise BrokerError if they do not come.

        A broker without MQTT v5 either refuses the CONNECT or (amqtt) never answers it: either way we
        try again with v3.1.1 and say so.
        """
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
            v5 = self.protocol == MQTTProtocolVersion.MQTTv5
            attempt_end = min(deadline, time.monotonic() + (V5_PROBE_S if v5 else timeout))
            # Wait for the SUBACK too: whatever is published after connect() returns reaches us.
            while (
                not (self.connected and self.subscribed)
                and self.client.socket() is not None
                and time.monotonic() < attempt_end
            ):
                self.poll(min(0.1, max(0.0, attempt_end - time.monotonic())), reconnect=False)
            if self.connected and self.subscribed:
                return
            silent = not self.connected and self._refused is None and self.client.socket() is not None
            if v5 and (self._refused == "v5" or silent):
                log.warning(
                    "broker %s does not answer MQTT v5; using v3.1.1 (no response topics, no shared subscriptions)",
                    self.broker.url,
                )
                _paho.close_socket(self.client)
                self.protocol = MQTTProtocolVersion.MQTTv311
                self._refused = None
                self.client = self._make_client()
                continue
            if self._refused:
                raise BrokerError(f"broker {self.broker.url} refused the connection: {self._refused}")
        raise BrokerError(
            f"cannot reach the broker at {self.broker.url} within {timeout:g}s ({last_error}); "
            f"is it running? (start one with `edge-runtime broker --port {self.broker.port}`)"
        )

    def _start_connect(self) -> None:
        props = None
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.broker.session_expiry_s if self.persistent else 0
            props.ReceiveMaximum = self.broker.receive_maximum
        self.client.connect(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive_s,
            clean_start=not self.persistent
            if self.protocol == MQTTProtocolVersion.MQTTv5
            else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        set_nodelay(self.client)
        _buffer_socket(self.client)

    def _handle_connect(self, client, _userdata, flags, reason, _props) -> None:
        if reason.is_failure:
            self._refused = "v5" if reason.value in _UNSUPPORTED_PROTOCOL else str(reason)
            return
        self.connected = True
        self._backoff = 0.5
        if self.reconnects or self._backlog:
            log.info(
                "connected to %s (session %s, %d results waiting)",
                self.broker.url,
                "resumed" if flags.session_present else "new",
                len(self._backlog),
            )
        if self.subscriptions and not flags.session_present:
            self.subscribed = False
            client.subscribe(self.subscriptions)
        else:
            self.subscribed = True
        for cb in self.on_connected:
            cb()
        backlog, self._backlog = self._backlog, deque()
        for topic, payload, qos, retain, props in backlog:
            self.publish(topic, payload, qos, retain=retain, properties=props)

    def _handle_subscribe(self, _client, _userdata, _mid, reasons, _props) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("broker refused subscriptions: %s", ", ".join(str(r) for r in failed))
        self.subscribed = True

    def _handle_disconnect(self, _client, _userdata, _flags, reason, _props) -> None:
        if self.connected:
            log.warning("disconnected from %s: %s", self.broker.url, reason)
        self.connected = False

    def _maybe_reconnect(self) -> None:
        now = time.monotonic()
        if now < self._next_attempt:
            return
        # Exponential backoff with full jitter, capped: a fleet coming back does not hammer the broker.
        self._next_attempt = now + random.uniform(0, self._backoff)
        self._backoff = min(self._backoff * 2, 30.0)
        try:
            self.client.reconnect()
            set_nodelay(self.client)
            _buffer_socket(self.client)
            self.reconnects += 1
            self.counters["reconnects"] += 1
        except OSError as err:
            log.debug("reconnect to %s failed: %s", self.broker.url, err)

    # -- the loop ---------------------------------------------------------------------------

    def poll(self, timeout: float, *, budget: int = 512, reconnect: bool = True) -> None:
        """Wait up to ``timeout`` for the socket, read up to ``budget`` packets, and write what is pending."""
        client = self.client
        sock = client.socket()
        if sock is None:
            if reconnect:
                self._maybe_reconnect()
            if client.socket() is None:
                time.sleep(min(timeout, 0.05))
                return
            sock = client.socket()
        buffered = isinstance(sock, _BufferedSocket)
        want_write = client.want_write() or (buffered and sock.want_write())
        if buffered and sock.buffered():
            readable = True
        else:
            try:
                r, _w, _ = select.select([sock], [sock] if want_write else [], [], timeout)
            except (OSError, ValueError):
                r = []
            readable = bool(r)
        if readable:
            read = client.loop_read
            for _ in range(budget):
                if read() != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is not sock:
                    break
                if not sock.buffered() if buffered else not select.select([sock], [], [], 0)[0]:
                    break
        self.flush_writes()
        client.loop_misc()

    def flush_writes(self) -> None:
        """Hand everything queued to the kernel (paho's queue, then our send buffer)."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return
        if client.want_write():
            client.loop_write()
        if isinstance(sock, _BufferedSocket):
            try:
                sock.flush()
            except OSError as err:
                log.warning("write to %s failed: %s", self.broker.url, err)
                _paho.connection_lost(client)

    # -- traffic ----------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False, properties: Properties | None = None
    ) -> bool:
        """Send, or hold while the broker is away. False when the message had to be dropped (and counted)."""
        if not self.connected:
            if len(self._backlog) >= self.broker.max_outgoing:
                self.counters["outgoing_dropped"] += 1
                return False
            self._backlog.append((topic, payload, qos, retain, properties))
            return True
        rc = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties).rc
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return True
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN and len(self._backlog) < self.broker.max_outgoing:
            self._backlog.append((topic, payload, qos, retain, properties))  # the link dropped under us
            return True
        self.counters["outgoing_dropped"] += 1
        return False

    def ack(self, msg: Message) -> None:
        """Acknowledge a QoS>0 input. Not while disconnected: the broker redelivers it to our session,
        and the result is served again (a duplicate with the same id, which consumers can drop)."""
        if not msg.qos:
            return
        if self.connected:
            self.client.ack(msg.mid, msg.qos)
        else:
            self.counters["acks_skipped"] += 1

    def pending_out(self) -> int:
        """Outgoing packets (or bytes) not yet written, or QoS>0 messages not yet acknowledged by the broker."""
        sock = self.client.socket()
        unsent = 1 if isinstance(sock, _BufferedSocket) and sock.want_write() else 0
        return _paho.unsent_packets(self.client) + _paho.unacknowledged(self.client) + unsent + len(self._backlog)

    def drain(self, timeout: float) -> bool:
        """Write out and wait for acknowledgements until nothing is pending or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.pending_out() and time.monotonic() < deadline and self.client.socket() is not None:
            self.poll(0.05, reconnect=False)
        return self.pending_out() == 0

    def close(self) -> None:
        try:
            self.client.disconnect()
            self.flush_writes()
        finally:
            _paho.close_socket(self.client)
            self.connected = False
