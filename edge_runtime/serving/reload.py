"""Hot reload: a new bundle is loaded, checked and warmed beside the serving one, and swapped in only if good.

A bundle is replaced by swapping its directory atomically (a symlink renamed over the old one, or a
``mv`` of a fresh directory), or a reload is asked for on the runtime's control topic. Loading and
warming happen on a thread of their own so the serving loop never waits for them; the loop picks up
the outcome between two batches. A bundle that fails any check leaves the old model serving.

A bundle is known by its fingerprint, the sha256 of its manifest (which names the sha256 of the model and
of every other file): a swap is a change of fingerprint, and a reload asked for while the bundle's
fingerprint is that of the model serving is skipped (``Outcome.unchanged``), not redone (hash, engine,
warm-up) for nothing. The manifest is read as ``load_bundle`` reads it (no symlink, a regular file, at
most 4 MiB), so a FIFO or a link to ``/dev/zero`` in its place cannot stall or fill this thread.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle import MANIFEST
from ..bundle._files import read_manifest_bytes
from ..engines import InferenceEngine as Engine
from ..errors import EdgeRuntimeError
from .models import LoadedModel

__all__ = ["Reloader", "Outcome", "fingerprint"]

log = logging.getLogger("edge_runtime")


@dataclass(frozen=True)
class Outcome:
    model: str
    engine: Engine | None  # None: the new bundle was refused, for ``reason`` (or is the one serving)
    reason: str | None = None
    shadows: dict[int, Engine] = field(default_factory=dict)  # route index -> its new shadow instance
    unchanged: bool = False  # asked for, but the bundle is the one serving: nothing was loaded


def fingerprint(bundle: Path) -> str | None:
    """What identifies a bundle's content cheaply: its manifest's sha256 (as ``Bundle.fingerprint``).

    The manifest names the model's sha256 and every other file's, so new content always changes it; the
    model file itself is only read (and verified) when this changes.
    """
    try:
        return hashlib.sha256(read_manifest_bytes(bundle, MANIFEST)).hexdigest()
    except (OSError, EdgeRuntimeError):
        return None  # mid-swap, gone or not a bundle now: keep serving, look again next time


# At most one reload per model this often: requests in between are coalesced into one at the end of the
# interval. A reload hashes the bundle, builds a session and warms it up; a flood of requests must not
# turn into a flood of those.
MIN_RELOAD_INTERVAL_S = 5.0


class Reloader:
    """Watches bundle directories; loads what changed (or what is asked for) on its own thread.

    Requests and detected changes are coalesced per model and rate limited (``min_interval_s``); ``loads``
    counts the reloads actually attempted.
    """

    def __init__(
        self,
        bundles: dict[str, Path],
        load: Callable[[str], LoadedModel],
        *,
        watched: set[str],
        serving: Mapping[str, Engine] | None = None,
        poll_s: float = 2.0,
        min_interval_s: float = MIN_RELOAD_INTERVAL_S,
    ):
        """``serving``: the engines serving now, by model (the runtime's own dict, read here): a reload asked
        for is skipped when the bundle's fingerprint is that of the engine serving it."""
        self._bundles = bundles
        self._serving = serving
        self._watched = watched
        self._load = load
        self._poll_s = poll_s
        self._min_interval = min_interval_s
        self._seen = {name: fingerprint(path) for name, path in bundles.items()}
        self._lock = threading.Lock()
        self._asked: set[str] = set()  # bounded by the number of models, however many requests arrive
        self._wake = threading.Event()
        self._last: dict[str, float] = {}
        self.loads = 0
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edge-runtime-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def retarget(self, model: str, bundle: Path) -> None:
        """Reload ``model`` from ``bundle`` from now on (a fleet release promoted): it is serving already, so its
        swap to this directory is not taken for a change to reload."""
        with self._lock:
            self._bundles[model] = bundle
            self._seen[model] = fingerprint(bundle)

    def request(self, model: str | None = None) -> list[str]:
        """Ask for a reload of one configured model (or all); returns the names that will be reloaded."""
        names = list(self._bundles) if model is None else [model] if model in self._bundles else []
        if names:
            with self._lock:
                self._asked.update(names)
            self._wake.set()
        return names

    def _watch(self) -> None:
        due: dict[str, float] = {}  # model -> when its coalesced reload may run
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = self._poll_s if self._watched else None
            if due:
                soonest = max(0.0, min(due.values()) - now)
                timeout = soonest if timeout is None else min(timeout, soonest)
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:  # held while looking: a retarget is either before or after the look, never within
                asked, self._asked = self._asked, set()
                now = time.monotonic()
                for name, path in self._bundles.items():
                    seen = fingerprint(path) if name in self._watched else None
                    changed = seen is not None and seen != self._seen[name]
                    if changed:
                        self._seen[name] = seen
                    if name in asked or changed:
                        due.setdefault(name, max(now, self._last.get(name, -1e9) + self._min_interval))
            for name in [n for n, t in due.items() if t <= now]:
                del due[name]
                self._last[name] = time.monotonic()
                self.outcomes.put(self._try(name))

    def _unchanged(self, name: str) -> bool:
        engine = self._serving.get(name) if self._serving is not None else None
        serving = getattr(getattr(engine, "bundle", None), "fingerprint", None)
        return serving is not None and fingerprint(self._bundles[name]) == serving

    def _try(self, name: str) -> Outcome:
        if self._unchanged(name):
            log.info("reload of model %s skipped: its bundle is the one serving", name)
            return Outcome(name, None, unchanged=True)
        self.loads += 1
        try:
            loaded = self._load(name)
        except EdgeRuntimeError as err:
            log.error("reload of model %s refused, the old one keeps serving: %s", name, err)
            return Outcome(name, None, str(err))
        except Exception as err:
            log.exception("reload of model %s failed", name)
            return Outcome(name, None, f"{type(err).__name__}: {err}")
        return Outcome(name, loaded.engine, shadows=loaded.shadows)
