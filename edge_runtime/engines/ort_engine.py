"""One ONNX Runtime session per model, set up for a small shared CPU, and the step from raw outputs to results."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..bundle import NUMPY_TYPES, Bundle, VerifiedFiles, verified_files
from ..errors import BundleError, UnknownNameError
from ..tasks import get_task
from ._slicing import fixed_batch, run_in_slices

__all__ = ["Engine"]


class Engine:
    """Runs a bundle's model on batches (what the outputs mean is the task's business: see tasks/).

    The ONNX Runtime kind of ``edge_runtime.engines.InferenceEngine``; get one with ``engines.open_engine``.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, threads: int = 1, spinning: bool = False, streams: int | None = None):
        self.bundle = bundle
        self.threads = threads
        m = self.manifest = bundle.manifest
        try:
            self.task = get_task(m.task)
        except UnknownNameError as err:
            raise BundleError(str(err), bundle=str(bundle.path)) from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the core that paho and the broker need (ORT #3099): off unless asked for.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3
        # The bytes that were verified, not the path: a file swapped since cannot be what is served.
        files = verified_files(bundle)
        try:
            # ORT points at these buffers until the session has copied them: keep them alive until then.
            keep_alive = _add_external_data(options, files)
            self.session = ort.InferenceSession(files.model, options, providers=["CPUExecutionProvider"])
            del keep_alive, files  # the session holds its own copy now
        except Exception as err:  # ORT raises its own Fail/InvalidGraph/... types
            raise BundleError(
                f"ONNX Runtime cannot load the model: {str(err).splitlines()[0]}", bundle=str(bundle.path)
            ) from err
        self.input_name = m.inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # A model exported with a fixed batch (Ultralytics: 1) runs any batch in slices of that size.
        self.fixed_batch = fixed_batch(self.session.get_inputs()[0].shape[0])

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run the model once per batch size before serving.

        The first ``run`` of a session allocates its memory arena and picks kernels, which makes it
        many times slower than the rest; doing it here keeps that out of the first real request.
        """
        sizes = {self.fixed_batch} if self.fixed_batch else set(batch_sizes)
        for n in sorted(sizes):
            self.run(np.zeros((n, *self.example_row_shape()), dtype=self.manifest.inputs[0].dtype))

    def example_row_shape(self) -> tuple[int, ...]:
        return tuple(d if d is not None else 1 for d in self.manifest.row_shape())

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.fixed_batch and len(batch) != self.fixed_batch:
            return run_in_slices(self._run, batch, self.fixed_batch)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: batch})))


def _add_external_data(options: ort.SessionOptions, files: VerifiedFiles) -> list[ort.OrtValue]:
    """Hand ORT every external initializer from verified bytes (ORT >= 1.12), so it opens no file itself.

    A model loaded from bytes would otherwise look for its external data relative to the working
    directory. Verification refused every external tensor this cannot cover (see verify.py).
    """
    if not files.tensors:
        return []
    names, values = [], []
    for t in files.tensors:
        dtype = np.dtype(NUMPY_TYPES[t.data_type])
        count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        array = np.frombuffer(files.external[t.location], dtype=dtype, count=count, offset=t.offset).reshape(t.dims)
        if not array.flags.aligned:
            array = array.copy()
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    options.add_external_initializers(names, values)
    return values
