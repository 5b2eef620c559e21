"""The seam: every use of paho-mqtt beyond its public API, in one place, each with why.

paho runs its network loop on a thread of its own unless the caller drives it, and has no public hook to
wrap its socket, to close it without a DISCONNECT, or to tell it that a write it cannot see failed. The
runtime needs all three (see link.py). What is in flight is counted from paho's callbacks (on_publish),
not read from its queues. These attributes exist in the paho-mqtt versions pinned in pyproject.toml;
``check`` runs at import and fails with one clear line if a paho release renames them, and
tests/test_paho_seam.py exercises each against a real broker.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "PAHO_VERSION",
    "MAX_PROPERTY_BYTES",
    "check",
    "socket_of",
    "replace_socket",
    "close_socket",
    "connection_lost",
    "read_packet",
    "next_mid",
    "new_properties",
    "connect_properties",
    "LazyProperties",
]

PAHO_VERSION: str = paho.mqtt.__version__

# MQTT v5 properties an input may carry (bytes on the wire): a response topic, correlation data and a few user
# properties fit many times over. Past this, a message's properties are not parsed at all.
MAX_PROPERTY_BYTES = 8192

# Attributes and methods we use beyond the public API, and what for.
_REQUIRED = {
    "_sock": "the socket, which link.py wraps in a buffer (no public setter)",
    "_sock_close": "closes the socket without sending DISCONNECT (a connection that got no CONNACK)",
    "_loop_rc_handle": "tells paho its connection is lost when our buffered write fails",
    "_last_mid": "the packet id paho gave last: QoS 0 and 1 share the counter, which wraps at 65535",
    "_packet_read": "reads one packet: loop_read reads as many as paho has messages in flight, past any budget",
}


def check(client: Any = None) -> None:
    """Raise ImportError naming what is missing if this paho-mqtt lacks an attribute we rely on."""
    client = client if client is not None else mqtt.Client(CallbackAPIVersion.VERSION2)
    missing = [name for name in _REQUIRED if not hasattr(client, name)]
    if missing:
        raise ImportError(
            f"paho-mqtt {PAHO_VERSION} lacks {', '.join(missing)} that edge-runtime relies on "
            f"({'; '.join(_REQUIRED[m] for m in missing)}); install a tested version: "
            "pip install 'paho-mqtt>=2.1,<2.3'"
        )


def socket_of(client: mqtt.Client) -> Any:
    """The object paho reads from and writes to (ours, once wrapped), or None while disconnected."""
    return client._sock


def replace_socket(client: mqtt.Client, sock: Any) -> None:
    """paho reads and writes through whatever sits in ``_sock``; there is no public way to interpose."""
    client._sock = sock


def close_socket(client: mqtt.Client) -> None:
    """Close without DISCONNECT: a connection that got no CONNACK, or one already known to be dead."""
    if client.socket() is not None:
        client._sock_close()


def next_mid(client: mqtt.Client) -> int:
    """The packet id paho will give the next message (its counter runs 1..65535, then wraps)."""
    last: int = client._last_mid
    return last % 65535 + 1


def read_packet(client: mqtt.Client) -> MQTTErrorCode:
    """Read exactly one packet (or what part of one has arrived), as ``loop_read`` does for each of its packets.

    ``loop_read(max_packets)`` ignores its argument and reads one packet per message paho has in flight: with
    hundreds of results awaiting their PUBACKs, one call took hundreds of inputs, past the runtime's room.
    """
    if client.socket() is None:
        return MQTTErrorCode.MQTT_ERR_NO_CONN
    rc: MQTTErrorCode = client._packet_read()
    if rc > 0:
        handled: MQTTErrorCode = client._loop_rc_handle(rc)
        return handled
    return MQTTErrorCode.MQTT_ERR_SUCCESS


def connection_lost(client: mqtt.Client) -> None:
    """A write failed in our buffer, which paho cannot see: let paho run its usual lost-connection path."""
    client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)


class LazyProperties(Properties):
    """paho's MQTT v5 Properties, built only when a message carries some.

    paho makes a Properties object for every PUBLISH it receives, and each one builds two dictionaries of
    the whole property table before it looks at the packet: profiled under a burst, a fifth to a third of
    the runtime's CPU per message, for messages that almost never carry properties. This subclass defers
    that work until a property is present (or the table is asked for); a PUBLISH with property length 0
    costs nothing. It is a drop-in: ``isinstance`` holds, reading, setting, ``str`` and ``pack`` work.
    """

    def __init__(self, packetType: int):
        object.__setattr__(self, "packetType", packetType)

    def __getattr__(self, name: str) -> Any:  # only for attributes not set: the table, or an absent property
        if name in ("types", "names", "properties"):
            Properties.__init__(self, self.packetType)  # type: ignore[no-untyped-call]
            return object.__getattribute__(self, name)
        raise AttributeError(name)

    def unpack(self, buffer: Any) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":  # property length 0: the common case, nothing to build
            return self, 1
        length, header = _varint(buffer)
        if length > MAX_PROPERTY_BYTES:
            # paho's parser slices the buffer once per property: quadratic, ~26 s of CPU for 1 MB of user
            # properties. Past the cap nothing is parsed: the bytes are skipped, and the runtime refuses the
            # message as too large from ``packed_bytes`` alone.
            object.__setattr__(self, "packed_bytes", header + length)
            return self, header + length
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        object.__setattr__(self, "packed_bytes", result[1])  # what a stranger sent: the runtime bounds it
        return result


def _varint(buffer: Any) -> tuple[int, int]:
    """An MQTT Variable Byte Integer at the start of ``buffer``: (value, bytes it took). A malformed one (more
    than 4 bytes, or cut short) reads as larger than any cap."""
    value = 0
    for i in range(4):
        if i >= len(buffer):
            break
        byte = buffer[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    return MAX_PROPERTY_BYTES + 1, min(len(buffer), 4)


def _install_lazy_properties() -> list[str]:
    """Where paho parses an incoming PUBLISH (client.py in 2.1, _packet.py in 2.2), use LazyProperties."""
    import importlib

    installed = []
    for name in ("paho.mqtt._packet", "paho.mqtt.client"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "Properties", None) is Properties:
            module.Properties = LazyProperties  # type: ignore[attr-defined]
            installed.append(name)
    return installed


INSTALLED_IN = _install_lazy_properties()


def property_bytes(props: Properties | None) -> int:
    """How many bytes of properties a received message carried (0 for none)."""
    if props is None:
        return 0
    size = getattr(props, "packed_bytes", None)
    if size is None:
        if isinstance(props, LazyProperties) and "names" not in vars(props):
            return 0  # never unpacked past the empty table
        size = len(props.pack())  # type: ignore[no-untyped-call]  # a paho without our hook: measure
    return int(size)


def new_properties(packet_type: int) -> Properties:
    """paho's Properties constructor carries no annotations; this is its one typed doorway."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def subscribe_properties(subscription_id: int) -> Properties:
    """SUBSCRIBE properties naming the subscription: each message it delivers carries the id back."""
    props = new_properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = subscription_id
    return props


def connect_properties(*, session_expiry: int, receive_maximum: int, maximum_packet_size: int | None) -> Properties:
    """CONNECT properties: how long the broker keeps our session, how many unacknowledged QoS 1 inputs it may
    send us, and (so that a huge message is refused by the broker, not buffered by us) the largest packet."""
    props = new_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    props.ReceiveMaximum = receive_maximum
    if maximum_packet_size:
        props.MaximumPacketSize = maximum_packet_size
    return props


check()
