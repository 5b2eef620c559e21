"""Model monitoring on the device: reference statistics, drift, shadow models and sample capture.

Self-contained parts the serving loop calls with whole batches; none of them blocks the loop or raises
because of what arrived on the network. ``reference`` runs in the converter; ``DriftMonitor`` on the
loop's thread; ``ShadowRunner`` and ``CaptureWriter`` hand their work to threads of their own.

How the loop uses them (per route; ``rc`` its config, ``engine`` its model):

    ref = engine.manifest.model_extra.get("reference")
    drift = DriftMonitor(ref, window=rc.drift_window, threshold=rc.drift_threshold, route=name, model=rc.model) \
        if ref and rc.drift_window else None
    shadow = ShadowRunner(lambda rows, metas: e.task.results(e.manifest, e.run(rows), metas), model=rc.shadow,
                          fraction=rc.shadow_fraction, rtol=rc.shadow_tolerance) if rc.shadow else None  # e: its Engine
    capture = CaptureWriter(c.dir, max_mb=c.max_mb, fraction=c.fraction, low_confidence=c.low_confidence,
                            drift=c.drift) if (c := rc.capture) else None

    # after a batch's results are published (batch: the stacked rows given to engine.run):
    for event in drift.observe(batch, outputs, results):     # -> publish on edge-runtime/<client_id>/alerts
        ...
    shadow.offer(batch, results, metas=metas, live_seconds=t_infer)
    capture.offer(batch, results, ids=ids, topics=topics, payloads=payloads_if_image_route,
                  drift_active=drift is not None and drift.alert)

    # metrics: routes[name]["drift"] = drift.snapshot(); ["shadow"] = shadow.snapshot(); ["capture"] = ...
    # reload: publish drift.retire(), then a new DriftMonitor from the new manifest; shutdown: close() both.
"""

from __future__ import annotations

from .capture import CaptureWriter, read_capture
from .config import CaptureConfig, MonitoringFields, check_monitoring
from .drift import DriftMonitor
from .reference import compute_reference, psi, reference_for_model, reference_from_images
from .shadow import ShadowRunner, agree, incompatibility

__all__ = [
    "CaptureConfig",
    "CaptureWriter",
    "DriftMonitor",
    "MonitoringFields",
    "ShadowRunner",
    "agree",
    "check_monitoring",
    "compute_reference",
    "incompatibility",
    "psi",
    "read_capture",
    "reference_for_model",
    "reference_from_images",
]
