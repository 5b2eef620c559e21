"""The control topic: ``{"reload": "<model>"}`` (or ``"*"`` for every configured model) on
``edge-runtime/<client_id>/control``.

Anyone who can publish there is a stranger too: a retained message is ignored (it would replay at every
start), anything but a reload of a configured model is ignored with a rate-limited warning, and reloads
themselves are coalesced and rate limited by the reloader.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ..observability.ratelog import RateLimitedLog

__all__ = ["parse_control"]


def parse_control(
    payload: bytes, request: Callable[[str | None], list[str]], *, retained: bool, log: RateLimitedLog
) -> list[str]:
    """Ask ``request`` for the reload the message names (None: every model); return what will be reloaded."""
    if retained:
        log.log("control-retained", "retained control message ignored (control messages act once, when sent)")
        return []
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    target = doc.get("reload") if isinstance(doc, dict) and len(doc) == 1 else None
    names = request(None if target == "*" else target) if isinstance(target, str) else []
    if not names:
        log.log(
            "control-ignored",
            'control message ignored (expected {"reload": "<configured model>"} or "*"): %r',
            payload[:200],
        )
    return names
