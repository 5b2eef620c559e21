"""Reference statistics: what a model saw before it was deployed, kept in its bundle's manifest.

``compute_reference`` turns a reference set (validation rows, or frames for image models) and the model's
outputs on it into a compact JSON-ready dict stored under the manifest's ``reference`` key. The drift
monitor (``drift.py``) compares live traffic with it, bin by bin, with the same functions as here, so the
device bins its rows exactly as the converter binned the reference.

Inputs, by ``transform``:
- ``features``: one channel per input value (tabular rows, up to ``max_features`` values per row);
- ``image``: per colour channel, the mean (``brightness_<c>``) and standard deviation (``contrast_<c>``)
  of the model-ready tensor, i.e. after the bundle's preprocessing (letterbox padding, scale, mean/std),
  on every ``stride``-th pixel each way (about 16k pixels per channel: 0.1 ms for a 640x640 frame, 2 ms
  on all of them);
- ``row_stats``: the mean and standard deviation of each row, for tensors too large (or too ragged) to
  bin value by value.
Each channel gets bin edges from the reference quantiles (``bins`` bins) and the share of rows per bin. A
channel with at most ``bins`` distinct values (a flag, a count, a constant) gets one bin per value plus
one for what lies between and beyond them, so a stuck sensor that starts moving, or a flag that takes a
new value, lands in a bin the reference left empty. Ties at a quantile collapse into one edge; a value
equal to an edge falls in the bin below it (``x <= edge``), on both sides.

Outputs, by task: the class mix and the top-1 confidence (classifiers), the values (regressors), the
anomaly rate and score (anomaly detectors), and per frame the main detection's class (``none`` when
there is none), its score and the number of detections (detectors).

Edges are float32 values written in their shortest form and read back as float32, so the JSON round
trip does not move a value across an edge.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["compute_reference", "reference_for_model", "reference_from_images", "psi", "REFERENCE_FORMAT", "EPSILON"]

REFERENCE_FORMAT = 1
# Floor for a bin's share in PSI (both sides): an empty bin would make ln(p_live / p_ref) infinite.
# With 1e-4, a bin the reference never saw that holds 1% of a live window adds about 0.045.
EPSILON = 1e-4
MAX_FEATURES = 256
MAX_VALUE_OUTPUTS = 8
IMAGE_PIXELS = 16384  # pixels per channel that brightness and contrast are measured on (a strided grid)
IMAGE_TASKS = ("image_classifier", "detector")
Run = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def psi(
    reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray, *, epsilon: float = EPSILON
) -> float:
    """Population Stability Index of ``live`` against ``reference`` (shares or counts; each normalised).

    PSI = sum over bins of (p_live - p_ref) * ln(p_live / p_ref), with every share floored at ``epsilon``
    first. Usual reading: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a significant shift.
    """
    ref, cur = np.asarray(reference, np.float64), np.asarray(live, np.float64)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValueError(f"reference and live need the same bins, not shapes {ref.shape} and {cur.shape}")
    ref = np.maximum(ref / max(ref.sum(), 1e-300), epsilon)
    cur = np.maximum(cur / max(cur.sum(), 1e-300), epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


# -- what is binned: shared by the reference and the drift monitor ---------------------------------------


def image_layout(manifest: Any, row_shape: tuple[int, ...]) -> str:
    spec = _get(manifest, "preprocess") or {}
    if "layout" in spec:
        return str(spec["layout"])
    return "NHWC" if len(row_shape) == 3 and row_shape[-1] in (1, 3, 4) and row_shape[0] not in (1, 3, 4) else "NCHW"


def featurize(inputs: Mapping[str, Any], batch: np.ndarray) -> np.ndarray | None:
    """The reference's input channels for a batch of model-ready rows, (rows, channels) float32.

    None when the batch does not have the shape the reference was computed on.
    """
    n = len(batch)
    transform = inputs["transform"]
    if transform == "features":
        x = batch.reshape(n, -1)
        if x.shape[1] != len(inputs["features"]):
            return None
        return x if x.dtype == np.float32 else x.astype(np.float32)
    if transform == "image":
        if batch.ndim != 4:
            return None
        nchw = inputs.get("layout", "NCHW") == "NCHW"
        c = batch.shape[1] if nchw else batch.shape[3]
        if 2 * c != len(inputs["features"]):
            return None
        s = int(inputs.get("stride", 1))  # every s-th pixel each way: the same summary at a fraction of the cost
        if s > 1:
            batch = np.ascontiguousarray(batch[:, :, ::s, ::s] if nchw else batch[:, ::s, ::s, :])
        pixels: np.ndarray = batch.reshape(n, c, -1) if nchw else batch.reshape(n, -1, c)
        axis = 2 if nchw else 1
        return np.concatenate(
            [pixels.mean(axis=axis, dtype=np.float32), pixels.std(axis=axis, dtype=np.float32)], axis=1
        )
    x = batch.reshape(n, -1)
    return np.stack([x.mean(axis=1, dtype=np.float32), x.std(axis=1, dtype=np.float32)], axis=1)


def bin_index(values: np.ndarray, edges_t: np.ndarray) -> np.ndarray:
    """Bin of each value, (rows, channels) uint8: the number of the channel's edges strictly below it.

    ``edges_t`` is (max edges, 1, channels), padded with +inf. Same as ``np.searchsorted(edges, x)`` per
    channel (a value equal to an edge falls in the bin below), in one call for every channel.
    """
    counts: np.ndarray = (values > edges_t).sum(axis=0, dtype=np.uint8)
    return counts


def edges_matrix(edge_lists: Sequence[Sequence[float]]) -> np.ndarray:
    width = max((len(e) for e in edge_lists), default=0)
    out = np.full((max(width, 1), 1, len(edge_lists)), np.inf, dtype=np.float32)
    for j, e in enumerate(edge_lists):
        out[: len(e), 0, j] = np.asarray(e, np.float32)
    return out


class OutputSummary:
    """Per row of a batch: the class channel (an index) and the numeric channels, from outputs or results."""

    def __init__(self, spec: Mapping[str, Any]):
        self.task = spec["task"]
        self.scores_output, self.value_output = spec.get("scores_output"), spec.get("value_output")
        self.softmax = bool(spec.get("softmax"))
        classes = spec.get("classes")
        self.n_classes = len(classes["labels"]) if classes else 0
        self.n_values = len(spec.get("values") or ())
        if self.task == "detector" and classes:
            labels = classes["labels"][:-1]  # the last class is "none"
            self._index = {label: i for i, label in enumerate(labels)}

    def __call__(
        self, outputs: Mapping[str, np.ndarray] | None, results: Sequence[Mapping[str, Any]] | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        task = self.task
        if task == "detector":
            if results is None:
                raise ValueError("a detector's drift needs the batch's results (its detections)")
            return self._detections(results)
        if outputs is None:
            raise ValueError(f"a {task}'s drift needs the batch's outputs")
        scores_name, value_name = str(self.scores_output), str(self.value_output)
        if task in ("classifier", "image_classifier"):
            scores = np.asarray(outputs[scores_name]).reshape(n, -1)
            cls = scores.argmax(axis=1)
            top = scores.max(axis=1).astype(np.float32, copy=False)
            if self.softmax:  # the top probability of softmax(scores): 1 / sum(exp(s - max))
                top = (1.0 / np.exp(scores - top[:, None]).sum(axis=1)).astype(np.float32)
            return cls, top[:, None]
        if task == "regressor":
            return None, np.asarray(outputs[value_name], np.float32).reshape(n, -1)[:, : self.n_values]
        if task == "anomaly":
            flag = np.asarray(outputs[value_name]).reshape(n, -1)[:, 0] == -1
            return flag.astype(np.intp), np.asarray(outputs[scores_name], np.float32).reshape(n, -1)[:, :1]
        return None, None

    def _detections(self, results: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        none = self.n_classes - 1
        cls = np.full(len(results), none, dtype=np.intp)
        vals = np.zeros((len(results), 2), dtype=np.float32)
        for i, r in enumerate(results):
            dets = r.get("detections") or ()
            vals[i, 1] = len(dets)
            if dets:
                main = max(dets, key=lambda d: d["score"])
                label = main["label"]
                c = self._index.get(label, label if isinstance(label, int) and 0 <= label < none else none)
                cls[i], vals[i, 0] = c, main["score"]
        return cls, vals


# -- computing a reference --------------------------------------------------------------------------------


def compute_reference(
    rows: np.ndarray,
    outputs: Mapping[str, np.ndarray] | None = None,
    *,
    manifest: Any,
    results: Sequence[Mapping[str, Any]] | None = None,
    feature_names: Sequence[str] | None = None,
    bins: int = 10,
    max_features: int = MAX_FEATURES,
) -> dict[str, Any]:
    """Reference statistics of model-ready ``rows`` and the model's ``outputs`` on them (one batch).

    ``manifest``: the bundle's manifest (a ``Manifest`` or its dict). ``results``: the task's results for
    the rows (detectors need them; the other tasks read ``outputs``). Without outputs only the inputs are
    described. Use ``reference_for_model`` to run a model over a large set in batches.
    """
    acc = _Accumulator(manifest, rows.shape[1:], feature_names=feature_names, bins=bins, max_features=max_features)
    acc.add(rows, outputs, results)
    return acc.finish()


def reference_for_model(
    manifest: Any,
    run: Run,
    rows: np.ndarray,
    *,
    feature_names: Sequence[str] | None = None,
    bins: int = 10,
    batch: int = 256,
    max_rows: int = 100_000,
    max_features: int = MAX_FEATURES,
    metas: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Run ``run(batch) -> outputs`` over ``rows`` (model-ready) in batches and describe inputs and outputs.

    At most ``max_rows`` rows, evenly spread over the set. Detectors' results need each frame's metadata
    (``metas``, as the task's decoder returns); without them each row is taken as an unpadded frame of
    the model's input size.
    """
    rows = np.asarray(rows)
    if len(rows) > max_rows:
        pick = np.linspace(0, len(rows) - 1, max_rows).astype(np.intp)
        rows, metas = rows[pick], None if metas is None else [metas[i] for i in pick]
    task = _get(manifest, "task") or "generic"
    results_of = None
    frame_metas: Sequence[Any] = ()
    if task == "detector":
        from edge_runtime.tasks import get_task

        m = _as_manifest(manifest)
        frame_metas = metas if metas is not None else [_frame_meta(manifest, rows.shape[1:])] * len(rows)
        results_of = get_task("detector").results
    acc = _Accumulator(manifest, rows.shape[1:], feature_names=feature_names, bins=bins, max_features=max_features)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        outputs = run(chunk)
        results = None if results_of is None else results_of(m, dict(outputs), list(frame_metas[start : start + batch]))
        acc.add(chunk, outputs, results)
    return acc.finish()


