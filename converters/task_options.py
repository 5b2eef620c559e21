"""What a converted model is for: the task, class names and image preprocessing, from the model's own
metadata (Ultralytics and YOLOv5 exports) and the ``convert`` flags, the flags winning.

Every combination of flags is checked here, in one place, and each problem is one line that says what
is wrong and how to fix it. The result is checked once more as the runtime will check it
(``image_spec``), so ``convert`` never writes a bundle ``load_bundle`` would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.bundle.image_spec import IMAGE_TASKS, DetectorSpec, PreprocessSpec, image_manifest_problem

from ._registry import ConversionError

__all__ = [
    "TaskOptions",
    "TASKS",
    "CHOICES",
    "task_options_from_text",
    "resolve_task",
    "parse_class_names",
    "parse_image_size",
    "parse_triple",
]

TASKS = ("auto", "generic", "classifier", "regressor", "anomaly", "image_classifier", "detector")
CHOICES = {
    "--task": TASKS,
    "--resize": ("letterbox", "stretch", "center_crop"),
    "--color": ("rgb", "bgr"),
    "--layout": ("NCHW", "NHWC"),
    "--detector-format": ("yolov5", "yolov8"),
}
# flag name -> TaskOptions field, in the order errors name them
_IMAGE_FLAGS = {
    "--image-size": "image_size",
    "--resize": "resize",
    "--resize-short": "resize_short",
    "--color": "color",
    "--scale": "scale",
    "--mean": "mean",
    "--std": "std",
    "--layout": "layout",
}
_DETECTOR_FLAGS = {
    "--detector-format": "detector_format",
    "--conf-threshold": "conf_threshold",
    "--iou-threshold": "iou_threshold",
}


@dataclass(frozen=True)
class TaskOptions:
    """``convert``'s task flags; None means "not given": the model's metadata (or a default) decides."""

    task: str = "auto"
    class_names: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None  # (width, height)
    resize: str | None = None
    resize_short: int | None = None
    color: str | None = None
    scale: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    layout: str | None = None
    detector_format: str | None = None
    conf_threshold: float | None = None
    iou_threshold: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (
            ("--task", self.task),
            ("--resize", self.resize),
            ("--color", self.color),
            ("--layout", self.layout),
            ("--detector-format", self.detector_format),
        ):
            if value is not None and value not in CHOICES[flag]:
                raise ConversionError(f"unknown {flag} {value!r}; choose from {', '.join(CHOICES[flag])}")
        if self.resize_short is not None and self.resize_short < 1:
            raise ConversionError(f"--resize-short {self.resize_short}: must be at least 1")
        for name, threshold in (("--conf-threshold", self.conf_threshold), ("--iou-threshold", self.iou_threshold)):
            if threshold is not None and not 0 < threshold <= 1:
                raise ConversionError(f"{name} {threshold:g}: must be above 0 and at most 1")
        if self.scale is not None and not self.scale > 0:
            raise ConversionError(f"--scale {self.scale:g}: must be above 0")
        if self.std is not None and min(self.std) <= 0:
            raise ConversionError("--std: every value must be above 0 (it divides)")
        if self.class_names is not None and not self.class_names:
            raise ConversionError("--class-names: no names given")

    def given(self) -> list[str]:
        """The flags that were given, by their command-line names."""
        names = {
            "task": "--task",
            "class_names": "--class-names",
            **{v: k for k, v in _IMAGE_FLAGS.items()},
            **{v: k for k, v in _DETECTOR_FLAGS.items()},
        }
        return [
            names[f.name]
            for f in fields(self)
            if (getattr(self, f.name) != "auto" if f.name == "task" else getattr(self, f.name) is not None)
        ]


def task_options_from_text(**flags: str | None) -> TaskOptions:
    """``TaskOptions`` from the flags as typed (strings), every value parsed and checked with a one-line error."""

    def number(flag: str, text: str | None, kind: type) -> Any:
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            raise ConversionError(f"{flag} {text!r}: expected {'an integer' if kind is int else 'a number'}") from None

    f = dict(flags)
    return TaskOptions(
        task=f.get("task") or "auto",
        class_names=parse_class_names(names) if (names := f.get("class_names")) is not None else None,
        image_size=parse_image_size(size) if (size := f.get("image_size")) is not None else None,
        resize=f.get("resize"),
        resize_short=number("--resize-short", f.get("resize_short"), int),
        color=f.get("color"),
        scale=number("--scale", f.get("scale"), float),
        mean=parse_triple("--mean", mean) if (mean := f.get("mean")) is not None else None,
        std=parse_triple("--std", std) if (std := f.get("std")) is not None else None,
        layout=f.get("layout"),
        detector_format=f.get("detector_format"),
        conf_threshold=number("--conf-threshold", f.get("conf_threshold"), float),
        iou_threshold=number("--iou-threshold", f.get("iou_threshold"), float),
    )


def parse_class_names(text: str) -> tuple[str, ...]:
    """``--class-names``: a text file with one name per line, or a comma-separated list."""
    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConversionError(f"--class-names {text}: cannot read it as UTF-8 text ({err})") from None
        while lines and not lines[-1].strip():
            lines.pop()
        names = tuple(line.strip() for line in lines)
        if not names or any(not n for n in names):
            raise ConversionError(f"--class-names {text}: one name per line, no empty lines")
        return names
    if "," not in text and ("/" in text or text.endswith(".txt")):
        raise ConversionError(f"--class-names {text}: no such file (give a file with one name per line, or a,b,c)")
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names):
        raise ConversionError(f"--class-names {text!r}: an empty name; give a,b,c or a file with one name per line")
    return names


def parse_image_size(text: str) -> tuple[int, int]:
    """``--image-size``: ``N`` (square) or ``WxH``; returns (width, height)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > 16384:
        raise ConversionError(f"--image-size {text!r}: expected N or WxH like 640 or 640x480")
    return parts[0], parts[1]


