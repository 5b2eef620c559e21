"""The link as the runtime sees it: a small protocol, so that the serving core can be driven without a broker.

``MqttLink`` (link.py) is the real one. The tests drive the runtime through a fake one built on the same
``Delivery`` state (delivery.py), with a model of the broker deciding when acknowledgements come, with which
reason codes, and when connections drop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import BrokerConfig
from .delivery import Inbound, OnDone, Refusal

__all__ = ["Link", "LinkSpec", "LinkFactory", "Subscription"]


@dataclass(frozen=True)
class Subscription:
    filter: str
    qos: int
    # MQTT v5 Subscription Identifier (1..): each copy of an input says which subscription it came through.
    identifier: int | None = None


@dataclass(frozen=True)
class LinkSpec:
    """What the runtime asks of its link."""

    broker: BrokerConfig
    on_message: Callable[[Inbound], None]
    subscriptions: Sequence[Subscription] = ()
    persistent: bool = False  # keep the session (and QoS 1 inputs) while we are away
    will: tuple[str, bytes] | None = None
    max_packet: int | None = None  # the largest packet we accept (MQTT v5 Maximum Packet Size)
    receive_maximum: int = 1024  # QoS 1 inputs the broker may send before we acknowledge
    max_outgoing_bytes: int = 64 << 20
    # Where the filters our broker session holds are remembered across restarts (None: nowhere), so that
    # the ones the config no longer has are unsubscribed.
    state_file: Path | None = None
    on_connected: Callable[[], None] | None = None  # after every (re)connect, once inputs flow
    # How many packets the link may read now (the runtime's room for inputs; 0: leave them in TCP). None: no limit.
    read_budget: Callable[[], int] | None = None


class Link(Protocol):
    """One MQTT connection, pumped by ``poll`` from the runtime's thread (see link.py for the real one)."""

    connected: bool  # results may leave, inputs may arrive
    subscribed: bool  # and every subscription is in place (on_connected has run)
    counters: Counter[str]

    def connect(self, timeout: float | None = None) -> None: ...

    def poll(
        self, timeout: float, *, budget: int | None = None, reconnect: bool = True, wake: Sequence[int] = ()
    ) -> None:
        """Wait up to ``timeout`` for traffic (or a ``wake`` descriptor); take in up to ``budget`` packets (default:
        what the spec's ``read_budget`` says)."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Any = None,
        on_done: OnDone | None = None,
    ) -> Refusal | None: ...

    def ack(self, inbound: Inbound) -> None: ...

    def has_room(self, n: int = 1) -> bool: ...

    def flush_writes(self) -> None: ...

    def drain(self, timeout: float) -> bool: ...

    def close(self) -> None: ...

    def pending_out(self) -> int: ...

    def state(self) -> dict[str, int]: ...


LinkFactory = Callable[[LinkSpec], Link]
