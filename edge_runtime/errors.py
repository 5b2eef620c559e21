"""The few exception classes the runtime raises. Each carries the data a caller needs to act on it."""

from __future__ import annotations

__all__ = ["EdgeRuntimeError", "ConfigError", "BundleError", "PayloadError", "BrokerError"]


class EdgeRuntimeError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class ConfigError(EdgeRuntimeError):
    """A config file that cannot be used. ``key`` is the dotted path (``routes[0].qos``), ``line`` 1-based."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None, line: int | None = None):
        self.path, self.key, self.line = path, key, line
        where = path or "config"
        if line is not None:
            where += f":{line}"
        prefix = f"{where}: " if path else ""
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class BundleError(EdgeRuntimeError):
    """A model bundle that must not be served (missing, tampered with, or not matching its manifest)."""

    def __init__(self, message: str, *, bundle: str):
        self.bundle = bundle
        super().__init__(f"bundle {bundle}: {message}")


class PayloadError(EdgeRuntimeError):
    """An input that cannot be served. ``code`` is short and stable (for machines), ``detail`` is for people."""

    def __init__(self, code: str, detail: str, *, id: object = None):
        self.code, self.detail, self.id = code, detail, id
        super().__init__(f"{code}: {detail}")


class BrokerError(EdgeRuntimeError):
    """The broker could not be started or reached."""
