"""The seam: every use of paho-mqtt beyond its public API, in one place, each with why.

paho runs its network loop on a thread of its own unless the caller drives it, and has no public hook to
wrap its socket, to close it without a DISCONNECT, or to count what waits in its queues. The runtime
needs all three (see link.py). These attributes exist in the paho-mqtt versions pinned in pyproject.toml;
``check`` runs at import and fails with one clear line if a paho release renames them, and
tests/test_paho_seam.py exercises each against a real broker.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = [
    "PAHO_VERSION",
    "check",
    "socket_of",
    "replace_socket",
    "close_socket",
    "connection_lost",
    "unsent_packets",
    "unacknowledged",
]

PAHO_VERSION: str = paho.mqtt.__version__

# Instance attributes and methods we use, and what for.
_REQUIRED = {
    "_sock": "the socket, which link.py wraps in a buffer (no public setter)",
    "_out_packet": "packets paho has not yet written (pending work)",
    "_out_messages": "QoS>0 messages not yet acknowledged by the broker",
    "_sock_close": "closes the socket without sending DISCONNECT (a v5 probe that got no answer)",
    "_loop_rc_handle": "tells paho its connection is lost when our buffered write fails",
}


def check(client: mqtt.Client | None = None) -> None:
    """Raise ImportError naming what is missing if this paho-mqtt lacks an attribute we rely on."""
    client = client or mqtt.Client(CallbackAPIVersion.VERSION2)
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
    """Close without DISCONNECT: used when a v5 CONNECT got no answer and we retry with v3.1.1."""
    if client.socket() is not None:
        client._sock_close()


def connection_lost(client: mqtt.Client) -> None:
    """A write failed in our buffer, which paho cannot see: let paho run its usual lost-connection path."""
    client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)


def unsent_packets(client: mqtt.Client) -> int:
    """Packets queued in paho that have not been handed to the socket yet."""
    return len(client._out_packet)


def unacknowledged(client: mqtt.Client) -> int:
    """Outgoing QoS>0 messages the broker has not acknowledged yet (in flight or queued behind the window)."""
    return len(client._out_messages)


check()
