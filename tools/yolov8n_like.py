"""An ONNX model with YOLOv8n's architecture and random weights, built without torch or downloads.

    python tools/yolov8n_like.py OUT.onnx [--size 640]

The graph follows Ultralytics' yolov8n.yaml (width 0.25, depth 0.33): the Conv/C2f/SPPF backbone, the
upsampling neck, and the Detect head with DFL box decoding, batch-norm folded into the convolutions as an
export does (Conv + bias, SiLU as x * sigmoid(x)). Its input is ``images [1, 3, S, S]``, its output
``output0 [1, 84, anchors]`` with the metadata an Ultralytics export carries, so ``edge-runtime convert``
takes it as it takes a real export. 3.16 M parameters (a real YOLOv8n: 3.15 M), so memory and speed
figures measured on it are those of the real model's size; the weights are random (class biases set so
that it finds few boxes), so its detections mean nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["yolov8n_like"]

CLASSES = 80
REG_MAX = 16


class _Graph:
    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.params = 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"{what}_{self.n}"

    def const(self, value: np.ndarray, what: str = "c") -> str:
        name = self.name(what)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, c1: int, c2: int, k: int = 1, s: int = 1, *, act: bool = True, bias: float = 0.0) -> str:
        """Conv + folded batch norm + SiLU (``act``), as an Ultralytics export lays it out."""
        w = self.rng.normal(0, (2.0 / (c1 * k * k)) ** 0.5, (c2, c1, k, k)).astype(np.float32)
        b = np.full(c2, bias, np.float32)
        self.params += w.size + b.size
        y = self.op(
            "Conv", [x, self.const(w, "w"), self.const(b, "b")], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4
        )
        return self.op("Mul", [y, self.op("Sigmoid", [y])]) if act else y

    def c2f(self, x: str, c1: int, c2: int, n: int, shortcut: bool) -> str:
        c = c2 // 2
        y = self.conv(x, c1, 2 * c)
        a, b = self.name("split_a"), self.name("split_b")
        self.nodes.append(helper.make_node("Split", [y, self.const(np.array([c, c], np.int64))], [a, b], axis=1))
        parts = [a, b]
        for _ in range(n):
            h = self.conv(self.conv(parts[-1], c, c, 3), c, c, 3)
            parts.append(self.op("Add", [parts[-1], h]) if shortcut else h)
        return self.conv(self.op("Concat", parts, axis=1), (2 + n) * c, c2)

    def sppf(self, x: str, c1: int, c2: int) -> str:
        c = c1 // 2
        y = [self.conv(x, c1, c)]
        for _ in range(3):
            y.append(self.op("MaxPool", [y[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
        return self.conv(self.op("Concat", y, axis=1), 4 * c, c2)

    def upsample(self, x: str) -> str:
        scales = self.const(np.array([1, 1, 2, 2], np.float32))
        return self.op("Resize", [x, "", scales], mode="nearest")


def yolov8n_like(size: int = 640, *, seed: int = 0) -> bytes:
    """The serialized ONNX model (opset 17), with Ultralytics' metadata for ``size``."""
    if size % 32:
        raise ValueError(f"size must be a multiple of 32, not {size}")
    g = _Graph(seed)
    x = g.conv("images", 3, 16, 3, 2)
    x = g.conv(x, 16, 32, 3, 2)
    x = g.c2f(x, 32, 32, 1, True)
    x = g.conv(x, 32, 64, 3, 2)
    p3 = g.c2f(x, 64, 64, 2, True)
    x = g.conv(p3, 64, 128, 3, 2)
    p4 = g.c2f(x, 128, 128, 2, True)
    x = g.conv(p4, 128, 256, 3, 2)
    x = g.c2f(x, 256, 256, 1, True)
    p5 = g.sppf(x, 256, 256)
    h12 = g.c2f(g.op("Concat", [g.upsample(p5), p4], axis=1), 384, 128, 1, False)
    out3 = g.c2f(g.op("Concat", [g.upsample(h12), p3], axis=1), 192, 64, 1, False)
    out4 = g.c2f(g.op("Concat", [g.conv(out3, 64, 64, 3, 2), h12], axis=1), 192, 128, 1, False)
    out5 = g.c2f(g.op("Concat", [g.conv(out4, 128, 128, 3, 2), p5], axis=1), 384, 256, 1, False)

    c2, c3 = 64, 80
    levels, anchors, strides = [], [], []
    for feat, ch, stride in ((out3, 64, 8), (out4, 128, 16), (out5, 256, 32)):
        box = g.conv(g.conv(g.conv(feat, ch, c2, 3), c2, c2, 3), c2, 4 * REG_MAX, act=False)
        cls = g.conv(g.conv(g.conv(feat, ch, c3, 3), c3, c3, 3), c3, CLASSES, act=False, bias=-8.0)
        both = g.op("Concat", [box, cls], axis=1)
        levels.append(g.op("Reshape", [both, g.const(np.array([1, 4 * REG_MAX + CLASSES, -1], np.int64))]))
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
        anchors.append(np.stack([xs.ravel(), ys.ravel()]))
        strides.append(np.full(n * n, stride))
    cat = g.op("Concat", levels, axis=2)
    box, cls = g.name("box"), g.name("cls")
    g.nodes.append(
        helper.make_node("Split", [cat, g.const(np.array([4 * REG_MAX, CLASSES], np.int64))], [box, cls], axis=1)
    )
    # DFL: a softmax over 16 bins per side, then their expectation (a 1x1 conv with weights 0..15)
    dist = g.op("Reshape", [box, g.const(np.array([1, 4, REG_MAX, -1], np.int64))])
    dist = g.op("Softmax", [g.op("Transpose", [dist], perm=[0, 2, 1, 3])], axis=1)
    arange = g.const(np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1))
    dist = g.op("Reshape", [g.op("Conv", [dist, arange]), g.const(np.array([1, 4, -1], np.int64))])
    lt, rb = g.name("lt"), g.name("rb")
    g.nodes.append(helper.make_node("Split", [dist, g.const(np.array([2, 2], np.int64))], [lt, rb], axis=1))
    anchor = g.const(np.concatenate(anchors, axis=1)[None].astype(np.float32))
    x1y1, x2y2 = g.op("Sub", [anchor, lt]), g.op("Add", [anchor, rb])
    centre = g.op("Div", [g.op("Add", [x1y1, x2y2]), g.const(np.array(2.0, np.float32))])
    dbox = g.op("Concat", [centre, g.op("Sub", [x2y2, x1y1])], axis=1)
    dbox = g.op("Mul", [dbox, g.const(np.concatenate(strides)[None, None].astype(np.float32))])
    g.nodes.append(helper.make_node("Concat", [dbox, g.op("Sigmoid", [cls])], ["output0"], axis=1, name="output0"))

    graph = helper.make_graph(
        g.nodes,
        "yolov8n_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, sum(len(s) for s in strides)])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    names = {i: f"class{i}" for i in range(CLASSES)}
    meta = {
        "description": "Ultralytics YOLOv8n model (architecture only, random weights)",
        "author": "Ultralytics",
        "version": "8.3.0",
        "stride": "32",
        "task": "detect",
        "batch": "1",
        "imgsz": str([size, size]),
        "names": str(names),
        "args": str({"batch": 1, "half": False, "nms": False, "dynamic": False}),
        "channels": "3",
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=640)
    args = p.parse_args()
    args.out.write_bytes(yolov8n_like(args.size))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
