"""The runtime as the fleet agent's host (fleet/host.py): what a release needs from the serving side.

The agent runs on its own thread with its own MQTT connection (fleet/transport.py). Loading and warming a
candidate happen on the agent's thread, as a hot reload's do on the reloader's; everything that touches
routes (attach a candidate as a shadow, promote it, drop it) is handed to the serving loop as an operation
and applied between two batches, the way reloads are (``apply_pending``), and the agent waits for it. So
a promotion is a reload's swap: no input is lost or served twice, QoS 1 acknowledgements go on as before.
A shadow's threads are stopped on the agent's thread, never in the loop.

At start (``fleet_config``), each managed model's bundle is the fleet's live version, verified again (or
the previous one, or the configured bundle: fleet/agent.live_bundles). The fleet's directory is by default
fleet/<client_id> in the runtime's state directory (serving/state.py: systemd's StateDirectory, ...).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config import Config
from ..errors import ConfigError, EdgeRuntimeError
from ..fleet.agent import FleetAgent, live_bundles
from ..fleet.config import FleetConfig
from ..fleet.host import ShadowReport
from ..monitoring.shadow import ShadowRunner, incompatibility
from ..tasks.codecs import encode
from .homeassistant import release_entity
from .models import LoadedModel, load_model
from .reload import Outcome
from .state import state_dir

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["FleetHost", "fleet_config"]

log = logging.getLogger("edge_runtime.fleet")

T = TypeVar("T")

# How long the agent waits for the loop to apply an operation: a batch of a slow image model is well under it.
_APPLY_TIMEOUT_S = 60.0


def _fleet(config: Config) -> FleetConfig:
    """The ``[fleet]`` table with its directory resolved: by default fleet/<client_id> in the state directory."""
    fleet = config.fleet
    assert fleet is not None
    if fleet.dir is not None:
        return fleet
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", config.broker.client_id)[:64]
    return fleet.model_copy(update={"dir": state_dir(config) / "fleet" / readable})


def _managed(config: Config) -> dict[str, Path]:
    fleet = config.fleet
    assert fleet is not None
    names = set(fleet.models) if fleet.models is not None else {m.name for m in config.models}
    return {m.name: m.bundle for m in config.models if m.name in names}


def fleet_config(config: Config) -> Config:
    """``config`` with each fleet-managed model's bundle replaced by its live release, verified at start."""
    trusted = config.trust.trusted()
    if config.fleet is None or trusted is None:
        return config
    fleet = _fleet(config)
    assert fleet.dir is not None
    try:
        fleet.dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(fleet.dir, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:  # said at start, not at the first release
        raise ConfigError(
            f"{fleet.dir} is not a directory this user can write (downloads and versions go there): set fleet.dir",
            key="fleet.dir",
        )
    live = live_bundles(fleet, _managed(config), trusted)
    if not live:
        return config
    models = [m.model_copy(update={"bundle": live[m.name]}) if m.name in live else m for m in config.models]
    return config.model_copy(update={"models": models})


class FleetHost:
    """Implements ``fleet.host.Host`` for ``runtime``; ``configured``: the config as written (its bundles are
    what a model falls back to)."""

    def __init__(self, runtime: Runtime, configured: Config):
        trusted = configured.trust.trusted()
        assert configured.fleet is not None and trusted is not None
        self.runtime = runtime
        self._ops: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._baseline: dict[str, int] = {}  # drift alerts on the model's routes when its shadow started
        self._closed = False
        self.agent = FleetAgent(
            _fleet(configured),
            device=configured.broker.client_id,
            broker=configured.broker,
            trusted=trusted,
            host=self,
            models=_managed(configured),
        )

    def start(self) -> None:
        """Start the agent; with Home Assistant discovery on, announce each managed model's release state."""
        self.agent.start()
        config = self.runtime.config
        if config.homeassistant.discovery:  # fixed entities (one per model), not a stranger's: announced directly
            for model in self.agent.models:
                topic, payload = release_entity(
                    prefix=config.homeassistant.prefix, node=config.broker.client_id, model=model
                )
                self.runtime.link.publish(topic, encode(payload), 1, retain=True)

    def close(self) -> None:
        """Stop the agent; operations it still waits for are refused (they change nothing)."""
        self._closed = True
        self._refuse_pending()
        self.agent.stop(timeout=2.0)  # a load in progress is left to finish alone (a daemon thread)
        self._refuse_pending()

    def _refuse_pending(self) -> None:
        while not self._ops.empty():
            _, future = self._ops.get()
            future.set_exception(EdgeRuntimeError("the runtime is stopping"))

    # -- the loop's side --------------------------------------------------------------------

    def apply_pending(self) -> None:
        """Called by the loop between batches: apply what the agent asked for."""
        while not self._ops.empty():
            op, future = self._ops.get()
            try:
                future.set_result(op())
            except Exception as err:  # noqa: BLE001 - handed to the agent, never raised in the loop
                future.set_exception(err)

    def _in_loop(self, op: Callable[[], T]) -> T:
        if self._closed:
            raise EdgeRuntimeError("the runtime is stopping")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._ops.put((op, future))
        try:
            return future.result(_APPLY_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise EdgeRuntimeError(f"the serving loop did not take the change within {_APPLY_TIMEOUT_S:g} s") from None

    # -- Host -------------------------------------------------------------------------------

    def live_version(self, model: str) -> str:
        return self.runtime.engines[model].manifest.version

    def load(self, model: str, bundle: Path) -> object:
        return load_model(self.runtime.config, model, self.runtime.profile, bundle=bundle)

    def _routes(self, model: str) -> list[Any]:
        return [r for r in self.runtime.routes if r.config.model == model and r.monitors is not None]

    def start_shadow(self, model: str, candidate: object, *, fraction: float) -> None:
        engine = _loaded(candidate).engine
        live = self.runtime.engines[model].manifest
        problem = incompatibility(live, engine.manifest)
        if problem is not None:
            raise EdgeRuntimeError(problem)
        if not self._routes(model):
            raise EdgeRuntimeError(f"no route serves model {model}: there is nothing to judge the candidate on")
        task, manifest = engine.task, engine.manifest
        runners = [
            ShadowRunner(
                lambda rows, metas: task.results(manifest, engine.run(rows), list(metas)),
                model=f"{model} {manifest.version} (candidate)",
                fraction=fraction,
                rtol=route.config.shadow_tolerance,
            )
            for route in self._routes(model)
        ]

        def attach() -> None:
            for route, runner in zip(self._routes(model), runners):
                route.monitors.candidate = runner
            self._baseline[model] = sum(r.monitors.drift_alerts for r in self._routes(model))

        try:
            self._in_loop(attach)
        except BaseException:
            for runner in runners:
                runner.close()
            raise

    def shadow_report(self, model: str) -> ShadowReport | None:
        runners = [r.monitors.candidate for r in self._routes(model) if r.monitors.candidate is not None]
        if not runners:
            return None
        rows = agreed = errors = 0
        live_ms: list[float] = []
        shadow_ms: list[float] = []
        for runner in runners:
            n, a, e = runner.counts()
            rows, agreed, errors = rows + n, agreed + a, errors + e
            live, shadow = runner.latencies()
            live_ms += live
            shadow_ms += shadow
        alerts = sum(r.monitors.drift_alerts for r in self._routes(model)) - self._baseline.get(model, 0)
        return ShadowReport(
            rows=rows,
            agreed=agreed,
            errors=errors,
            live_p95_ms=float(np.percentile(live_ms, 95)) if live_ms else None,
            shadow_p95_ms=float(np.percentile(shadow_ms, 95)) if shadow_ms else None,
            drift_alerts=max(0, alerts),
            latency_samples=min(len(live_ms), len(shadow_ms)),
        )

    def _detach(self, model: str) -> list[ShadowRunner]:
        """In the loop: take the candidate off the routes (its threads are stopped by the caller)."""
        runners = []
        for route in self._routes(model):
            if route.monitors.candidate is not None:
                runners.append(route.monitors.candidate)
                route.monitors.candidate = None
        return runners

    def stop_shadow(self, model: str) -> None:
        for runner in self._in_loop(lambda: self._detach(model)):
            runner.close()

    def promote(self, model: str, candidate: object, bundle: Path) -> None:
        loaded = _loaded(candidate)
        engine, runtime = loaded.engine, self.runtime
        # The candidate's shadow is stopped first: its thread must be done with the instance the routes take over
        # (an engine is not always safe to share between two threads).
        self.stop_shadow(model)

        def swap() -> None:
            runtime._swap(Outcome(model, engine, shadows=loaded.shadows))  # a reload's swap, between two batches
            if runtime.engines[model] is not engine:
                reason = (runtime.announcer.last_reload or {}).get("reason") or "refused"
                raise EdgeRuntimeError(f"the routes cannot serve it: {str(reason)[:500]}")
            # A reload asked for from now on reads the promoted release, and its directory is not a change.
            models = [m.model_copy(update={"bundle": bundle}) if m.name == model else m for m in runtime.config.models]
            runtime.config = runtime.config.model_copy(update={"models": models})
            runtime.reloader.retarget(model, bundle)

        self._in_loop(swap)


def _loaded(candidate: object) -> LoadedModel:
    """What ``load`` returned, handed back by the agent (which never looks inside)."""
    if not isinstance(candidate, LoadedModel):
        raise TypeError(f"not a model this host loaded: {type(candidate).__name__}")
    return candidate
