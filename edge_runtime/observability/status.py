"""``edge-runtime status``: a live table of the runtimes on a broker, from their status and metrics topics, and
one of the fleet devices' models (what serves, what the fleet asks for, how far a release got).

Everything shown is what the runtimes publish (retained status and models, periodic metrics), so it works for one
device or a fleet, with nothing but MQTT. Anyone may publish on those topics: every message is validated
(observability.schemas) and junk is skipped with a debug line and counted, never shown or trusted; the
number of runtimes tracked is bounded, and names are made printable before they reach the terminal.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from .schemas import DriftState, MetricsMessage, ModelRollout, ModelsMessage, StatusMessage, parse

if TYPE_CHECKING:
    from ..config import BrokerConfig

__all__ = ["StatusBoard", "watch_status"]

log = logging.getLogger("edge_runtime.status")

_COLUMNS = ("RUNTIME", "STATE", "ROUTE", "MODEL", "IN/s", "OUT/s", "P99 ms", "ERRORS", "DROPPED", "QUEUE", "DRIFT")
# Fleet devices (edge-runtime/<client_id>/models): what each model serves, what the fleet asks, how far it got.
MODEL_COLUMNS = ("DEVICE", "FLEET", "MODEL", "ACTUAL", "DESIRED", "PHASE", "CANARY", "PROGRESS", "NOTE")
_TOPICS = ("status", "metrics", "models")
# Runtimes tracked at most: a bound on memory whatever client ids junk publishers invent.
MAX_RUNTIMES = 1000
_CELL = 60  # characters shown of a name at most


def _printable(text: str) -> str:
    """A name from the network as it may be shown on a terminal: no escape sequences, not too long."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: _CELL + 1])
    return clean if len(clean) <= _CELL else clean[: _CELL - 3] + "..."


class StatusBoard:
    """The latest valid status and metrics per runtime; rates come from two successive metrics messages."""

    def __init__(self, *, max_runtimes: int = MAX_RUNTIMES) -> None:
        self.status: dict[str, StatusMessage] = {}
        self.metrics: dict[str, MetricsMessage] = {}
        self.models: dict[str, ModelsMessage] = {}
        self.rates: dict[str, dict[str, tuple[float, float]]] = {}
        self.skipped = 0
        self.max_runtimes = max_runtimes
        self.lock = threading.Lock()

    def update(self, topic: str, payload: bytes | bytearray) -> None:
        """Take one message; anything but a valid status or metrics message is skipped (and counted)."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "edge-runtime" or parts[2] not in _TOPICS:
            return
        name, kind = parts[1], parts[2]
        message: StatusMessage | MetricsMessage | ModelsMessage | None
        if kind == "status":
            message, why = parse(StatusMessage, payload)
        elif kind == "metrics":
            message, why = parse(MetricsMessage, payload)
        else:
            message, why = parse(ModelsMessage, payload)
        with self.lock:
            if message is None:
                self._skip(topic, why)
                return
            known = name in self.status or name in self.metrics or name in self.models
            if not known and len(set(self.status) | set(self.metrics) | set(self.models)) >= self.max_runtimes:
                self._skip(topic, f"more than {self.max_runtimes} runtimes")
                return
            if isinstance(message, StatusMessage):
                self.status[name] = message
            elif isinstance(message, ModelsMessage):
                self.models[name] = message
            else:
                self.rates[name] = _rates(self.metrics.get(name), message)
                self.metrics[name] = message

    def _skip(self, topic: str, why: str) -> None:
        self.skipped += 1
        log.debug("skipped a message on %r: %s", topic[:200], why)

    def rows(self) -> list[tuple[str, ...]]:
        with self.lock:
            out = []
            for name in sorted(set(self.status) | set(self.metrics)):
                status = self.status.get(name)
                state: str = status.state if status else "?"
                if status and status.reload and not status.reload.ok:
                    state += " (reload failed)"
                metrics = self.metrics.get(name)
                routes = metrics.routes if metrics else {}
                shown = _printable(name)
                if not routes:
                    out.append((shown, state) + ("-",) * (len(_COLUMNS) - 2))
                rates = self.rates.get(name, {})
                for route, r in sorted(routes.items()):
                    rin, rout = rates.get(route, (None, None))
                    out.append(
                        (
                            shown,
                            state,
                            _printable(route),
                            _printable(r.model),
                            "-" if rin is None else f"{rin:.1f}",
                            "-" if rout is None else f"{rout:.1f}",
                            f"{r.latency.p99_ms:g}",
                            str(sum(r.errors.values())),
                            str(sum(r.dropped.values())),
                            str(r.queue.depth),
                            _drift(r.drift),
                        )
                    )
            return out

    def render_models(self, devices: set[str] | None = None) -> str:
        """The fleet devices' table alone (of ``devices``, or all)."""
        return "\n".join(_table([MODEL_COLUMNS, *self.model_rows(devices)]))

    def model_rows(self, devices: set[str] | None = None) -> list[tuple[str, ...]]:
        """One row per fleet device (of ``devices``, or all) and model it manages."""
        with self.lock:
            out: list[tuple[str, ...]] = []
            for name in sorted(self.models if devices is None else set(self.models) & devices):
                message = self.models[name]
                for model, m in sorted(message.models.items()):
                    out.append(
                        (
                            _printable(name),
                            _printable(message.fleet or "-"),
                            _printable(model),
                            _printable(m.actual or "-"),
                            _printable(m.desired or "-"),
                            _printable(m.phase),
                            "-" if m.canary is None else ("yes" if m.canary else "no"),
                            _progress(m),
                            _printable(m.note or ""),
                        )
                    )
            return out

    def render(self) -> str:
        rows = [_COLUMNS, *self.rows()]
        lines = _table(rows)
        if len(rows) == 1:
            lines.append("(no runtime has published status or metrics yet)")
        fleet = self.model_rows()
        if fleet:
            lines += ["", *_table([MODEL_COLUMNS, *fleet])]
        if self.skipped:
            lines.append(f"({self.skipped} messages on runtime topics were not valid status or metrics: skipped)")
        return "\n".join(lines)


