"""edge-runtime: MQTT streams in, micro-batched ONNX Runtime inference, results out.

The public surface is small: the errors below and ``__version__``. Everything else is reached through
its subpackage (``edge_runtime.config``, ``edge_runtime.serving.runtime``, ...); modules whose names
start with ``_`` are private.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    BrokerError,
    BundleError,
    ConfigError,
    EdgeRuntimeError,
    PayloadError,
    ReleaseError,
    UnknownNameError,
)

try:
    __version__: str = version("edge-runtime")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "EdgeRuntimeError",
    "ConfigError",
    "BundleError",
    "PayloadError",
    "BrokerError",
    "ReleaseError",
    "UnknownNameError",
]
