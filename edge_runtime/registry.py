"""One small registry for every kind of plug-in (tasks, engines, converters, device profiles).

As skl2onnx keeps one registry per kind of converter: ``register`` refuses a second entry under the same
name, and a failed lookup raises ``UnknownNameError`` saying what is available. Plug-ins are discovered
one way: each registry names the modules that register entries when imported, and imports them the first
time a name is missing (so OpenCV, skl2onnx or OpenVINO are only imported when something asks for them).
A plug-in module that cannot be imported is remembered and named in the lookup error, with its reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` is how errors call them ("task", "device profile", ...)."""

    def __init__(self, kind: str, *, plugins: tuple[str, ...] = (), hint: str = "") -> None:
        self.kind = kind
        self._plugins = plugins
        self._hint = hint
        self._entries: dict[str, T] = {}
        self._loaded = False  # every plug-in module imported (or tried)
        self._imported: set[str] = set()
        self._loading = False  # importing a plug-in now: its own registrations must not import the rest
        self._broken: dict[str, str] = {}  # plug-in module -> why it could not be imported

    def register(self, name: str, entry: T) -> T:
        if not self._loading:  # a name that a plug-in not imported yet registers is taken all the same
            self.load_plugins()
        if name in self._entries:
            raise ValueError(
                f"a {self.kind} named {name!r} is already registered; choose another name or unregister it first"
            )
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries:
            self.load_plugins(until=name)
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names(), hint=self._hint, broken=self._broken) from None

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def values(self) -> list[T]:
        self.load_plugins()
        return [self._entries[n] for n in sorted(self._entries)]

    def find(self, predicate: Callable[[T], bool]) -> T | None:
        """The first entry (by name) for which ``predicate`` holds, or None."""
        return next((e for e in self.values() if predicate(e)), None)

    def load_plugins(self, *, until: str | None = None) -> None:
        """Import the plug-in modules not imported yet, in order; with ``until``, stop as soon as that name is
        registered, so that looking up a sensor task never imports OpenCV (about 14 MB of a small board's RAM)."""
        for module in self._plugins:
            if self._loaded or (until is not None and until in self._entries):
                return
            if module in self._imported:
                continue
            self._imported.add(module)
            self._loading = True
            try:
                importlib.import_module(module)
            except ImportError as err:  # an optional extra that is not installed: say so on lookup
                self._broken[module] = str(err)
            finally:
                self._loading = False
        self._loaded = True

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
