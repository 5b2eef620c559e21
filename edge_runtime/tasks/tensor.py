"""Tensor tasks: rows of numbers in (JSON or .npy), classes, values, anomaly flags or raw outputs out."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bundle import Manifest
from . import Decoder, register_task, user_property
from .codecs import RowDecoder

__all__ = ["Classifier", "Regressor", "Anomaly", "Generic"]


class _TensorDecoder:
    """Tensor inputs (JSON or .npy) carry no per-row metadata."""

    __slots__ = ("_decode",)

    def __init__(self, manifest: Manifest, max_bytes: int):
        self._decode = RowDecoder(
            shape=manifest.row_shape(),
            dtype=manifest.inputs[0].dtype,
            allow_non_finite=manifest.allow_non_finite,
            max_bytes=max_bytes,
        ).decode

    def decode(self, payload: bytes, properties: Any = None) -> tuple[Any, np.ndarray, None]:
        msg_id, row = self._decode(payload)
        if msg_id is None and properties is not None:
            msg_id = user_property(properties, "id")  # how a .npy payload carries its id
        return msg_id, row, None


def _named(output: str | None) -> str:
    # load_bundle refuses a classifier, regressor or anomaly manifest without the outputs it needs.
    assert output is not None, "the bundle was not verified"
    return output


class _TensorTask:
    def __init__(self, name: str):
        self.name = name

    def decoder(self, manifest: Manifest, *, max_bytes: int) -> Decoder:
        return _TensorDecoder(manifest, max_bytes)


class Classifier(_TensorTask):
    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        scores = np.asarray(outputs[_named(manifest.scores_output)]).reshape(len(metas), -1)
        best = scores.argmax(axis=1).tolist()
        labels = manifest.labels
        names = [labels[b] for b in best] if labels else best
        # Rows of the array itself: orjson writes them at their own precision (float32: 0.9391469, not
        # 0.9391469955444336), shorter on the wire and no Python floats made on the way.
        return [{"label": n, "scores": s} for n, s in zip(names, scores)]


class Regressor(_TensorTask):
    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        values = np.asarray(outputs[_named(manifest.value_output)]).reshape(len(metas), -1)
        if values.shape[1] == 1:
            return [{"value": v} for v in values[:, 0].tolist()]
        return [{"value": v} for v in values.tolist()]


class Anomaly(_TensorTask):
    """Outlier detectors (IsolationForest, OneClassSVM...): label -1 means anomalous; lower scores, more so."""

    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        labels = np.asarray(outputs[_named(manifest.value_output)]).reshape(len(metas), -1)[:, 0].tolist()
        scores = np.asarray(outputs[_named(manifest.scores_output)]).reshape(len(metas), -1)[:, 0].tolist()
        return [{"anomaly": lab == -1, "score": sc} for lab, sc in zip(labels, scores)]


class Generic(_TensorTask):
    """Any model: every output, row by row."""

    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        return [
            {"outputs": {name: np.asarray(o)[i].tolist() for name, o in outputs.items()}} for i in range(len(metas))
        ]


for _task in (Classifier("classifier"), Regressor("regressor"), Anomaly("anomaly"), Generic("generic")):
    register_task(_task)
