"""The fleet agent's own MQTT connection (client id ``<client_id>-fleet``), apart from the serving link.

Why a connection of its own: chunks are large (hundreds of KB), arrive in bursts and are hashed and
written to disk; on the serving link they would share the runtime's Receive Maximum, its byte bounds and
its Maximum Packet Size (sized for the routes' inputs) and its one thread. Here paho's network thread
reads and writes and hands every message to the agent's thread through a queue bounded in bytes (what
does not fit is dropped and counted: a chunk is asked for again, a record is retained). The agent's
thread subscribes, unsubscribes and publishes; subscriptions are remembered and sent again on every
connect, so a broker that restarts (or a session that expired) gets asked again for exactly what is still
missing. The session is not kept: everything the agent needs is retained on the broker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from ..config import BrokerConfig
from ..errors import BrokerError
from ..mqtt.client import connect_client

__all__ = ["Transport", "Message"]

log = logging.getLogger("edge_runtime.fleet")


@dataclass(frozen=True)
class Message:
    topic: str  # "" for the connection event
    payload: bytes
    connected: bool = False  # (re)connected: subscriptions were sent again


class Transport:
    def __init__(self, broker: BrokerConfig, *, max_packet: int, inbox_bytes: int):
        self.broker = broker
        self.max_packet = max_packet
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._inbox_bytes = 0
        self._inbox_max = inbox_bytes
        self._lock = threading.Lock()
        self._topics: dict[str, int] = {}  # subscribed, with their QoS: sent again on every connect
        self.client: mqtt.Client | None = None
        self._last: mqtt.MQTTMessageInfo | None = None  # the last QoS 1 message handed to paho
        self.counters: Counter[str] = Counter()

    @property
    def connected(self) -> bool:
        client = self.client
        return client is not None and client.is_connected()

    def connect(self, timeout: float) -> None:
        """Connect (paho's thread reconnects by itself from then on); BrokerError if the broker does not answer."""
        client = connect_client(
            self.broker, client_id=self.broker.client_id, timeout=timeout, max_packet=self.max_packet
        )
        client.reconnect_delay_set(1, 5)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client
        self._resubscribe(client)
        self._put(Message("", b"", connected=True))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            return
        self.counters["reconnects"] += 1
        self._resubscribe(client)
        self._put(Message("", b"", connected=True))

    def _on_disconnect(self, *_: Any) -> None:
        self.counters["disconnects"] += 1

    def _resubscribe(self, client: mqtt.Client) -> None:
        with self._lock:
            topics = list(self._topics.items())
        for i in range(0, len(topics), 64):  # a few packets, not one per chunk
            client.subscribe(topics[i : i + 64])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.counters["bad_topic"] += 1
            return
        self._put(Message(topic, bytes(msg.payload)))

    def _put(self, message: Message) -> None:
        size = len(message.payload) + len(message.topic)
        with self._lock:
            if self._inbox_bytes + size > self._inbox_max:
                self.counters["dropped_inbox_full"] += 1
                return
            self._inbox_bytes += size
        self._inbox.put(message)

    def get(self, timeout: float) -> Message | None:
        try:
            message = self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        with self._lock:
            self._inbox_bytes -= len(message.payload) + len(message.topic)
        return message

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            if topic in self._topics:
                return
            self._topics[topic] = qos
        if self.client is not None:
            self.client.subscribe(topic, qos)  # NO_CONN: sent on the next connect

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            if self._topics.pop(topic, None) is None:
                return
        if self.client is not None:
            self.client.unsubscribe(topic)

    def subscribed(self) -> set[str]:
        with self._lock:
            return set(self._topics)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message; False when it could not be handed to paho now (the caller publishes again on the
        next connect: everything the agent publishes is retained state)."""
        client = self.client
        if client is None:
            return False
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError:
            self.counters["refused_unpublishable"] += 1
            return False
        if qos:
            self._last = info
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the broker to acknowledge the last QoS 1 message (sent in order)."""
        last = self._last
        if last is not None and self.connected:
            with contextlib.suppress(RuntimeError, ValueError):  # not queued: the connection went away
                last.wait_for_publish(timeout)

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.disconnect()
        except (OSError, ValueError) as err:
            log.debug("fleet connection: disconnect failed: %s", err)
        client.loop_stop()


def connect_forever(transport: Transport, stop: threading.Event, *, timeout: float = 10.0) -> bool:
    """Connect, trying again with backoff until it works or ``stop`` is set; True once connected."""
    delay = 0.5
    while not stop.is_set():
        try:
            transport.connect(timeout)
            return True
        except BrokerError as err:
            log.warning("fleet: cannot reach the broker yet (%s); trying again in %.0f s", err, delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)
    return False
