"""Models for the routes: each bundle loaded, verified and warmed up, at start and at every reload.

A model gets one engine for the routes it serves, and one more for each route that runs it as a shadow:
a shadow runs on a thread of its own, so sharing the live instance would make the two wait for each other
(and, for an engine that is not safe to share, mix their answers). A model that serves no route and
shadows one lends that route its only instance. Every instance of one load comes from one verified
bundle: the second and later ones read the files again and check them against the same manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from devices.profiles import DeviceProfile

from ..bundle import use_bundle
from ..config import Config, RouteConfig
from ..engines import InferenceEngine as Engine
from ..engines import open_engine
from ..errors import ConfigError
from ..tasks import Decoder, Task
from .memory import keep_heap_small, release_freed

__all__ = ["LoadedModel", "load_model", "route_decoder"]


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine  # what the routes serving this model run
    shadows: dict[int, Engine] = field(default_factory=dict)  # route index -> the instance its shadow runs


def load_model(config: Config, name: str, profile: DeviceProfile, *, bundle: Path | None = None) -> LoadedModel:
    """Load, verify and warm up one model and its shadow instances: used at start and for every reload
    (``bundle``: another directory than the configured one, a fleet release's)."""
    m = next(m for m in config.models if m.name == name)
    key = None
    if m.signing_key_env:
        value = os.environ.get(m.signing_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {m.signing_key_env} is not set", key=f"models.{m.name}.signing_key_env"
            )
        key = value.encode()
    keep_heap_small()  # before the first large blocks: the model's bytes, frames and tensors (see memory.py)
    served = any(r.model == name for r in config.routes)
    shadowing = [i for i, r in enumerate(config.routes) if r.shadow == name]
    count = 1 + len(shadowing) if served else max(1, len(shadowing))
    default, spinning = profile.ort.intra_op_threads, profile.ort.allow_spinning
    # Threads: the config's, else what the converter measured, else the profile's. The engine: the one the
    # bundle was measured fastest with, or ONNX Runtime where that one is not installed (with a warning).
    # use_bundle: if the directory is swapped between verification and the engines, all is done again.
    engines = use_bundle(
        bundle or m.bundle,
        lambda b: [open_engine(b, threads=m.threads, default_threads=default, spinning=spinning) for _ in range(count)],
        signing_key=key,
        trusted_keys=config.trust.trusted(),
    )
    if m.warmup:
        sizes = tuple({1} | {r.max_batch for r in config.routes if name in (r.model, r.shadow)})
        for engine in engines:
            engine.warm_up(sizes)
    release_freed()  # the verified bytes and what building and warming up freed
    return LoadedModel(engines[0], dict(zip(shadowing, engines[1:] if served else engines)))


def route_decoder(engine: Engine, rc: RouteConfig) -> Decoder:
    """The decoder a route uses for ``engine``'s inputs, with the route's payload limit."""
    task: Task = engine.task
    return task.decoder(engine.manifest, max_bytes=rc.max_payload_bytes)
