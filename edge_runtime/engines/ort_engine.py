"""One ONNX Runtime session per model, set up for a small shared CPU, and the step from raw outputs to results."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
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
        try:
            self.session = ort.InferenceSession(
                os.fspath(bundle.model_path), options, providers=["CPUExecutionProvider"]
            )
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