def parse_triple(flag: str, text: str) -> tuple[float, float, float]:
    """``--mean``/``--std``: three comma-separated numbers, one per channel in the model's colour order."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConversionError(f"{flag} {text!r}: expected three numbers like 0.485,0.456,0.406")
    return values  # three floats: mypy narrows the tuple by the len() check above


def _one_line(err: ValidationError, section: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{section}{'.' + where if where else ''}: {first['msg'].removeprefix('Value error, ')}"


def _guess_layout(shape: list) -> str:
    return "NHWC" if len(shape) == 4 and shape[3] == 3 and shape[1] != 3 else "NCHW"


def _guess_format(out: list, labels: list | None) -> str:
    """yolov8 lays out (4 + classes, boxes), yolov5 (boxes, 5 + classes): tell them apart by shape."""
    a, b = ([*out, None, None, None])[1:3]
    if labels:
        if a == 4 + len(labels):
            return "yolov8"
        if b == 5 + len(labels):
            return "yolov5"
    if isinstance(a, int) and isinstance(b, int):
        return "yolov8" if a < b else "yolov5"
    return "yolov8"


def _outputs_softmax(model: Any, output: str) -> bool:
    producer = next((n for n in model.graph.node if output in n.output), None)
    return producer is not None and producer.op_type in ("Softmax", "Sigmoid", "LogSoftmax")


def resolve_task(model: Any, manifest: dict[str, Any], options: TaskOptions | None, *, family: str) -> dict[str, Any]:
    """``manifest`` with task, labels and image sections resolved from ``model``'s metadata and ``options``."""
    options = options or TaskOptions()
    given = options.given()
    if family not in ("onnx", "pytorch"):
        if given:
            raise ConversionError(
                f"{given[0]} applies to ONNX and PyTorch models; a {family} model's task and "
                "classes come from the model itself"
            )
        return manifest
    from .ultralytics import read_export

    info = read_export(model)
    if info and info.unsupported and options.task in ("auto", info.task):
        raise ConversionError(info.unsupported)
    task = options.task if options.task != "auto" else (info.task if info and info.task else None)
    if task is None:
        task = manifest.get("task", "generic")
    image_flags = [f for f, name in _IMAGE_FLAGS.items() if getattr(options, name) is not None]
    detector_flags = [f for f, name in _DETECTOR_FLAGS.items() if getattr(options, name) is not None]
    if task not in IMAGE_TASKS and image_flags:
        raise ConversionError(
            f"{image_flags[0]} applies to image models: add --task image_classifier or --task detector"
        )
    if task != "detector" and detector_flags:
        raise ConversionError(f"{detector_flags[0]} applies to detectors: add --task detector")
    if options.class_names is not None and task in ("generic", "regressor", "anomaly"):
        raise ConversionError(f"--class-names applies to classifiers and detectors, not --task {task}")
    resize = options.resize or (info.preprocess.get("resize") if info else None)
    if options.resize_short is not None and resize != "center_crop":
        raise ConversionError(
            "--resize-short applies to --resize center_crop (the short side is resized, then the "
            "centre cut out): add --resize center_crop"
        )
    out = dict(manifest)
    out["task"] = task
    if info is not None:
        out["source"] = {**out.get("source", {}), **{k: v for k, v in info.source.items() if v is not None}}
    # the metadata, where it describes the model as it will be served
    described = info if info is not None and info.task == task else None
    outputs = out["outputs"]
    labels = list(options.class_names) if options.class_names is not None else (described.labels if described else None)
    if labels is not None:
        out["labels"] = labels
    if task == "classifier":
        out.setdefault("scores_output", outputs[0]["name"])
    elif task == "regressor":
        out.setdefault("value_output", outputs[0]["name"])
    elif task == "anomaly":
        if len(outputs) < 2:
            raise ConversionError("--task anomaly needs a model with two outputs (label, then score)")
        out.setdefault("value_output", outputs[0]["name"])
        out.setdefault("scores_output", outputs[1]["name"])
    if task in IMAGE_TASKS:
        _image_sections(out, model, options, described)
    return out


