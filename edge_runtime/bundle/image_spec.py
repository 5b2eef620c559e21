"""Typed manifest sections for image models and for the engine a bundle was measured with.

``preprocess`` (how a frame becomes the model's input), ``detector`` (how a detection head's output is
read) and ``engine`` (which engine and settings the converter measured as fastest) are pydantic models
with ``extra="forbid"`` and closed choices: a misspelt key or an unknown value (``"resize": "crop"``) is
an error when the bundle is written and when it is loaded, never silently another option.

``image_manifest_problem`` checks what a single section cannot: that the sections agree with the
model's input and output shapes and with the labels. ``load_bundle`` calls it for every bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from .manifest import Manifest

__all__ = [
    "PreprocessSpec",
    "DetectorSpec",
    "EngineSpec",
    "IMAGE_TASKS",
    "image_manifest_problem",
    "input_hw",
    "detector_classes",
]

IMAGE_TASKS = ("image_classifier", "detector")

Resize = Literal["letterbox", "stretch", "center_crop"]


class PreprocessSpec(BaseModel):
    """How the model wants its images.

    Steps, in order: resize, colour order, ``* scale``, ``- mean``, ``/ std``, layout.
    """

    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int] | None = Field(
        None, description="Model input width and height; default: the model's fixed input height and width."
    )
    resize: Resize = Field(
        "letterbox",
        description="letterbox: keep the aspect ratio and pad; stretch: resize to size; "
        "center_crop: resize the short side to resize_short, then cut out the centre.",
    )
    resize_short: int | None = Field(
        None,
        ge=1,
        le=16384,
        description="center_crop only: the short side is resized to this first (default: the larger side of "
        "size, so only the long side's edges are cut).",
    )
    color: Literal["rgb", "bgr"] = Field("rgb", description="Channel order the model was trained on.")
    scale: float = Field(1 / 255, gt=0, description="Pixel values (0..255) are multiplied by this first.")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="Subtracted after scale, per channel.")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="Divided by after mean, per channel.")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = Field(114, ge=0, le=255, description="letterbox: the grey the borders are filled with.")
    interpolation: Literal["area", "linear"] = Field(
        "area",
        description="area: INTER_AREA when shrinking (least aliasing); linear: INTER_LINEAR always "
        "(what Ultralytics' own letterbox does).",
    )

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"size {list(self.size)}: width and height must be at least 1")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {list(self.std)}: every value must be above 0")
        if self.resize_short is not None and self.resize != "center_crop":
            raise ValueError(f"resize_short applies to resize = center_crop, not {self.resize}")
        if self.resize_short is not None and self.size is not None and self.resize_short < max(self.size):
            raise ValueError(
                f"resize_short {self.resize_short} is smaller than the {self.size[0]}x{self.size[1]} "
                f"crop; make it at least {max(self.size)}"
            )
        return self


class DetectorSpec(BaseModel):
    """How a YOLO-style detection output is read."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["yolov5", "yolov8"] = Field(
        "yolov5",
        description="yolov5: rows (cx, cy, w, h, objectness, classes...); "
        "yolov8: (4 + classes, N) without objectness (YOLOv5u, v8, 11).",
    )
    conf_threshold: float = Field(0.25, ge=0, le=1, description="Detections scoring below this are dropped.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="NMS: boxes of one class overlapping more are merged.")
    max_detections: int = Field(100, ge=1, le=10000)


class EngineSpec(BaseModel):
    """The engine and settings the converter measured as fastest for this bundle (``convert --quantize auto``).

    ``kind`` stays a plain string: a bundle made by a newer converter for an engine this runtime does not
    have still holds an ONNX file ONNX Runtime can run, so the runtime warns and falls back instead of refusing.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("onnxruntime", description="onnxruntime or openvino.")
    threads: int | None = Field(None, ge=1, le=256, description="Intra-op threads measured as fastest.")
    streams: int | None = Field(None, ge=1, le=64, description="OpenVINO: inference streams.")
    precision: Literal["f32", "bf16", "f16"] | None = Field(
        None,
        description="OpenVINO: the inference precision measured (its CPU default: bf16 or f16 where the CPU "
        "computes them natively); the gate checked its outputs against fp32.",
    )
    measured_on: str | None = Field(None, description="The machine the settings were measured on.")


def input_hw(shape: Sequence[int | str | None], layout: str) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of a 4-D image input, each None where the axis is dynamic."""
    fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if layout == "NCHW":
        return fixed[1], fixed[2], fixed[3]
    return fixed[3], fixed[1], fixed[2]


def detector_classes(shape: Sequence[int | str | None], fmt: str) -> int | None:
    """Number of classes a YOLO-style output of ``shape`` holds, or None where the axis is dynamic."""
    axis, extra = (1, 4) if fmt == "yolov8" else (2, 5)
    d = shape[axis] if len(shape) == 3 else None
    return d - extra if isinstance(d, int) and d > 0 else None


def image_manifest_problem(m: Manifest) -> str | None:
    """What is inconsistent between an image manifest's sections and its model, or None."""
    if m.task not in IMAGE_TASKS:
        for key in ("preprocess", "detector"):
            if getattr(m, key) is not None:
                return f"{key} is for image models (task image_classifier or detector), not task {m.task}"
        return None
    if m.detector is not None and m.task != "detector":
        return f"detector is for task detector, not {m.task}"
    pre = m.preprocess or PreprocessSpec()
    shape = m.inputs[0].shape
    if len(shape) != 4:
        return f"an image model takes a 4-D input (N, C, H, W or N, H, W, C); this one is {shape}"
    channels, h, w = input_hw(shape, pre.layout)
    if channels is not None and channels != 3:
        return (
            f"input {shape} has {channels} channels on the {pre.layout} channel axis; image models take 3 "
            f"(is preprocess.layout right?)"
        )
    if pre.size is None and (h is None or w is None):
        return f"the model's input {shape} has no fixed height and width: preprocess.size is needed"
    if pre.size is not None and ((w is not None and pre.size[0] != w) or (h is not None and pre.size[1] != h)):
        return f"preprocess.size {pre.size[0]}x{pre.size[1]} does not match the model's input {shape} ({pre.layout})"
    out = m.outputs[0].shape
    if m.task == "detector":
        fmt = (m.detector or DetectorSpec()).format
        if len(out) != 3:
            axes = "N, 4 + classes, boxes" if fmt == "yolov8" else "N, boxes, 5 + classes"
            return f"a detector's first output must be 3-D ({axes}); this one is {out}"
        classes = detector_classes(out, fmt)
        if classes is not None and classes < 1:
            return f"output {out} has no class columns for detector format {fmt} (is detector.format right?)"
    else:
        classes = out[-1] if isinstance(out[-1], int) and out[-1] > 0 else None
    if m.labels is not None and classes is not None and len(m.labels) != classes:
        return f"{len(m.labels)} labels for a model with {classes} classes"
    return None