def _rates(old: MetricsMessage | None, new: MetricsMessage) -> dict[str, tuple[float, float]]:
    """Inputs and results per second per route between two metrics messages (none across a restart)."""
    if old is None:
        return {}
    dt = new.uptime_s - old.uptime_s
    if dt <= 0:
        return {}
    out = {}
    for route, r in new.routes.items():
        before = old.routes.get(route)
        if before is not None and r.received >= before.received and r.results >= before.results:
            out[route] = ((r.received - before.received) / dt, (r.results - before.results) / dt)
    return out


def watch_status(
    broker: BrokerConfig | str,
    *,
    duration: float | None = None,
    refresh: float = 1.0,
    out: TextIO = sys.stdout,
) -> int:
    """Show the table until Ctrl-C (or ``duration`` seconds); redrawn in place on a terminal."""
    from ..mqtt.client import connect_client

    board = StatusBoard()
    client = connect_client(
        broker,
        on_message=lambda _c, _u, m: board.update(m.topic, m.payload),
        subscriptions=[("edge-runtime/+/status", 1), ("edge-runtime/+/metrics", 0), ("edge-runtime/+/models", 1)],
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


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _progress(m: ModelRollout) -> str:
    """How far the release in progress got: chunks while downloading, the shadow's comparison while judged."""
    if m.progress is not None and m.phase == "downloading":
        return f"{m.progress.chunks}/{m.progress.of} chunks"
    if m.shadow is not None and m.shadow.agreement is not None:
        return f"agreement {m.shadow.agreement:.3f} over {m.shadow.rows} rows"
    return "-"


def _drift(state: DriftState | None) -> str:
    """The route's drift score, with ``ALERT`` while its drift alert is active; ``-`` without monitoring."""
    if state is None or state.score is None:
        return "-"
    return f"{state.score:.2f}" + (" ALERT" if state.alert else "")