def reference_from_images(
    manifest: Any,
    run: Run,
    frames: Iterable[bytes | np.ndarray],
    *,
    bins: int = 10,
    batch: int = 32,
    max_rows: int = 10_000,
) -> dict[str, Any]:
    """Reference of an image model from frames (JPEG/PNG bytes, or HxWx3 uint8 BGR arrays).

    Each frame goes through the bundle's own decoder, exactly as the runtime will decode it, so the
    brightness and contrast compared on the device are of the same tensors.
    """
    from edge_runtime.tasks import get_task

    m = _as_manifest(manifest)
    task = get_task(m.task)
    if m.task not in IMAGE_TASKS:
        raise ValueError(f"frames describe image models; this bundle's task is {m.task!r}")
    decoder = task.decoder(m, max_bytes=256 * 1024 * 1024)
    rows: list[np.ndarray] = []
    metas: list[Any] = []
    for frame in frames:
        if len(rows) >= max_rows:
            break
        if isinstance(frame, np.ndarray):  # through the decoder's .npy path, like a raw frame on the wire
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(frame, dtype=np.uint8), allow_pickle=False)
            payload = buf.getvalue()
        else:
            payload = bytes(frame)
        _, row, meta = decoder.decode(payload)
        rows.append(row)
        metas.append(meta)
    if not rows:
        raise ValueError("no frames to describe")
    return reference_for_model(manifest, run, np.stack(rows), bins=bins, batch=batch, max_rows=max_rows, metas=metas)


