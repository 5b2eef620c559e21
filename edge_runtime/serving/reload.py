"""Hot reload: a new bundle is loaded, checked and warmed beside the serving one, and swapped in only if good.

A bundle is replaced by swapping its directory atomically (a symlink renamed over the old one, or a
``mv`` of a fresh directory), or a reload is asked for on the runtime's control topic. Loading and
warming happen on a thread of their own so the serving loop never waits for them; the loop picks up
the outcome between two batches. A bundle that fails any check leaves the old model serving.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..bundle import MANIFEST
from ..engines import Engine
from ..errors import EdgeRuntimeError

__all__ = ["Reloader", "Outcome", "fingerprint"]

log = logging.getLogger("edge_runtime")


@dataclass(frozen=True)
class Outcome:
    model: str
    engine: Engine | None  # None: the new bundle was refused, for ``reason``
    reason: str | None = None


def fingerprint(bundle: Path) -> tuple[str, str] | None:
    """What identifies a bundle's content cheaply: where the directory really is, and its manifest's hash.

    The manifest names the model's sha256, so a new model always changes it; the model file itself is
    only read (and verified) when this changes.
    """
    try:
        real = os.path.realpath(bundle)
        with open(os.path.join(real, MANIFEST), "rb") as f:
            return real, hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None  # mid-swap or gone: keep serving, look again next time


class Reloader:
    """Watches bundle directories; loads what changed (or what is asked for) on its own thread."""

    def __init__(
        self, bundles: dict[str, Path], load: Callable[[str], Engine], *, watched: set[str], poll_s: float = 2.0
    ):
        self._bundles = bundles
        self._watched = watched
        self._load = load
        self._poll_s = poll_s
        self._seen = {name: fingerprint(path) for name, path in bundles.items()}
        self._asked: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edge-runtime-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._asked.put("")  # wake the thread
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def request(self, model: str | None = None) -> list[str]:
        """Ask for a reload of one model (or all); returns the names that will be reloaded."""
        names = list(self._bundles) if model is None else [model] if model in self._bundles else []
        for name in names:
            self._asked.put(name)
        return names

    def _watch(self) -> None:
        timeout = self._poll_s if self._watched else None
        while not self._stop.is_set():
            try:
                asked = {self._asked.get(timeout=timeout)}
            except queue.Empty:
                asked = set()
            if self._stop.is_set():
                return
            for name, path in self._bundles.items():
                now = fingerprint(path) if name in self._watched else None
                changed = now is not None and now != self._seen[name]
                if name in asked or changed:
                    if now is not None:
                        self._seen[name] = now
                    self.outcomes.put(self._try(name))

    def _try(self, name: str) -> Outcome:
        try:
            engine = self._load(name)
        except EdgeRuntimeError as err:
            log.error("reload of model %s refused, the old one keeps serving: %s", name, err)
            return Outcome(name, None, str(err))
        except Exception as err:
            log.exception("reload of model %s failed", name)
            return Outcome(name, None, f"{type(err).__name__}: {err}")
        return Outcome(name, engine)
