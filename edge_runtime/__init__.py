"""edge-runtime: MQTT streams in, micro-batched ONNX Runtime inference, results out."""

__version__ = "0.1.0"

from .errors import BrokerError, BundleError, ConfigError, EdgeRuntimeError, PayloadError  # noqa: E402

__all__ = [
    "__version__",
    "EdgeRuntimeError",
    "ConfigError",
    "BundleError",
    "PayloadError",
    "BrokerError",
]
