"""Small ONNX image models built in the tests, shaped like the pretrained ones users bring.

- ``yolo_model``: a YOLOv8-layout detector (``[N, 4 + C, boxes]``, no objectness) or a classic
  YOLOv5-layout one (``[N, boxes, 5 + C]`` with objectness), with Ultralytics-style or YOLOv5-style
  metadata. It "detects" saturated colour: class 0 red, 1 green, 2 blue (in RGB input order), one
  8x8 box per 4x4 cell, so what it finds in a frame is known and depends on the colour order, the
  scale and the letterbox.
- ``colour_classifier``: logits = the mean of each input channel (red, green, blue), without softmax;
  a classifier whose answer depends on which part of the frame it sees (centre crop vs stretch).
"""

from __future__ import annotations

import numpy as np

NAMES = ("red", "green", "blue")


def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def ultralytics_metadata(
    task: str = "detect", *, size: int = 64, names=NAMES, batch: int = 1, nms: bool = False, end2end: bool = False
) -> dict[str, str]:
    """``metadata_props`` as Ultralytics' exporter writes them: ``str(value)`` of each field."""
    return {
        "description": "Ultralytics YOLOv8n model",
        "author": "Ultralytics",
        "version": "8.3.0",
        "license": "AGPL-3.0 License",
        "stride": "4",
        "task": task,
        "batch": str(batch),
        "imgsz": str([size, size]),
        "names": str(dict(enumerate(names))),
        "args": str({"batch": batch, "half": False, "nms": nms, "dynamic": False}),
        "channels": "3",
        "end2end": str(end2end),
    }


def yolo_model(
    fmt: str = "yolov8",
    *,
    size: int = 64,
    batch: int | None = 1,
    classes: int = 3,
    metadata: dict[str, str] | None = None,
    opset: int = 13,
) -> bytes:
    onnx, T, helper, nh = _onnx()
    cells = size // 4
    n = cells * cells
    rng = np.random.default_rng(0)
    a, b = 12.0, 6.0
    wc = np.full((classes, 3, 4, 4), -a / 2 / 16, np.float32)
    for c in range(min(classes, 3)):
        wc[c, c] = a / 16
    ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    grid = np.stack([(xs.ravel() + 0.5) * 4, (ys.ravel() + 0.5) * 4, np.full(n, 8.0), np.full(n, 8.0)])[None]
    inits = [
        nh.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "wf"),
        nh.from_array(np.zeros(8, np.float32), "bf"),
        nh.from_array(wc, "wc"),
        nh.from_array(np.full(classes, -b, np.float32), "bc"),
        nh.from_array(rng.normal(0, 1e-4, (4, 8, 4, 4)).astype(np.float32), "wb"),
        nh.from_array(np.zeros(4, np.float32), "bb"),
        nh.from_array(grid.astype(np.float32), "grid"),
        nh.from_array(np.array([0, 4, -1], np.int64), "shape_box"),
        nh.from_array(np.array([0, classes, -1], np.int64), "shape_cls"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "wf", "bf"], ["f0"], pads=[1, 1, 1, 1], name="backbone/conv"),
        helper.make_node("Sigmoid", ["f0"], ["f1"], name="backbone/act/sigmoid"),
        helper.make_node("Mul", ["f0", "f1"], ["feat"], name="backbone/act/mul"),
        helper.make_node("Conv", ["images", "wc", "bc"], ["cls_map"], strides=[4, 4], name="head/cls/conv"),
        helper.make_node("Conv", ["feat", "wb", "bb"], ["box_map"], strides=[4, 4], name="head/box/conv"),
        helper.make_node("Reshape", ["box_map", "shape_box"], ["box_raw"], name="head/box/reshape"),
        helper.make_node("Add", ["box_raw", "grid"], ["box"], name="head/box/decode"),
        helper.make_node("Reshape", ["cls_map", "shape_cls"], ["cls_logits"], name="head/cls/reshape"),
        helper.make_node("Sigmoid", ["cls_logits"], ["cls"], name="head/cls/sigmoid"),
    ]
    dim0 = batch if batch else "N"
    if fmt == "yolov8":
        nodes.append(helper.make_node("Concat", ["box", "cls"], ["output0"], axis=1, name="head/concat"))
        out_shape = [dim0, 4 + classes, n]
    else:
        inits += [
            nh.from_array(np.zeros((1, 8, 4, 4), np.float32), "wo"),
            nh.from_array(np.full(1, 5.0, np.float32), "bo"),
            nh.from_array(np.array([0, 1, -1], np.int64), "shape_obj"),
        ]
        nodes += [
            helper.make_node("Conv", ["feat", "wo", "bo"], ["obj_map"], strides=[4, 4], name="head/obj/conv"),
            helper.make_node("Reshape", ["obj_map", "shape_obj"], ["obj_logits"], name="head/obj/reshape"),
            helper.make_node("Sigmoid", ["obj_logits"], ["obj"], name="head/obj/sigmoid"),
            helper.make_node("Concat", ["box", "obj", "cls"], ["rows_t"], axis=1, name="head/concat"),
            helper.make_node("Transpose", ["rows_t"], ["output0"], perm=[0, 2, 1], name="head/transpose"),
        ]
        out_shape = [dim0, n, 5 + classes]
    graph = helper.make_graph(
        nodes,
        "yolo",
        [helper.make_tensor_value_info("images", T.FLOAT, [dim0, 3, size, size])],
        [helper.make_tensor_value_info("output0", T.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def colour_classifier(*, size: int = 32, batch: int | str = "N", softmax: bool = False) -> bytes:
    onnx, T, helper, _ = _onnx()
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits" if not softmax else "flat"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["flat"], ["logits"], axis=1))
    graph = helper.make_graph(
        nodes,
        "colours",
        [helper.make_tensor_value_info("input", T.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", T.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def colour_scene(
    width: int = 320, height: int = 240, *, squares=((40, 60, 120, "red"), (200, 80, 80, "blue")), background: int = 128
) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]]]:
    """A grey BGR frame with saturated squares (x, y, side, colour); returns it and each square's label and box."""
    bgr = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
    img = np.full((height, width, 3), background, np.uint8)
    truth = []
    for x, y, side, colour in squares:
        img[y : y + side, x : x + side] = bgr[colour]
        truth.append((colour, (float(x), float(y), float(x + side), float(y + side))))
    return img, truth
