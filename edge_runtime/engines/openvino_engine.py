"""OpenVINO's CPU runtime on the bundle's own ONNX file (``pip install 'edge-runtime[openvino]'``).

OpenVINO reads ONNX directly, so a bundle needs no second model file. It reads it from the bytes that were
verified (``Core.read_model(bytes)``), never from the path: a file changed after verification is not
what is served. An engine is safe to call from several threads (one infer request behind a lock).

On the CNNs cameras run it is often much faster than ONNX Runtime on the same CPU (measured here:
YOLOv8n 640x640, 1.9x on one thread and on two); ``convert --quantize auto`` and ``bench model`` measure
it beside ONNX Runtime and it is chosen only where it is faster.

Settings: ``LATENCY`` hint (one request at a time, as the runtime serves batches), the measured number
of threads, one stream unless measured otherwise, and no core pinning (the cores are shared with MQTT).

Precision: OpenVINO's CPU default computes in bf16 where the CPU has native bf16 (recent x86) and in
f16 on ARM cores with half-precision arithmetic; much of its speed comes from that. The converter
measures that default against ONNX Runtime's fp32 outputs and records the precision it measured
(``manifest.engine.precision``); the engine then asks for exactly that precision, and for f32 on a
CPU that cannot compute the recorded one natively (with a warning), never for something unmeasured.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..bundle import Bundle, verified_files
from ..errors import BundleError
from ..tasks import get_task
from ._slicing import fixed_batch, run_in_slices

__all__ = ["OpenVinoEngine", "default_precision"]

log = logging.getLogger("edge_runtime.engines")


def _precision(value: object) -> str:
    text = str(value).lower()
    return "bf16" if "bf" in text else "f16" if "16" in text else "f32"


def default_precision() -> str:
    """The precision OpenVINO's CPU plugin computes in by default on this machine: f32, bf16 or f16."""
    import openvino as ov

    return _precision(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def _reason(err: BaseException) -> str:
    """The informative line of an OpenVINO error (the first ones name C++ source files)."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check ", "FrontEnd API failed"))]
    return ("; ".join(useful[-2:]) if useful else (lines[0] if lines else type(err).__name__))[:200]


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, bundle: Bundle, *, threads: int = 1, streams: int | None = None, spinning: bool = False):
        try:
            import openvino as ov
        except ImportError:
            raise BundleError(
                "OpenVINO is not installed: pip install 'edge-runtime[openvino]'", bundle=str(bundle.path)
            ) from None
        self.bundle = bundle
        m = self.manifest = bundle.manifest
        self.threads, self.streams = threads, streams or 1
        try:
            self.task = get_task(m.task)
        except LookupError as err:
            raise BundleError(str(err), bundle=str(bundle.path)) from None
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": int(self.streams),
            "ENABLE_CPU_PINNING": False,
        }
        try:
            core = ov.Core()
            recorded = m.engine.precision if m.engine and m.engine.kind == self.name else None
            if recorded:
                native = {str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")}
                if recorded != "f32" and {"bf16": "BF16", "f16": "FP16"}[recorded] not in native:
                    log.warning(
                        "bundle %s was measured with OpenVINO in %s, which this CPU does not compute "
                        "natively: using f32",
                        bundle.path,
                        recorded,
                    )
                    recorded = "f32"
                config["INFERENCE_PRECISION_HINT"] = recorded
            model = core.read_model(_verified_model(bundle))
            self.compiled = core.compile_model(model, "CPU", config)
            self.precision = _precision(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        except BundleError:
            raise
        except Exception as err:
            raise BundleError(f"OpenVINO cannot load the model: {_reason(err)}", bundle=str(bundle.path)) from err
        # One infer request, one caller at a time: a request's buffers are not safe to share (two threads on one
        # request were seen to get each other's outputs). A request per thread was measured as the alternative:
        # no faster on a single-stream model (OpenVINO runs one request at a time on it: YOLOv8n, two threads,
        # 0.95-1.04x), about 10 MB more per thread on YOLOv8n; 1.11x on a tiny model under full contention only.
        self._lock = threading.Lock()
        self.request = self.compiled.create_infer_request()
        names = [o.name for o in m.outputs]
        self._outputs = []
        for i, port in enumerate(self.compiled.outputs):
            known = port.get_names() & set(names)
            self._outputs.append((port, next(iter(known)) if known else names[i] if i < len(names) else f"output{i}"))
        dim = model.inputs[0].partial_shape[0]
        self.fixed_batch = fixed_batch(dim.get_length() if dim.is_static else None)

    def example_row_shape(self) -> tuple[int, ...]:
        return tuple(d if d is not None else 1 for d in self.manifest.row_shape())

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        sizes = {self.fixed_batch} if self.fixed_batch else set(batch_sizes)
        for n in sorted(sizes):
            self.run(np.zeros((n, *self.example_row_shape()), dtype=self.manifest.inputs[0].dtype))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.fixed_batch and len(batch) != self.fixed_batch:
            return run_in_slices(self._run, batch, self.fixed_batch)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # infer() copies the outputs out of the request's buffers (share_outputs=False): slices stay valid.
        with self._lock:
            result = self.request.infer({0: np.ascontiguousarray(batch)})
        return {name: result[port] for port, name in self._outputs}


def _verified_model(bundle: Bundle) -> bytes:
    """The model's verified bytes, for OpenVINO to read from memory: it never opens the bundle's files itself.

    OpenVINO reads external data only from files, so a model with external weights is refused (``open_engine``
    then serves it with ONNX Runtime, which takes them from memory).
    """
    files = verified_files(bundle)
    if files.external:
        raise BundleError(
            "OpenVINO reads external weights from files only, not from the verified bytes: serve this model with "
            "ONNX Runtime, or save it with its weights inside the ONNX file",
            bundle=str(bundle.path),
        )
    return files.model
