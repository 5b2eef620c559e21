"""The few exception classes the runtime raises. Each carries the data a caller needs to act on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vocabulary import ErrorCode

__all__ = [
    "EdgeRuntimeError",
    "ConfigError",
    "BundleError",
    "PayloadError",
    "BrokerError",
    "ReleaseError",
    "UnknownNameError",
    "first_line",
]


class EdgeRuntimeError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class ConfigError(EdgeRuntimeError):
    """A config file that cannot be used. ``key`` is the dotted path (``routes[0].qos``), ``line`` 1-based."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None, line: int | None = None):
        self.path, self.key, self.line = path, key, line
        self.message = message  # without the path, line and key (for callers that name the key their own way)
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

    def __init__(self, code: ErrorCode, detail: str, *, id: object = None):
        self.code, self.detail, self.id = code, detail, id
        super().__init__(f"{code}: {detail}")


class BrokerError(EdgeRuntimeError):
    """The broker could not be started or reached."""


class ReleaseError(EdgeRuntimeError):
    """A fleet release (record, chunk or archive) that must not be used. ``release`` is its id when known."""

    def __init__(self, message: str, *, release: str | None = None):
        self.release = release
        super().__init__(message)


class UnknownNameError(EdgeRuntimeError, LookupError):
    """A name that no registry entry has (a task, an engine, a converter, a device profile).

    Both an ``EdgeRuntimeError`` (the CLI prints it as one line) and a ``LookupError`` (what a failed
    lookup is in Python). ``known`` lists what is available; ``broken`` the plug-ins that could not be
    imported, with why (usually an optional extra that is not installed).
    """

    def __init__(
        self, kind: str, name: str, known: Sequence[str], *, hint: str = "", broken: Mapping[str, str] | None = None
    ):
        self.kind, self.name, self.known = kind, name, list(known)
        self.broken = dict(broken or {})
        message = f"unknown {kind} {name!r}; known: {', '.join(self.known) or '(none)'}"
        for reason in self.broken.values():
            message += f" (not available here: {reason})"
        if hint:
            message += f" {hint}"
        super().__init__(message)


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception as one line for a log, a report or an error message: its first line, else its type."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]