def _image_sections(out: dict[str, Any], model: Any, options: TaskOptions, info: Any) -> None:
    shape = out["inputs"][0]["shape"]
    if len(shape) != 4:
        raise ConversionError(f"an image model takes a 4-D input (N, C, H, W or N, H, W, C); this one is {shape}")
    pre: dict[str, Any] = dict(info.preprocess) if info else {}
    pre.setdefault("layout", _guess_layout(shape))
    for _flag, name in _IMAGE_FLAGS.items():
        value = getattr(options, name)
        if value is not None:
            pre["size" if name == "image_size" else name] = list(value) if isinstance(value, tuple) else value
    if options.resize is not None and options.resize != "center_crop":
        pre.pop("resize_short", None)  # the metadata's crop no longer applies
    layout = pre["layout"]
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    fixed = [d if isinstance(d, int) and d > 0 else None for d in (w, h)]
    channels = shape[3] if layout == "NHWC" else shape[1]
    if isinstance(channels, int) and channels != 3:
        raise ConversionError(
            f"input {shape} has {channels} channels on the {layout} channel axis; image models take "
            f"3{' (try --layout NHWC)' if layout == 'NCHW' else ' (try --layout NCHW)'}"
        )
    if "size" in pre:
        sw, sh = pre["size"]
        if (fixed[0] is not None and fixed[0] != sw) or (fixed[1] is not None and fixed[1] != sh):
            what = "--image-size" if options.image_size else "the model's metadata imgsz"
            raise ConversionError(
                f"{what} {sw}x{sh} does not match the model's fixed input {fixed[0]}x{fixed[1]} "
                f"({shape}); leave it out or give {fixed[0]}x{fixed[1]}"
            )
    elif None in fixed:
        raise ConversionError(f"the model's input {shape} has no fixed height and width: give --image-size N or WxH")
    else:
        pre["size"] = fixed
    short = pre.get("resize_short") if pre.get("resize") == "center_crop" else None
    if short is not None and short < max(pre["size"]):
        raise ConversionError(
            f"--resize-short {short} is smaller than the {pre['size'][0]}x{pre['size'][1]} "
            f"crop: give at least {max(pre['size'])}"
        )
    try:
        out["preprocess"] = PreprocessSpec.model_validate(pre).model_dump(mode="json", exclude_none=True)
    except ValidationError as err:
        raise ConversionError(_one_line(err, "preprocess")) from None
    first = out["outputs"][0]
    if out["task"] == "detector":
        det: dict[str, Any] = dict(info.detector) if info and info.detector else {}
        if options.detector_format:
            det["format"] = options.detector_format
        det.setdefault("format", _guess_format(first["shape"], out.get("labels")))
        if options.conf_threshold is not None:
            det["conf_threshold"] = options.conf_threshold
        if options.iou_threshold is not None:
            det["iou_threshold"] = options.iou_threshold
        try:
            out["detector"] = DetectorSpec.model_validate(det).model_dump(mode="json")
        except ValidationError as err:
            raise ConversionError(_one_line(err, "detector")) from None
    else:
        out.setdefault("scores_output", first["name"])
        if not _outputs_softmax(model, first["name"]):
            out["softmax"] = True  # the model ends in logits: scores are made probabilities per frame
    _check_as_the_runtime_will(out)


def _check_as_the_runtime_will(out: dict[str, Any]) -> None:
    from edge_runtime.bundle import Manifest

    try:
        manifest = Manifest.model_validate({**out, "sha256": "0" * 64})
    except ValidationError as err:
        raise ConversionError(_one_line(err, "manifest")) from None
    problem = image_manifest_problem(manifest)
    if problem:
        hint = ""
        if "labels for a model with" in problem:
            hint = " (check --class-names" + (" and --detector-format)" if out["task"] == "detector" else ")")
        elif "detector format" in problem or "first output" in problem:
            hint = " (check --detector-format)"
        raise ConversionError(problem + hint)
