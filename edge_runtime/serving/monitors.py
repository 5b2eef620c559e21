"""A route's model monitoring in the loop: drift against the bundle's reference, a shadow model, sample capture.

Built per route from its config and its bundle (a bundle without reference statistics has no drift
monitor). A reload of the route's model brings a new drift monitor only when the new bundle's reference
differs (the same reference keeps the window, and an open alert stays open); a reload of its shadow model
hands the shadow runner the new instance (``shadow_changed``).

Drift counts are updated on the loop's thread (vectorised, about a microsecond per row); the shadow
model and the capture writer work on threads of their own behind bounded queues, so neither delays a
result. Drift alerts go to ``edge-runtime/<client_id>/alerts``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..bundle.manifest import Manifest
from ..config import RouteConfig
from ..engines import InferenceEngine as Engine
from ..monitoring.capture import CaptureWriter
from ..monitoring.drift import DriftMonitor
from ..monitoring.shadow import ShadowRunner, incompatibility
from ..tasks.codecs import encode
from .observers import ServedBatch

__all__ = ["RouteMonitors", "alerts_topic"]

log = logging.getLogger("edge_runtime")

Publish = Callable[[str, bytes, int, bool], object]


def alerts_topic(client_id: str) -> str:
    return f"edge-runtime/{client_id}/alerts"


class RouteMonitors:
    """Drift, shadow and capture for one route; an observer of its batches."""

    def __init__(
        self,
        config: RouteConfig,
        *,
        route: str,
        engine: Engine,
        shadow: Engine | None,
        publish: Publish,
        client_id: str,
    ):
        self.config, self.route = config, route
        self._publish, self._alerts = publish, alerts_topic(client_id)
        self.drift: DriftMonitor | None = None
        self.shadow: ShadowRunner | None = None
        self.capture: CaptureWriter | None = None
        # A fleet release's candidate (serving/fleet_host.py), beside the configured shadow; set and cleared by
        # the loop between batches. Not in the metrics: the device's models topic says how it compares.
        self.candidate: ShadowRunner | None = None
        self.drift_alerts = 0  # drift alerts raised so far (the fleet's judge asks for new ones)
        self._shadow_manifest: Manifest | None = None
        self._live_manifest = engine.manifest
        self.model_changed(engine, self.prepare(engine))
        if shadow is not None and config.shadow is not None:
            problem = incompatibility(engine.manifest, shadow.manifest)
            if problem is not None:
                from ..errors import ConfigError

                raise ConfigError(f"shadow model {config.shadow!r}: {problem}", key="routes.shadow")
            self._shadow_manifest = shadow.manifest
            self.shadow = ShadowRunner(
                _shadow_run(shadow),
                model=config.shadow,
                version=shadow.manifest.version,
                fraction=config.shadow_fraction,
                rtol=config.shadow_tolerance,
            )
        c = config.capture
        if c is not None:
            self.capture = CaptureWriter(
                c.dir, max_mb=c.max_mb, fraction=c.fraction, low_confidence=c.low_confidence, drift=c.drift
            )

    def prepare(self, engine: Engine) -> DriftMonitor | None:
        """What ``engine`` needs here, changing nothing: its drift monitor (None without a reference). Raises
        ValueError for a reference this runtime cannot read, or a shadow model it no longer matches."""
        if self._shadow_manifest is not None:
            problem = incompatibility(engine.manifest, self._shadow_manifest)
            if problem is not None:
                raise ValueError(f"shadow model {self.config.shadow!r}: {problem}")
        reference = (engine.manifest.model_extra or {}).get("reference")
        c = self.config
        if self.drift is not None and reference == self.drift.reference:
            return self.drift  # the same reference: the window and the alert state go on
        if reference and c.drift_window:
            return DriftMonitor(
                reference, window=c.drift_window, threshold=c.drift_threshold, route=self.route, model=c.model
            )
        return None

    def model_changed(self, engine: Engine, drift: DriftMonitor | None) -> None:
        """A (new) model serves the route: with a new reference, close an open alert and measure against it."""
        if self.drift is not None and drift is not self.drift:
            for event in self.drift.retire():
                self._alert(event)
        self.images = hasattr(engine.task, "annotate")  # image tasks: capture the frames as received
        self.drift = drift
        self._live_manifest = engine.manifest

    def check_shadow(self, shadow: Engine) -> None:
        """Raise ValueError when a reloaded shadow model can no longer shadow this route's model."""
        problem = incompatibility(self._live_manifest, shadow.manifest)
        if problem is not None:
            raise ValueError(f"shadow model {self.config.shadow!r}: {problem}")

    def shadow_changed(self, shadow: Engine) -> None:
        """The shadow model was reloaded: the runner runs this instance (the route's own) from now on."""
        if self.shadow is not None:
            self._shadow_manifest = shadow.manifest
            self.shadow.replace(_shadow_run(shadow), version=shadow.manifest.version)

    def _alert(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "drift":
            self.drift_alerts += 1
        log.warning("route %s: %s (score %s)", self.route, event.get("kind"), event.get("score"))
        self._publish(self._alerts, encode(event), 1, False)

    def observe(self, batch: ServedBatch) -> None:
        results = batch.results()
        if batch.rows is None or results is None:
            return  # a batch served row by row: not measured (it is rare and says little about drift)
        if self.drift is not None:
            for event in self.drift.observe(batch.rows, batch.outputs, results):
                self._alert(event)
        for shadow in (self.shadow, self.candidate):
            if shadow is not None:
                shadow.offer(batch.rows, results, metas=batch.metas, live_seconds=batch.t_inferred - batch.t_decoded)
        if self.capture is not None:
            images = self.images and all(i.payload for i in batch.inputs)
            self.capture.offer(
                batch.rows,
                results,
                ids=batch.ids,
                topics=[i.topic for i in batch.inputs],
                payloads=[i.payload for i in batch.inputs] if images else None,
                drift_active=self.drift is not None and self.drift.alert,
            )

    def tick(self, now: float) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.drift is not None:
            out["drift"] = self.drift.snapshot()
        if self.shadow is not None:
            out["shadow"] = self.shadow.snapshot()
        if self.capture is not None:
            out["capture"] = self.capture.snapshot()
        return out

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        if self.capture is not None:
            self.capture.close()


def _shadow_run(shadow: Engine) -> Callable[[Any, list[Any]], list[dict[str, Any]]]:
    task, manifest = shadow.task, shadow.manifest
    return lambda rows, metas: task.results(manifest, shadow.run(rows), list(metas))
