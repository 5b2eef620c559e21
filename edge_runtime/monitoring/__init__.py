"""Model monitoring on the device: reference statistics, drift, shadow models and sample capture.

Self-contained parts the serving loop calls with whole batches; none of them blocks the loop or raises
because of what arrived on the network. ``reference`` runs in the converter; ``DriftMonitor`` on the
loop's thread; ``ShadowRunner`` and ``CaptureWriter`` hand their work to threads of their own.
"""

from __future__ import annotations

from .capture import CaptureWriter, read_capture
from .config import CaptureConfig, MonitoringFields, check_monitoring
from .drift import DriftMonitor
from .reference import compute_reference, psi, reference_for_model, reference_from_images
from .shadow import ShadowRunner, agree, incompatibility

__all__ = ["CaptureConfig", "CaptureWriter", "DriftMonitor", "MonitoringFields", "ShadowRunner", "agree",
           "check_monitoring", "compute_reference", "incompatibility", "psi", "read_capture", "reference_for_model",
           "reference_from_images"]
