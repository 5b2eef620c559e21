"""Tasks: how a bundle's inputs are decoded and its outputs turned into results, keyed by ``manifest.task``.

One registry, as skl2onnx keeps one per kind of converter: ``register_task`` refuses duplicates, and a
failed lookup lists what is known. The tensor tasks live here; image tasks register themselves from
``edge_runtime.vision``, which is imported only when such a bundle is loaded (it needs OpenCV).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from .bundle import Manifest
from .codecs import RowDecoder

__all__ = ["Decoder", "Task", "get_task", "register_task", "known_tasks", "user_property"]


class Decoder(Protocol):
    def decode(self, payload: bytes, properties: Any = None) -> tuple[Any, np.ndarray, Any]:
        """Return ``(id, row, meta)``: the row for the model, and what ``results`` needs to know about it.

        ``properties`` are the message's MQTT v5 properties (paho ``Properties``; None under v3.1.1):
        ``ContentType`` and ``UserProperty`` (a list of (key, value) pairs) may say what the payload is.
        Raise ``PayloadError`` for anything that cannot be served.
        """


class Task(Protocol):
    name: str

    def decoder(self, manifest: Manifest, *, max_bytes: int) -> Decoder: ...

    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        """One JSON-ready dict per row of the batch."""


_TASKS: dict[str, Task] = {}
_PLUGINS = ("edge_runtime.vision",)  # modules that register further tasks when imported


def register_task(task: Task) -> None:
    if task.name in _TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _TASKS[task.name] = task


def get_task(name: str) -> Task:
    if name not in _TASKS:
        for module in _PLUGINS:
            importlib.import_module(module)
    try:
        return _TASKS[name]
    except KeyError:
        raise LookupError(f"unknown task {name!r}; this runtime serves: {', '.join(known_tasks())}") from None


def known_tasks() -> list[str]:
    return sorted(_TASKS)


def user_property(properties: Any, key: str) -> str | None:
    """The value of an MQTT v5 user property (the last one, if repeated), or None."""
    value = None
    for k, v in getattr(properties, "UserProperty", None) or ():
        if k == key:
            value = v
    return value


class _TensorDecoder:
    """Tensor inputs (JSON or .npy) carry no per-row metadata."""

    __slots__ = ("_decode",)

    def __init__(self, manifest: Manifest, max_bytes: int):
        self._decode = RowDecoder(shape=manifest.row_shape(), dtype=manifest.inputs[0].dtype,
                                  allow_non_finite=manifest.allow_non_finite, max_bytes=max_bytes).decode

    def decode(self, payload: bytes, properties: Any = None) -> tuple[Any, np.ndarray, None]:
        msg_id, row = self._decode(payload)
        if msg_id is None and properties is not None:
            msg_id = user_property(properties, "id")  # how a .npy payload carries its id
        return msg_id, row, None


class _TensorTask:
    def __init__(self, name: str):
        self.name = name

    def decoder(self, manifest: Manifest, *, max_bytes: int) -> Decoder:
        return _TensorDecoder(manifest, max_bytes)


class Classifier(_TensorTask):
    def results(self, manifest, outputs, metas):
        scores = np.asarray(outputs[manifest.scores_output]).reshape(len(metas), -1)
        best = scores.argmax(axis=1).tolist()
        labels = manifest.labels
        names = [labels[b] for b in best] if labels else best
        return [{"label": n, "scores": s} for n, s in zip(names, scores.tolist())]


class Regressor(_TensorTask):
    def results(self, manifest, outputs, metas):
        values = np.asarray(outputs[manifest.value_output]).reshape(len(metas), -1)
        if values.shape[1] == 1:
            return [{"value": v} for v in values[:, 0].tolist()]
        return [{"value": v} for v in values.tolist()]


class Anomaly(_TensorTask):
    """Outlier detectors (IsolationForest, OneClassSVM...): label -1 means anomalous; lower scores, more so."""

    def results(self, manifest, outputs, metas):
        labels = np.asarray(outputs[manifest.value_output]).reshape(len(metas), -1)[:, 0].tolist()
        scores = np.asarray(outputs[manifest.scores_output]).reshape(len(metas), -1)[:, 0].tolist()
        return [{"anomaly": lab == -1, "score": sc} for lab, sc in zip(labels, scores)]


class Generic(_TensorTask):
    """Any model: every output, row by row."""

    def results(self, manifest, outputs, metas):
        return [{"outputs": {name: np.asarray(o)[i].tolist() for name, o in outputs.items()}}
                for i in range(len(metas))]


for _task in (Classifier("classifier"), Regressor("regressor"), Anomaly("anomaly"), Generic("generic")):
    register_task(_task)
