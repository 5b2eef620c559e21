"""Ultralytics and classic YOLOv5 ONNX exports: what the file says about itself, read from its metadata.

Ultralytics' exporter (``ultralytics/engine/exporter.py``) writes ``str(value)`` of each field into the
ONNX ``metadata_props``: ``task`` (detect, classify, segment, pose, obb), ``names`` (a Python dict
literal ``{0: 'person', ...}``), ``imgsz`` (``[h, w]``), ``stride``, ``batch``, ``args`` (a dict literal,
with ``nms``), ``end2end`` and ``author = Ultralytics``. Classic YOLOv5 (``ultralytics/yolov5``'s
``export.py``) writes only ``stride`` and ``names``. Literals are parsed with ``ast.literal_eval``: a
model file is data and is never evaluated as code.

What Ultralytics' own predictor does with such a model, and so what the bundle declares:
- detect: letterbox to ``imgsz`` with grey 114 borders (INTER_LINEAR), RGB, /255, NCHW; output
  ``[N, 4 + classes, boxes]`` without objectness (the ``yolov8`` format: YOLOv5u, v8, 11); predictor
  defaults conf 0.25, IoU 0.7, at most 300 detections.
- classify: resize the short side to ``imgsz`` and centre-crop, RGB, /255, no mean/std; the exported
  head already applies softmax.
- classic YOLOv5 detect: output ``[N, boxes, 5 + classes]`` with an objectness column (``yolov5``
  format); its ``detect.py`` defaults conf 0.25, IoU 0.45, at most 1000 detections.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from ._registry import ConversionError

__all__ = ["ExportInfo", "read_export"]

_TASKS = {"detect": "detector", "classify": "image_classifier"}
# What Ultralytics' own predictor does to a frame before a detector (YOLOv5's repository does the same).
_LETTERBOX: dict[str, Any] = {
    "resize": "letterbox",
    "color": "rgb",
    "scale": 1 / 255,
    "layout": "NCHW",
    "pad_value": 114,
    "interpolation": "linear",
}
# Ultralytics' classic YOLOv5 classifiers normalise with ImageNet statistics (utils/augmentations.py).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ExportInfo:
    """What an export's metadata says, as manifest fields; ``unsupported`` says why it cannot be served yet."""

    exporter: str  # "ultralytics" or "yolov5"
    task: str | None = None
    labels: list[str] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] | None = None
    unsupported: str | None = None
    source: dict[str, Any] = field(default_factory=dict)


def _literal(meta: dict[str, str], key: str) -> Any:
    try:
        return ast.literal_eval(meta[key])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConversionError(f"the model's metadata {key!r} is not a Python literal: {meta[key][:60]!r}") from None


def _names(meta: dict[str, str]) -> list[str] | None:
    if "names" not in meta:
        return None
    value = _literal(meta, "names")
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, int) and k >= 0 for k in value):
        if not value:
            return None
        # Class ids are the positions in the output; an id left out still has a column.
        return [str(value.get(i, i)) for i in range(max(value) + 1)]
    raise ConversionError(
        f"the model's metadata 'names' is neither a list nor a dict of class ids: {meta['names'][:60]!r}"
    )


def _imgsz(meta: dict[str, str]) -> tuple[int, int] | None:
    """(width, height) from ``imgsz``, which Ultralytics writes as ``[h, w]`` (or one int for both)."""
    if "imgsz" not in meta:
        return None
    value = _literal(meta, "imgsz")
    if isinstance(value, int):
        value = [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[1]), int(value[0])
    raise ConversionError(f"the model's metadata 'imgsz' is not [height, width]: {meta['imgsz'][:40]!r}")


def _int(meta: dict[str, str], key: str) -> int | None:
    try:
        return int(meta[key]) if key in meta else None
    except ValueError:
        return None


def read_export(model: Any) -> ExportInfo | None:
    """``ExportInfo`` for an Ultralytics or classic YOLOv5 export (an ``onnx.ModelProto``), else None."""
    meta = {p.key: p.value for p in model.metadata_props}
    outputs = [
        [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in o.type.tensor_type.shape.dim]
        for o in model.graph.output
    ]
    if meta.get("author") == "Ultralytics" or "task" in meta:
        return _ultralytics(meta, outputs)
    if "stride" in meta and "names" in meta:
        return _classic_yolov5(meta, outputs)
    return None


def _ultralytics(meta: dict[str, str], outputs: list[list]) -> ExportInfo:
    names, size = _names(meta), _imgsz(meta)
    kind = meta.get("task", "detect")
    info = ExportInfo(
        "ultralytics",
        labels=names,
        source={
            "exporter": "ultralytics",
            "version": meta.get("version"),
            "task": kind,
            "imgsz": list(size[::-1]) if size else None,
            "stride": _int(meta, "stride"),
            "batch": _int(meta, "batch"),
        },
    )
    args = _literal(meta, "args") if "args" in meta else {}
    end2end = meta.get("end2end", "False") == "True" or (isinstance(args, dict) and bool(args.get("nms")))
    if kind not in _TASKS:
        info.unsupported = (
            f"Ultralytics {kind} models are not supported yet (detect and classify are); "
            "--task generic serves the raw outputs"
        )
        return info
    info.task = _TASKS[kind]
    if info.task == "detector":
        if end2end:
            info.unsupported = (
                "this Ultralytics export has NMS inside the model (end2end or nms=True: rows of "
                "x1, y1, x2, y2, score, class), which is not supported yet; export it with "
                "nms=False (and end2end=False), or use --task generic for the raw outputs"
            )
            return info
        info.preprocess = dict(_LETTERBOX)
        out = outputs[0] if outputs else []
        fmt = "yolov8"
        if names and len(out) == 3 and out[1] != 4 + len(names) and out[2] == 5 + len(names):
            fmt = "yolov5"  # an Ultralytics package export of an anchor-based head
        info.detector = {"format": fmt, "conf_threshold": 0.25, "iou_threshold": 0.7, "max_detections": 300}
    else:
        square = size is None or size[0] == size[1]
        info.preprocess = {
            "resize": "center_crop" if square else "stretch",
            "color": "rgb",
            "scale": 1 / 255,
            "layout": "NCHW",
            "interpolation": "area",
        }
        if square and size:
            info.preprocess["resize_short"] = size[0]
    if size:
        info.preprocess["size"] = list(size)
    return info


def _classic_yolov5(meta: dict[str, str], outputs: list[list]) -> ExportInfo:
    names = _names(meta)
    info = ExportInfo("yolov5", labels=names, source={"exporter": "yolov5", "stride": _int(meta, "stride")})
    out = outputs[0] if outputs else []
    classes = len(names) if names else None
    if len(outputs) == 1 and len(out) == 3 and (classes is None or out[2] in (None, 5 + classes)):
        info.task = "detector"
        info.preprocess = dict(_LETTERBOX)
        info.detector = {"format": "yolov5", "conf_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 1000}
    elif len(outputs) == 1 and len(out) == 2:
        info.task = "image_classifier"
        info.preprocess = {
            "resize": "center_crop",
            "color": "rgb",
            "scale": 1 / 255,
            "layout": "NCHW",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": "area",
        }
    else:
        info.unsupported = (
            f"this YOLOv5 export has {len(outputs)} outputs (segmentation?), which is not supported "
            "yet; --task generic serves the raw outputs"
        )
    return info