class _Accumulator:
    """Collects channel values batch by batch (a detector's outputs are too large to keep whole)."""

    def __init__(
        self,
        manifest: Any,
        row_shape: tuple[int, ...],
        *,
        feature_names: Sequence[str] | None,
        bins: int,
        max_features: int,
    ):
        if not 2 <= bins <= 100:
            raise ValueError(f"bins must be between 2 and 100, not {bins}")
        self.manifest, self.bins = manifest, bins
        self.task = _get(manifest, "task") or "generic"
        self.inputs = _input_spec(manifest, tuple(row_shape), feature_names, max_features)
        self.features: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.n_classes = 0
        self.rows = 0
        self.outputs_seen = False

    def add(
        self, rows: np.ndarray, outputs: Mapping[str, np.ndarray] | None, results: Sequence[Mapping[str, Any]] | None
    ) -> None:
        if self.inputs is not None:
            feats = featurize(self.inputs, rows)
            if feats is None:
                raise ValueError(f"rows of shape {rows.shape[1:]} do not match the first batch's")
            self.features.append(feats.copy())
        self.rows += len(rows)
        if outputs is None and results is None:
            return
        spec = self._output_spec(outputs)
        if spec is None:
            return
        self.outputs_seen = True
        cls, vals = OutputSummary(spec)(outputs, results, len(rows))
        if cls is not None:
            self.classes.append(cls)
        if vals is not None:
            self.values.append(vals.copy())

    def _output_spec(self, outputs: Mapping[str, np.ndarray] | None) -> dict[str, Any] | None:
        task, m = self.task, self.manifest
        spec: dict[str, Any] = {"task": task}
        if task in ("classifier", "image_classifier"):
            name = _get(m, "scores_output") or _output_names(m)[0]
            width = int(np.prod(np.asarray(outputs[name]).shape[1:])) if outputs is not None else 0
            labels = list(_get(m, "labels") or range(width))
            spec.update(
                scores_output=name,
                softmax=bool(_get(m, "softmax")) if task == "image_classifier" else False,
                classes={"labels": labels},
                values=["confidence"],
            )
        elif task == "regressor":
            name = _get(m, "value_output")
            width = int(np.prod(np.asarray(outputs[name]).shape[1:])) if outputs is not None else 1
            k = min(max(width, 1), MAX_VALUE_OUTPUTS)
            spec.update(value_output=name, values=["value"] if k == 1 else [f"value_{i}" for i in range(k)])
        elif task == "anomaly":
            spec.update(
                value_output=_get(m, "value_output"),
                scores_output=_get(m, "scores_output"),
                classes={"labels": ["normal", "anomaly"]},
                values=["score"],
            )
        elif task == "detector":
            labels = list(_get(m, "labels") or range(self._detector_classes(outputs)))
            spec.update(classes={"labels": [*labels, "none"]}, values=["score", "detections"])
        else:
            return None
        self.n_classes = len(spec["classes"]["labels"]) if "classes" in spec else 0
        self._spec = spec
        return {**spec, "values": [{"name": v} for v in spec.get("values", ())]}

    def _detector_classes(self, outputs: Mapping[str, np.ndarray] | None) -> int:
        if outputs is None:
            return 0
        shape = np.asarray(outputs[_output_names(self.manifest)[0]]).shape
        layout = (_get(self.manifest, "detector") or {}).get("format", "yolov5")
        return int(shape[1] - 4) if layout == "yolov8" else int(shape[2] - 5)

    def finish(self) -> dict[str, Any]:
        if self.rows < 10:
            raise ValueError(
                f"a reference needs at least 10 rows, not {self.rows} (a few hundred or more describe "
                "a distribution well)"
            )
        ref: dict[str, Any] = {"format": REFERENCE_FORMAT, "rows": self.rows, "bins": self.bins}
        if self.inputs is not None:
            x = np.concatenate(self.features)
            ins = {k: v for k, v in self.inputs.items() if k != "features"}
            ins["features"] = [
                {"name": name, **_channel(x[:, j], self.bins)} for j, name in enumerate(self.inputs["features"])
            ]
            ref["inputs"] = ins
        else:
            ref["inputs"] = None
        ref["outputs"] = self._outputs() if self.outputs_seen else None
        return ref

    def _outputs(self) -> dict[str, Any]:
        spec = dict(self._spec)
        if "classes" in spec:
            cls = np.concatenate(self.classes)
            counts = np.bincount(cls, minlength=self.n_classes)[: self.n_classes]
            spec["classes"] = {"labels": spec["classes"]["labels"], "shares": _shares(counts, len(cls))}
        if spec.get("values"):
            v = np.concatenate(self.values)
            spec["values"] = [{"name": name, **_channel(v[:, j], self.bins)} for j, name in enumerate(spec["values"])]
        if self.task == "anomaly":
            spec["anomaly_rate"] = spec["classes"]["shares"][1]
        return spec


