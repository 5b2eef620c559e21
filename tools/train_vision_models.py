"""Train the demo image models and write their bundles to edge_runtime/demo_models/ (a development tool).

    python tools/train_vision_models.py

Both are small CNNs built as ONNX graphs. Their convolutional features are fixed (seeded random
filters for the classifier, a colour-saturation map for the detector) and their heads are fitted with
scikit-learn on scenes from ``devices.scenes``, the generator the simulated cameras use. No torch, no
downloads; the same seed reproduces the same files.

- ``shapes-classifier``: 64x64 RGB -> circle / square / triangle.
- ``shapes-detector``: 96x96 letterboxed RGB -> YOLOv5-style rows (cx, cy, w, h, objectness, 3 classes)
  on a 12x12 grid: a 7x7 convolution over pooled saturation maps predicts each cell's objectness, class
  and box, the way a one-stage detector's head does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression, Ridge

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converters import ConversionError
from devices.scenes import SHAPES, draw_object, draw_scene
from edge_runtime.bundle import write_bundle
from edge_runtime.tasks.vision import letterbox

OUT = ROOT / "edge_runtime" / "demo_models"
OPSET = 17
GRID, STRIDE, DET_SIZE, CLS_SIZE = 12, 8, 96, 64
NEIGHBOURS = 0  # cells around an object's centre that also learn its box (0: the centre cell only)
OBJ_WEIGHT = 5.0


def _model(nodes, inputs, outputs, inits) -> bytes:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, inits),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-runtime tools",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def _rgb_chw(bgr: np.ndarray) -> np.ndarray:
    return (bgr[:, :, ::-1].astype(np.float32) / 255).transpose(2, 0, 1)


# -- classifier -------------------------------------------------------------------------------------


def _classifier_features(rng) -> tuple[list, list]:
    w1 = numpy_helper.from_array(rng.normal(0, 0.4, (12, 3, 5, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (16, 12, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["features"]),
    ]
    return nodes, [w1, w2]


def train_classifier(seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    nodes, inits = _classifier_features(rng)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, CLS_SIZE, CLS_SIZE])
    feats = _model(nodes, [image], [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", None])], inits)
    data = [draw_object(rng, CLS_SIZE) for _ in range(3000)]
    X = np.stack([_rgb_chw(img) for img, _ in data])
    y = np.array([SHAPES.index(s) for _, s in data])
    F = _run(feats, X)
    mu, sd = F.mean(0), F.std(0) + 1e-6
    clf = LogisticRegression(C=0.5, max_iter=2000).fit((F[:2500] - mu) / sd, y[:2500])
    print(f"classifier: held-out accuracy {clf.score((F[2500:] - mu) / sd, y[2500:]):.3f}")
    # Fold the standardisation into the head: (f - mu) / sd @ W + b == f @ (W / sd) + (b - mu / sd @ W)
    W = (clf.coef_ / sd).T.astype(np.float32)
    b = (clf.intercept_ - (mu / sd) @ clf.coef_.T).astype(np.float32)
    nodes += [
        helper.make_node("Gemm", ["features", "head_w", "head_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits += [numpy_helper.from_array(W, "head_w"), numpy_helper.from_array(b, "head_b")]
    model = _model(nodes, [image], [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])], inits)
    write_bundle(
        OUT / "shapes-classifier",
        model,
        {
            "name": "shapes-classifier",
            "version": "1",
            "task": "image_classifier",
            "labels": list(SHAPES),
            "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 3, CLS_SIZE, CLS_SIZE]}],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 3]}],
            "scores_output": "probabilities",
            "top_k": 3,
            "preprocess": {
                "size": [CLS_SIZE, CLS_SIZE],
                "resize": "stretch",
                "color": "rgb",
                "scale": 1 / 255,
                "layout": "NCHW",
            },
            "source": {"family": "tools/train_vision_models.py", "seed": seed},
        },
    )


# -- detector ---------------------------------------------------------------------------------------


def _detector_features() -> tuple[list, list]:
    """Saturation (max - min over colour, less the background's), pooled at 4 px (as 4 channels on the
    12x12 grid) and at 8 px, each also square-rooted: box sides grow with the root of covered area."""
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["cmax"], axes=[1], keepdims=1),
        helper.make_node("ReduceMin", ["image"], ["cmin"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["cmax", "cmin"], ["sat_raw"]),
        helper.make_node("Sub", ["sat_raw", "floor"], ["sat_shift"]),
        helper.make_node("Relu", ["sat_shift"], ["sat"]),
        helper.make_node("AveragePool", ["sat"], ["p4"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("SpaceToDepth", ["p4"], ["s4"], blocksize=2),
        helper.make_node("AveragePool", ["sat"], ["p8"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Concat", ["s4", "p8"], ["lin"], axis=1),
        helper.make_node("Sqrt", ["lin"], ["root"]),
        helper.make_node("Concat", ["lin", "root"], ["grid"], axis=1),
    ]
    return nodes, [numpy_helper.from_array(np.array(0.12, np.float32), "floor")]


def _neighbourhoods(grid: np.ndarray, k: int = 7) -> np.ndarray:
    """(N, C, G, G) -> (N, G, G, C*k*k), in the order a Conv kernel [C, k, k] multiplies them."""
    n, c, g, _ = grid.shape
    r = k // 2
    padded = np.pad(grid, ((0, 0), (0, 0), (r, r), (r, r)))
    cols = np.empty((n, g, g, c, k, k), np.float32)
    for dy in range(k):
        for dx in range(k):
            cols[..., dy, dx] = padded[:, :, dy : dy + g, dx : dx + g].transpose(0, 2, 3, 1)
    return cols.reshape(n, g, g, c * k * k)


def _det_sample(rng):
    frame, objects = draw_scene(rng, 320, 240)
    img, scale, px, py = letterbox(frame, DET_SIZE, DET_SIZE)
    boxes = [
        (SHAPES.index(s), (x1 * scale + px, y1 * scale + py, x2 * scale + px, y2 * scale + py))
        for s, (x1, y1, x2, y2) in objects
    ]
    return _rgb_chw(img), boxes


def train_detector(seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    nodes, feature_inits = _detector_features()
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, DET_SIZE, DET_SIZE])
    feats = _model(
        nodes, [image], [helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", 10, GRID, GRID])], feature_inits
    )
    samples = [_det_sample(rng) for _ in range(1500)]
    cols = _neighbourhoods(_run(feats, np.stack([x for x, _ in samples])))
    obj_y = np.zeros((len(samples), GRID, GRID), int)
    box_X, box_y, cls_X, cls_y = [], [], [], []
    for i, (_, boxes) in enumerate(samples):
        for c, (x1, y1, x2, y2) in boxes:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            gx, gy = min(int(cx // STRIDE), GRID - 1), min(int(cy // STRIDE), GRID - 1)
            obj_y[i, gy, gx] = 1
            cls_X.append(cols[i, gy, gx])
            cls_y.append(c)
            for ny in range(max(0, gy - NEIGHBOURS), min(GRID, gy + NEIGHBOURS + 1)):
                for nx in range(max(0, gx - NEIGHBOURS), min(GRID, gx + NEIGHBOURS + 1)):
                    box_X.append(cols[i, ny, nx])
                    box_y.append([cx - (nx + 0.5) * STRIDE, cy - (ny + 0.5) * STRIDE, x2 - x1, y2 - y1])
    flat = cols.reshape(-1, cols.shape[-1])
    # Centres are rare (about 2 in 144 cells): weigh them up so large shapes are not missed; NMS removes the extras.
    obj = LogisticRegression(C=1.0, max_iter=3000, class_weight={0: 1.0, 1: OBJ_WEIGHT}).fit(flat, obj_y.reshape(-1))
    box = Ridge(alpha=1e-2).fit(np.array(box_X), np.array(box_y))
    cls = LogisticRegression(C=1.0, max_iter=3000).fit(np.array(cls_X), np.array(cls_y))
    print(
        f"detector: objectness acc {obj.score(flat, obj_y.reshape(-1)):.4f}, "
        f"class acc {cls.score(np.array(cls_X), cls_y):.3f}, "
        f"box R2 {box.score(np.array(box_X), np.array(box_y)):.3f}"
    )
    k, c_in = 7, 10
    kernel = lambda coef: coef.reshape(-1, c_in, k, k).astype(np.float32)  # noqa: E731
    g = (np.arange(GRID, dtype=np.float32) + 0.5) * STRIDE
    inits = [
        *feature_inits,
        numpy_helper.from_array(kernel(box.coef_), "box_w"),
        numpy_helper.from_array(box.intercept_.astype(np.float32), "box_b"),
        numpy_helper.from_array(kernel(obj.coef_), "obj_w"),
        numpy_helper.from_array(obj.intercept_.astype(np.float32), "obj_b"),
        numpy_helper.from_array(kernel(cls.coef_), "cls_w"),
        numpy_helper.from_array(cls.intercept_.astype(np.float32), "cls_b"),
        # cell centres added to the predicted offsets, and zeros for w, h: (1, 4, G, G)
        numpy_helper.from_array(
            np.stack(
                [np.tile(g, (GRID, 1)), np.tile(g[:, None], (1, GRID)), np.zeros((GRID, GRID)), np.zeros((GRID, GRID))]
            )[None].astype(np.float32),
            "centres",
        ),
        numpy_helper.from_array(np.array([0, 5 + len(SHAPES), GRID * GRID], np.int64), "flat_shape"),
    ]
    nodes += [
        helper.make_node("Conv", ["grid", "box_w", "box_b"], ["box_raw"], pads=[3, 3, 3, 3]),
        helper.make_node("Add", ["box_raw", "centres"], ["boxes"]),
        helper.make_node("Conv", ["grid", "obj_w", "obj_b"], ["obj_logit"], pads=[3, 3, 3, 3]),
        helper.make_node("Sigmoid", ["obj_logit"], ["objectness"]),
        helper.make_node("Conv", ["grid", "cls_w", "cls_b"], ["cls_logit"], pads=[3, 3, 3, 3]),
        helper.make_node("Softmax", ["cls_logit"], ["classes"], axis=1),
        helper.make_node("Concat", ["boxes", "objectness", "classes"], ["maps"], axis=1),
        helper.make_node("Reshape", ["maps", "flat_shape"], ["rows_t"]),
        helper.make_node("Transpose", ["rows_t"], ["detections"], perm=[0, 2, 1]),
    ]
    model = _model(
        nodes,
        [image],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", GRID * GRID, 5 + len(SHAPES)])],
        inits,
    )
    write_bundle(
        OUT / "shapes-detector",
        model,
        {
            "name": "shapes-detector",
            "version": "1",
            "task": "detector",
            "labels": list(SHAPES),
            "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 3, DET_SIZE, DET_SIZE]}],
            "outputs": [{"name": "detections", "dtype": "float32", "shape": [None, GRID * GRID, 5 + len(SHAPES)]}],
            "preprocess": {
                "size": [DET_SIZE, DET_SIZE],
                "resize": "letterbox",
                "color": "rgb",
                "scale": 1 / 255,
                "layout": "NCHW",
            },
            "detector": {"format": "yolov5", "conf_threshold": 0.3, "iou_threshold": 0.3, "max_detections": 20},
            "source": {"family": "tools/train_vision_models.py", "seed": seed},
        },
    )


if __name__ == "__main__":
    try:
        train_classifier()
        train_detector()
    except ConversionError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {OUT}")
