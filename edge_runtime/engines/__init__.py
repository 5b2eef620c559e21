"""Engines: what runs a bundle's ONNX file. ONNX Runtime is the default; OpenVINO is an optional second.

An engine is anything with the small ``InferenceEngine`` protocol below (not named ``Engine``: that
name is ONNX Runtime's engine class, which ``engines`` re-exports). Engine kinds live in one registry (as
tasks, converters and device profiles do, ``edge_runtime.registry``): ``register_engine`` refuses duplicates
and a failed lookup lists what is known. ``open_engine`` is the one way the runtime, ``bench`` and the
converter get an engine:

- the kind is the one the bundle was measured fastest with (``manifest.engine.kind``) unless the caller
  names one; a kind that is not installed here (or cannot load this model) falls back to ONNX Runtime
  with a warning, since every bundle holds an ONNX file ONNX Runtime can run;
- the threads are the caller's (a model's ``threads`` in the config) if given, else the measured ones
  (``manifest.engine.threads``, at most this machine's cores), else ``default_threads`` (the device profile's).

Models exported with a fixed batch (Ultralytics exports use 1) are served with any ``max_batch``: an
engine runs a batch in slices of the model's batch size and pads the last slice (``run_in_slices``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..bundle import Bundle, Manifest
from ..errors import BundleError, EdgeRuntimeError
from ..registry import Registry
from ._slicing import fixed_batch, run_in_slices

if TYPE_CHECKING:
    from ..tasks import Task

__all__ = [
    "InferenceEngine",
    "EngineKind",
    "register_engine",
    "get_engine_kind",
    "known_engines",
    "available_engines",
    "open_engine",
    "resolve_threads",
    "thread_counts",
    "precisions",
    "with_engine",
    "fixed_batch",
    "run_in_slices",
    "DEFAULT_ENGINE",
    "Engine",
    "ENGINES",
]

log = logging.getLogger("edge_runtime.engines")

DEFAULT_ENGINE = "onnxruntime"


@runtime_checkable
class InferenceEngine(Protocol):
    """Runs one bundle's model on batches; what the outputs mean is the task's business."""

    name: str  # the engine kind: "onnxruntime", "openvino"
    threads: int
    bundle: Bundle
    manifest: Manifest
    task: Task

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for a batch of any size (sliced for fixed-batch models)."""

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size the model will see once, so the first real request is not slow."""

    def example_row_shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class EngineKind:
    name: str
    # "module:Class": imported only when this kind is opened (OpenVINO is an optional extra)
    factory: str
    # the Python package that must be importable for this kind to be available
    requires: str
    install_hint: str = ""

    def available(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None

    def load(self) -> Callable[..., InferenceEngine]:
        module, _, cls = self.factory.partition(":")
        factory: Callable[..., InferenceEngine] = getattr(importlib.import_module(module), cls)
        return factory


ENGINES: Registry[EngineKind] = Registry("engine")


def register_engine(kind: EngineKind) -> EngineKind:
    return ENGINES.register(kind.name, kind)


def get_engine_kind(name: str) -> EngineKind:
    """A registered engine kind; ``UnknownNameError`` (a ``LookupError``) lists the known ones."""
    return ENGINES.get(name)


def known_engines() -> list[str]:
    return [DEFAULT_ENGINE] + [n for n in ENGINES.names() if n != DEFAULT_ENGINE]


def available_engines() -> list[str]:
    """The registered engines whose packages are installed here, ONNX Runtime first."""
    return [name for name in known_engines() if ENGINES.get(name).available()]


def resolve_threads(manifest: Manifest, threads: int | None, default_threads: int) -> tuple[int, str]:
    """(threads, where the number came from): the caller's, else the measured ones, else the default."""
    if threads is not None:
        return threads, "config"
    measured = manifest.engine.threads if manifest.engine else None
    if measured:
        cores = os.cpu_count() or 1
        return min(measured, cores), "measured" if measured <= cores else f"measured {measured}, capped to {cores}"
    return default_threads, "device profile"


