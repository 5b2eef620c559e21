"""What the fleet agent needs from the runtime that serves the models: a small interface of its own.

The agent never touches routes, engines or the serving loop: it asks its host to load a verified bundle
(on the agent's thread), to run it as a shadow beside the live model, how the shadow compares, and to
promote it or drop it. The runtime implements this (serving/fleet_host.py), applying each change between
two batches of its loop; tests implement it without any runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["Host", "ShadowReport"]


@dataclass(frozen=True)
class ShadowReport:
    """The candidate against the live model, over every route that serves the model, since the shadow started."""

    rows: int  # compared
    agreed: int
    errors: int  # rows the candidate failed on
    live_p95_ms: float | None  # per row
    shadow_p95_ms: float | None
    drift_alerts: int  # drift alerts raised on those routes since the shadow started
    latency_samples: int = 0  # batches timed on each side (the fewer of the two)


class Host(Protocol):
    def live_version(self, model: str) -> str:
        """The version serving ``model`` now."""
        ...

    def load(self, model: str, bundle: Path) -> object:
        """Load, verify (the device's trusted keys) and warm up ``bundle`` for ``model``, on the caller's
        thread; raise EdgeRuntimeError saying why it cannot serve. Returns what the other calls take."""
        ...

    def start_shadow(self, model: str, candidate: object, *, fraction: float) -> None:
        """Run ``candidate`` beside the live model on ``fraction`` of the inputs; raise EdgeRuntimeError if
        it cannot (another input, another task). Returns once the shadow runs."""
        ...

    def shadow_report(self, model: str) -> ShadowReport | None:
        """How the shadow of ``model`` compares so far (None: no shadow runs). Any thread."""
        ...

    def stop_shadow(self, model: str) -> None:
        """Drop the shadow of ``model``; the live model goes on serving as it was."""
        ...

    def promote(self, model: str, candidate: object, bundle: Path) -> None:
        """Serve ``candidate`` (from ``bundle``) instead of the live model, between two batches, and drop its
        shadow; raise EdgeRuntimeError if the routes cannot use it (the live model then goes on serving)."""
        ...
