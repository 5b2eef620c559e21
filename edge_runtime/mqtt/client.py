"""Plain paho clients on their own network thread, for simulators, tools and tests (the runtime uses ``Link``).

They connect like the runtime does: the same ``BrokerConfig`` (mqtts://, CA, client certificate, user name,
password from the environment), so a tool reaches any broker the runtime reaches.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from ..config import BrokerConfig
from ..errors import BrokerError, ConfigError
from . import _paho
from .link import V5_PROBE_S, set_nodelay

__all__ = ["connect_client", "broker_config"]

OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], object]

# CONNACK reasons that mean "not MQTT v5 here": v3.1.1's 1 and v5's 0x84; try v3.1.1 then.
_UNSUPPORTED_PROTOCOL = {1, 0x84}
_V311_ONLY: set[str] = set()
_NO_ANSWER, _CLOSED = -1, -2  # our own codes for attempts that got no CONNACK


def broker_config(url: str, **fields: Any) -> BrokerConfig:
    """A BrokerConfig from a URL and options; ConfigError naming the key (``broker.url``...) if one is wrong."""
    try:
        return BrokerConfig(url=url, **fields)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(["broker", *(str(p) for p in first["loc"])])
        raise ConfigError(first["msg"].removeprefix("Value error, "), key=key) from None


def connect_client(
    broker: BrokerConfig | str,
    *,
    client_id: str = "",
    timeout: float | None = None,
    on_message: OnMessage | None = None,
    subscriptions: Iterable[tuple[str, int]] = (),
    protocol: str | None = None,
    max_packet: int | None = None,
) -> mqtt.Client:
    """A plain paho client on its own network thread, connected (and subscribed) before it returns.

    ``broker``: a BrokerConfig (TLS and credentials as the runtime uses them) or just a URL. The client id is
    ``client_id``, or a fresh one (never the runtime's own). Speaks MQTT v5, or v3.1.1 to a broker that
    does not answer v5. ``max_packet``: the largest packet this client takes (MQTT v5 Maximum Packet Size; the
    broker drops a larger message for it). Raises BrokerError (unreachable, refused) or ConfigError (bad URL, TLS files,
    missing password variable), each one line.
    """
    cfg = broker_config(broker) if isinstance(broker, str) else broker
    tls = cfg.tls_context()
    password = cfg.password()
    timeout = cfg.connect_timeout_s if timeout is None else timeout
    # A unique id: some brokers (amqtt) merge clients that connect with an empty one into one session.
    client_id = client_id or f"edge-client-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout
    v311_only = cfg.url in _V311_ONLY or (protocol or cfg.protocol) == "3.1.1"
    protocols = (
        (MQTTProtocolVersion.MQTTv311,) if v311_only else (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311)
    )
    subs = list(subscriptions)
    for version in protocols:
        wait = min(V5_PROBE_S, timeout) if version == MQTTProtocolVersion.MQTTv5 else deadline - time.monotonic()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        if tls is not None:
            client.tls_set_context(tls)
        if on_message is not None:  # paho ignores what it returns (a lambda may return anything)
            client.on_message = cast(Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None], on_message)
        props = None
        if max_packet and version == MQTTProtocolVersion.MQTTv5:
            props = _paho.connect_properties(session_expiry=0, receive_maximum=65535, maximum_packet_size=max_packet)
        refused = _connect(client, cfg, max(wait, 0.1), subs, props)
        if refused is None:
            if version == MQTTProtocolVersion.MQTTv311:
                _V311_ONLY.add(cfg.url)  # later clients of this process skip the v5 probe
            return client
        if refused.value not in _UNSUPPORTED_PROTOCOL and refused.value not in (_NO_ANSWER, _CLOSED):
            raise BrokerError(f"{cfg.url} refused the connection: {refused}")
    if refused is not None and refused.value == _CLOSED:
        hint = " (a TLS listener that wants a client certificate does this: give cert_file and key_file)"
        raise BrokerError(f"{cfg.url} closed the connection without answering{hint if cfg.tls else ''}")
    raise BrokerError(f"no CONNACK/SUBACK from {cfg.url} within {timeout:g}s")


def _connect(
    client: mqtt.Client, cfg: BrokerConfig, wait: float, subs: list[tuple[str, int]], props: Any = None
) -> _Refusal | None:
    """None once connected and subscribed; else why not (a refusal, _NO_ANSWER in time, or _CLOSED)."""
    ready = threading.Event()
    refusal: list[_Refusal] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            refusal.append(_Refusal(reason.value, str(reason)))
            ready.set()
            return
        set_nodelay(c)
        if subs:
            c.subscribe(subs)
        else:
            ready.set()

    def on_disconnect(*_: Any) -> None:
        if not ready.is_set():  # closed before it answered (TLS handshake refused late, or not MQTT)
            refusal.append(_Refusal(_CLOSED, "closed"))
            ready.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = lambda *_: ready.set()
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s, properties=props)
    except OSError as err:  # ssl.SSLError (a certificate the broker or we refuse) is an OSError too
        raise BrokerError(f"cannot reach the broker at {cfg.url}: {err.strerror or err}") from err
    client.loop_start()
    if ready.wait(wait) and not refusal:
        client.on_disconnect = None
        return None
    client.loop_stop()
    _paho.close_socket(client)
    return refusal[0] if refusal else _Refusal(_NO_ANSWER, "no answer")


class _Refusal:
    __slots__ = ("value", "text")

    def __init__(self, value: int, text: str):
        self.value, self.text = value, text

    def __str__(self) -> str:
        return self.text