def _input_spec(
    manifest: Any, row_shape: tuple[int, ...], names: Sequence[str] | None, max_features: int
) -> dict[str, Any] | None:
    inputs = _get(manifest, "inputs") or [{}]
    first = inputs[0] if isinstance(inputs[0], Mapping) else inputs[0].model_dump()
    if str(first.get("dtype", "float32")) in ("str", "object", "string"):
        return None
    declared = [d for d in (first.get("shape") or [None])[1:]]
    task = _get(manifest, "task") or "generic"
    n_values = int(np.prod(row_shape)) if row_shape else 1
    image_like = len(row_shape) == 3 and (row_shape[0] in (1, 3, 4) or row_shape[-1] in (1, 3, 4))
    if task in IMAGE_TASKS or (image_like and n_values > max_features):
        layout = image_layout(manifest, row_shape)
        c = row_shape[0] if layout == "NCHW" else row_shape[-1]
        color = str((_get(manifest, "preprocess") or {}).get("color", "rgb"))
        channels = list(color) if c == 3 and color in ("rgb", "bgr") else [str(i) for i in range(c)]
        h, w = (row_shape[1], row_shape[2]) if layout == "NCHW" else (row_shape[0], row_shape[1])
        stride = max(1, math.isqrt(int(h) * int(w) // IMAGE_PIXELS))
        return {
            "transform": "image",
            "layout": layout,
            "stride": stride,
            "features": [f"brightness_{ch}" for ch in channels] + [f"contrast_{ch}" for ch in channels],
        }
    dynamic = any(not (isinstance(d, int) and d > 0) for d in declared)
    if dynamic or n_values > max_features:
        if names is not None:
            raise ValueError(
                f"feature names given, but rows of {n_values} values are described by their mean and "
                f"std (at most {max_features} features are binned one by one)"
            )
        return {"transform": "row_stats", "features": ["row_mean", "row_std"]}
    if names is not None and len(names) != n_values:
        raise ValueError(f"{len(names)} feature names for rows of {n_values} values")
    return {
        "transform": "features",
        "features": [str(n) for n in names] if names is not None else [str(i) for i in range(n_values)],
    }


def _channel(x: np.ndarray, bins: int) -> dict[str, list[float]]:
    edges = _edges(x, bins)
    e32 = np.asarray(edges, np.float32)
    counts = np.bincount(bin_index(x[:, None], e32[:, None, None]).ravel(), minlength=len(edges) + 1)
    return {"edges": edges, "shares": _shares(counts, len(x))}


def _edges(x: np.ndarray, bins: int) -> list[float]:
    x = x[np.isfinite(x)]
    if not x.size:
        return []
    distinct = np.unique(x)
    if len(distinct) <= bins:  # each value its own bin: (prev, v] holds only v; the gaps get bins of their own
        below = np.nextafter(distinct, np.float32(-np.inf))
        edges = np.concatenate([below, distinct])
    else:
        edges = np.quantile(x.astype(np.float64), np.arange(1, bins) / bins).astype(np.float32)
    # Shortest float32 text, read back as float32 by the monitor: the same edges on both sides.
    return sorted({float(str(v)) for v in np.unique(edges.astype(np.float32)) if math.isfinite(float(v))})


def _shares(counts: np.ndarray, total: int) -> list[float]:
    return [round(float(c) / total, 6) for c in counts]


# -- manifests as dicts (inside the converter) or as Manifest objects -------------------------------------


def _get(manifest: Any, key: str) -> Any:
    if isinstance(manifest, Mapping):
        return manifest.get(key)
    return getattr(manifest, key, None)


def _output_names(manifest: Any) -> list[str]:
    return [o["name"] if isinstance(o, Mapping) else o.name for o in (_get(manifest, "outputs") or [])]


def _as_manifest(manifest: Any) -> Any:
    from edge_runtime.bundle import Manifest

    if isinstance(manifest, Manifest):
        return manifest
    return Manifest.model_validate({**manifest, "sha256": manifest.get("sha256") or "0" * 64})


def _frame_meta(manifest: Any, row_shape: tuple[int, ...]) -> Any:
    from edge_runtime.tasks.vision import FrameMeta

    layout = image_layout(manifest, row_shape)
    h, w = (row_shape[1], row_shape[2]) if layout == "NCHW" else (row_shape[0], row_shape[1])
    return FrameMeta(None, None, int(w), int(h), 1.0, 1.0, 0, 0)