def open_engine(
    bundle: Bundle,
    *,
    engine: str | None = None,
    threads: int | None = None,
    default_threads: int = 1,
    streams: int | None = None,
    spinning: bool = False,
) -> InferenceEngine:
    """An engine for ``bundle``: see the module docstring for how the kind and the threads are chosen.

    ``engine`` names a kind outright (``bench``, the converter's gate): then a kind that is not available
    is an error rather than a fallback, since the caller asked for that one.
    """
    m = bundle.manifest
    n_threads, origin = resolve_threads(m, threads, default_threads)
    recorded = m.engine.streams if m.engine else None
    n_streams = streams or recorded or 1
    if engine is not None:
        kind = get_engine_kind(engine)
        if not kind.available():
            raise EdgeRuntimeError(f"engine {engine} is not installed: {kind.install_hint}")
        return kind.load()(bundle, threads=n_threads, streams=n_streams, spinning=spinning)
    wanted = m.engine.kind if m.engine else DEFAULT_ENGINE
    if wanted != DEFAULT_ENGINE:
        fastest = ENGINES.get(wanted) if wanted in ENGINES else None
        if fastest is None:
            log.warning(
                "bundle %s was measured fastest with engine %r, which this runtime does not know: serving it with %s",
                bundle.path,
                wanted,
                DEFAULT_ENGINE,
            )
        elif not fastest.available():
            log.warning(
                "bundle %s was measured fastest with %s, which is not installed here (%s): serving it with %s",
                bundle.path,
                wanted,
                fastest.install_hint,
                DEFAULT_ENGINE,
            )
        else:
            try:
                chosen = fastest.load()(bundle, threads=n_threads, streams=n_streams, spinning=spinning)
            except BundleError as err:
                log.warning(
                    "%s cannot load bundle %s (%s): serving it with %s",
                    wanted,
                    bundle.path,
                    err.args[0],
                    DEFAULT_ENGINE,
                )
            else:
                log.info("model %s: %s, %d thread(s) (%s), %d stream(s)", m.name, wanted, n_threads, origin, n_streams)
                return chosen
    opened = ENGINES.get(DEFAULT_ENGINE).load()(bundle, threads=n_threads, streams=n_streams, spinning=spinning)
    log.info("model %s: %s, %d thread(s) (%s)", m.name, DEFAULT_ENGINE, n_threads, origin)  # once it exists
    return opened


def thread_counts(cores: int | None = None) -> tuple[int, ...]:
    """Intra-op thread counts worth measuring: every count up to 4, then powers of two, and all the cores."""
    n = cores or os.cpu_count() or 1
    counts = set(range(1, min(n, 4) + 1)) | {t for t in (8, 16, 32, 64) if t < n} | {n}
    return tuple(sorted(counts))


def precisions(kind: str, mode: str = "none") -> list[str | None]:
    """The precisions worth measuring ``kind`` in for a model quantized as ``mode`` (None: the engine has no choice).

    OpenVINO: f32, and its CPU default where that differs (bf16 on recent x86, f16 on ARM cores with
    half-precision arithmetic: faster, but a different model, so it is measured against fp32). For an int8
    model the few float operations left run in the default.
    """
    if kind != "openvino" or not get_engine_kind(kind).available():
        return [None]
    from .openvino_engine import default_precision

    native = default_precision()
    if mode == "static":
        return [native]
    return ["f32"] if native == "f32" else ["f32", native]


def with_engine(bundle: Bundle, kind: str, precision: str | None) -> Bundle:
    """``bundle`` as if it had been measured with ``kind`` in ``precision`` (to open that variant)."""
    from ..bundle.image_spec import EngineSpec

    spec = (bundle.manifest.engine or EngineSpec()).model_copy(update={"kind": kind, "precision": precision})
    return Bundle(bundle.path, bundle.manifest.model_copy(update={"engine": spec}))


register_engine(
    EngineKind(DEFAULT_ENGINE, "edge_runtime.engines.ort_engine:Engine", "onnxruntime", "pip install onnxruntime")
)
register_engine(
    EngineKind(
        "openvino",
        "edge_runtime.engines.openvino_engine:OpenVinoEngine",
        "openvino",
        "pip install 'edge-runtime[openvino]'",
    )
)

if TYPE_CHECKING:
    from .ort_engine import Engine as Engine


def __getattr__(name: str) -> object:
    # ONNX Runtime's engine class, imported when first asked for: a process serving with OpenVINO never loads
    # ONNX Runtime's library (about 20 MB of memory), nor one serving with ONNX Runtime OpenVINO's.
    if name == "Engine":
        from .ort_engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
