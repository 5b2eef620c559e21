"""The control topic: ``{"reload": "<model>"}`` (or ``"*"``) on ``edge-runtime/<client_id>/control``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

__all__ = ["parse_control"]

log = logging.getLogger("edge_runtime")


def parse_control(payload: bytes, request: Callable[[str | None], list[str]]) -> list[str]:
    """Ask ``request`` for the reload the message names (None: every model); return what will be reloaded.

    Anything else is ignored with a warning: a control message never raises.
    """
    try:
        target = orjson.loads(payload)["reload"]
        names = request(None if target == "*" else str(target))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        names = []
    if not names:
        log.warning('control message ignored (expected {"reload": "<model>"} or "*"): %r', payload[:200])
    return names
