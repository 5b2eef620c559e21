"""Models for the routes: each bundle loaded, verified and warmed up, at start and at every reload."""

from __future__ import annotations

import os
from pathlib import Path

from devices.profiles import DeviceProfile

from ..bundle import use_bundle
from ..config import Config, RouteConfig
from ..engines import InferenceEngine as Engine
from ..engines import open_engine
from ..errors import ConfigError
from ..tasks import Decoder, Task

__all__ = ["load_engine", "route_decoder"]


def load_engine(config: Config, name: str, profile: DeviceProfile, *, bundle: Path | None = None) -> Engine:
    """Load, verify and warm up one model: used at start and for every reload (``bundle``: another directory
    than the configured one, a fleet release's)."""
    m = next(m for m in config.models if m.name == name)
    key = None
    if m.signing_key_env:
        value = os.environ.get(m.signing_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {m.signing_key_env} is not set", key=f"models.{m.name}.signing_key_env"
            )
        key = value.encode()
    default, spinning = profile.ort.intra_op_threads, profile.ort.allow_spinning
    # Threads: the config's, else what the converter measured, else the profile's. The engine: the one the
    # bundle was measured fastest with, or ONNX Runtime where that one is not installed (with a warning).
    # use_bundle: if the directory is swapped between verification and the session, both are done again.
    engine = use_bundle(
        bundle or m.bundle,
        lambda b: open_engine(b, threads=m.threads, default_threads=default, spinning=spinning),
        signing_key=key,
        trusted_keys=config.trust.trusted(),
    )
    if m.warmup:
        engine.warm_up(tuple({1} | {r.max_batch for r in config.routes if r.model == name}))
    return engine


def route_decoder(engine: Engine, rc: RouteConfig) -> Decoder:
    """The decoder a route uses for ``engine``'s inputs, with the route's payload limit."""
    task: Task = engine.task
    return task.decoder(engine.manifest, max_bytes=rc.max_payload_bytes)
