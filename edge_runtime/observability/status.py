"""``edge-runtime status``: a live table of the runtimes on a broker, from their status and metrics topics.

Everything shown is what the runtimes publish (retained status, periodic metrics), so it works for one
device or a fleet, with nothing but MQTT.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

import orjson

__all__ = ["StatusBoard", "watch_status"]

_COLUMNS = ("RUNTIME", "STATE", "ROUTE", "MODEL", "IN/s", "OUT/s", "P99 ms", "ERRORS", "DROPPED", "QUEUE")


class StatusBoard:
    """The latest status and metrics per runtime; rates come from two successive metrics messages."""

    def __init__(self) -> None:
        self.status: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.rates: dict[tuple[str, str], tuple[float, float]] = {}
        self.lock = threading.Lock()

    def update(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "edge-runtime":
            return
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        name, kind = parts[1], parts[2]
        with self.lock:
            if kind == "status":
                self.status[name] = body
            elif kind == "metrics":
                self._rates(name, self.metrics.get(name), body)
                self.metrics[name] = body

    def _rates(self, name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if not old:
            return
        dt = new.get("uptime_s", 0) - old.get("uptime_s", 0)
        if dt <= 0:
            return
        for route, r in new.get("routes", {}).items():
            before = old.get("routes", {}).get(route, {})
            self.rates[(name, route)] = (
                (r["received"] - before.get("received", 0)) / dt,
                (r["results"] - before.get("results", 0)) / dt,
            )

    def rows(self) -> list[tuple[str, ...]]:
        with self.lock:
            out = []
            for name in sorted(set(self.status) | set(self.metrics)):
                state = self.status.get(name, {}).get("state", "?")
                if self.status.get(name, {}).get("reload", {}).get("ok") is False:
                    state += " (reload failed)"
                routes = self.metrics.get(name, {}).get("routes", {})
                if not routes:
                    out.append((name, state) + ("-",) * (len(_COLUMNS) - 2))
                for route, r in sorted(routes.items()):
                    rin, rout = self.rates.get((name, route), (None, None))
                    out.append(
                        (
                            name,
                            state,
                            route,
                            r.get("model", "?"),
                            "-" if rin is None else f"{rin:.1f}",
                            "-" if rout is None else f"{rout:.1f}",
                            f"{r['latency']['p99_ms']:g}",
                            str(sum(r["errors"].values())),
                            str(sum(r["dropped"].values())),
                            str(r.get("queue", {}).get("depth", 0)),
                        )
                    )
            return out

    def render(self) -> str:
        rows = [_COLUMNS, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        if len(rows) == 1:
            lines.append("(no runtime has published status or metrics yet)")
        return "\n".join(lines)


def watch_status(url: str, *, duration: float | None = None, refresh: float = 1.0, out: TextIO = sys.stdout) -> int:
    """Show the table until Ctrl-C (or ``duration`` seconds); redrawn in place on a terminal."""
    from ..mqtt.client import connect_client

    board = StatusBoard()
    client = connect_client(
        url,
        on_message=lambda _c, _u, m: board.update(m.topic, m.payload),
        subscriptions=[("edge-runtime/+/status", 1), ("edge-runtime/+/metrics", 0)],
    )
    live = out.isatty()
    end = None if duration is None else time.monotonic() + duration
    try:
        while end is None or time.monotonic() < end:
            time.sleep(refresh if end is None else max(0.0, min(refresh, end - time.monotonic())))
            if live:
                out.write("\x1b[H\x1b[2J" + board.render() + "\n")
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if not live:
        out.write(board.render() + "\n")
    return 0
