"""Plain paho clients on their own network thread, for simulators, tools and tests (the runtime uses ``Link``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ..config import BrokerConfig
from ..errors import BrokerError
from . import _paho
from .link import V5_PROBE_S, set_nodelay

__all__ = ["connect_client"]


_V311_ONLY: set[str] = set()


def connect_client(
    url: str,
    *,
    client_id: str = "",
    timeout: float = 10.0,
    on_message=None,
    subscriptions: Iterable[tuple[str, int]] = (),
    protocol: str = "5",
) -> mqtt.Client:
    """A plain paho client on its own network thread, connected (and subscribed) before it returns.

    For simulators, the demo's monitor and tests: the runtime itself uses ``Link``. Speaks MQTT v5,
    or v3.1.1 to a broker that does not answer v5.
    """
    # A unique id: some brokers (amqtt) merge clients that connect with an empty one into one session.
    client_id = client_id or f"edge-client-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout
    v311_only = url in _V311_ONLY or protocol == "3.1.1"
    protocols = (
        (MQTTProtocolVersion.MQTTv311,) if v311_only else (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311)
    )
    for version in protocols:
        wait = min(V5_PROBE_S, timeout) if version == MQTTProtocolVersion.MQTTv5 else deadline - time.monotonic()
        client = _try_client(url, client_id, version, max(wait, 0.1), on_message, list(subscriptions))
        if client is not None:
            if version == MQTTProtocolVersion.MQTTv311:
                _V311_ONLY.add(url)  # later clients of this process skip the v5 probe
            return client
    raise BrokerError(f"no CONNACK/SUBACK from {url} within {timeout:g}s")


def _try_client(url, client_id, protocol, wait, on_message, subs) -> mqtt.Client | None:
    cfg = BrokerConfig(url=url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    ready = threading.Event()

    def on_connect(c, _u, _f, reason, _p):
        if not reason.is_failure:
            set_nodelay(c)
            if subs:
                c.subscribe(subs)
            else:
                ready.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: ready.set()
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(cfg.host, cfg.port, keepalive=30)
    except OSError as err:
        raise BrokerError(f"cannot reach the broker at {url}: {err.strerror or err}") from err
    client.loop_start()
    if ready.wait(wait):
        return client
    client.loop_stop()
    _paho.close_socket(client)
    return None
