"""Image tasks: camera frames in (JPEG, PNG, raw .npy), classes or boxes out.

Imported only when a bundle's task is ``image_classifier`` or ``detector`` (it needs OpenCV, the
``[camera]`` extra). The bundle's manifest declares how its model wants images (``preprocess``, see
``image_spec.PreprocessSpec``): size, ``letterbox``, ``stretch`` or ``center_crop`` (short side resized
first, the ImageNet way), colour order, scale, mean/std, layout. Boxes are mapped back to the original
frame's pixels, undoing the letterbox or crop.

Every frame is checked before it is decoded: its format from magic bytes (or the MQTT v5 content
type), its dimensions from the header, read marker by marker as libjpeg and libpng read them (an
8000x8000 frame is refused without allocating 192 MB, whatever markers hide its frame header), and that
a JPEG or PNG is complete (a truncated one would otherwise decode with a grey band). OpenCV itself is
loaded with its pixel limit at ``MAX_PIXELS``, so a header that ever lied would still not be allocated.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._opencv import MAX_PIXELS, load_cv2, pixel_limit_holds

try:
    load_cv2()  # first: OpenCV reads its pixel limit from the environment when it is loaded
    import cv2
except ImportError as _err:  # the registry names this reason when an image task is looked up
    raise ImportError("image models need OpenCV: pip install 'edge-runtime[camera]'") from _err

from ..bundle import Manifest
from ..bundle.image_spec import DetectorSpec, PreprocessSpec, input_hw
from ..errors import PayloadError, first_line
from . import register_task, user_property
from ._image_header import image_size
from .codecs import NPY_MAGIC

__all__ = ["ImageDecoder", "Preprocess", "image_size", "letterbox", "center_crop", "decode_detections", "annotate"]

log = logging.getLogger("edge_runtime.tasks")

if not pixel_limit_holds():
    log.warning(
        "OpenCV was imported before edge-runtime could set its pixel limit: it will decode images of up to "
        "2^30 pixels if a header check is ever wrong; set OPENCV_IO_MAX_IMAGE_PIXELS=%d in the environment",
        MAX_PIXELS,
    )


@dataclass(frozen=True)
class Preprocess:
    """How the model wants its images: the manifest's ``preprocess`` with the size filled in from the input."""

    width: int
    height: int
    resize: str = "letterbox"  # or "stretch", "center_crop"
    color: str = "rgb"  # or "bgr"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"  # or "NHWC"
    pad_value: int = 114
    resize_short: int | None = None  # center_crop: the short side is resized to this first
    interpolation: str = "area"  # or "linear"

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Preprocess:
        spec = manifest.preprocess or PreprocessSpec()
        _, h, w = input_hw(manifest.inputs[0].shape, spec.layout)
        if spec.size is not None:
            w, h = spec.size
        if w is None or h is None:  # load_bundle refuses these; a hand-built Manifest may not have been checked
            raise ValueError(
                f"input {manifest.inputs[0].shape} has no fixed height and width: preprocess.size is needed"
            )
        fields = spec.model_dump(exclude={"size"})
        if spec.resize == "center_crop" and spec.resize_short is None:
            fields["resize_short"] = max(w, h)
        return cls(width=int(w), height=int(h), **fields)


def _interpolation(kind: str, shrinking: bool) -> int:
    return cv2.INTER_AREA if kind == "area" and shrinking else cv2.INTER_LINEAR


def letterbox(
    img: np.ndarray, width: int, height: int, pad_value: int = 114, *, interpolation: str = "area"
) -> tuple[np.ndarray, float, int, int]:
    """Resize keeping the aspect ratio and pad to ``width`` x ``height``; return (image, scale, pad_x, pad_y)."""
    h, w = img.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (width, height) and (w, h) == (width, height):
        return img, 1.0, 0, 0
    resized = cv2.resize(img, (nw, nh), interpolation=_interpolation(interpolation, scale < 1))
    px, py = (width - nw) // 2, (height - nh) // 2
    out = np.full((height, width, 3), pad_value, dtype=np.uint8)
    out[py : py + nh, px : px + nw] = resized
    return out, scale, px, py


def center_crop(
    img: np.ndarray, width: int, height: int, short: int, *, interpolation: str = "area"
) -> tuple[np.ndarray, float, float, int, int]:
    """Resize the short side to ``short``, cut out the centre ``width`` x ``height`` (the ImageNet way).

    Returns (image, scale_x, scale_y, x0, y0): a point (x, y) of the original is at
    (x * scale_x - x0, y * scale_y - y0) in the crop. Rounding follows torchvision's Resize and CenterCrop.
    """
    h, w = img.shape[:2]
    s = short / min(w, h)
    nw, nh = (short, max(height, int(h * s))) if w <= h else (max(width, int(w * s)), short)
    nw, nh = max(nw, width), max(nh, height)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=_interpolation(interpolation, s < 1))
    x0, y0 = round((nw - width) / 2.0), round((nh - height) / 2.0)
    return img[y0 : y0 + height, x0 : x0 + width], nw / w, nh / h, x0, y0


@dataclass(frozen=True)
class FrameMeta:
    id: Any
    timestamp: Any
    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


class ImageDecoder:
    """Payload -> (id, model-ready image row, FrameMeta)."""

    def __init__(self, manifest: Manifest, *, max_bytes: int, max_pixels: int = MAX_PIXELS, min_side: int = 8):
        if not 0 < max_pixels <= MAX_PIXELS:
            raise ValueError(f"max_pixels must be above 0 and at most {MAX_PIXELS} (OpenCV's limit), not {max_pixels}")
        self.pre = Preprocess.from_manifest(manifest)
        self.dtype = np.dtype(manifest.inputs[0].dtype)
        self.max_bytes, self.max_pixels, self.min_side = max_bytes, max_pixels, min_side
        p = self.pre
        self._mean = np.asarray(p.mean, np.float32) if any(p.mean) else None
        self._inv_std = (1.0 / np.asarray(p.std, np.float32)) if any(s != 1 for s in p.std) else None
        # What one decoded, model-ready frame holds: counted against its route's byte bound while it waits.
        self.row_nbytes = p.width * p.height * 3 * self.dtype.itemsize

    def decode(self, payload: bytes, properties: Any = None) -> tuple[Any, np.ndarray, FrameMeta]:
        msg_id = user_property(properties, "id") or user_property(properties, "frame_id")
        ts = user_property(properties, "timestamp")
        if len(payload) > self.max_bytes:
            raise PayloadError(
                "too_large", f"frame is {len(payload)} bytes; this route accepts at most {self.max_bytes}", id=msg_id
            )
        if not payload:
            raise PayloadError("empty", "payload is empty; send JPEG, PNG or .npy image bytes", id=msg_id)
        if payload.startswith(NPY_MAGIC):
            img = self._npy(payload, msg_id)
            self._check_size(img.shape[1], img.shape[0], msg_id)
        else:
            try:
                _, w, h = image_size(payload)
            except PayloadError as err:
                raise PayloadError(err.code, err.detail, id=msg_id) from None
            self._check_size(w, h, msg_id)
            try:
                decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            except cv2.error as err:  # OpenCV's own size limit, if a header ever decodes larger than it said
                if "CV_IO_MAX_IMAGE" in str(err):
                    raise PayloadError(
                        "too_large", f"image has more than {MAX_PIXELS} pixels (OpenCV's limit)", id=msg_id
                    ) from None
                raise PayloadError("bad_image", f"OpenCV could not decode it: {first_line(err)}", id=msg_id) from None
            if decoded is None:
                raise PayloadError("bad_image", "the image data is corrupt (OpenCV could not decode it)", id=msg_id)
            img = decoded
        return msg_id, *self._prepare(img, msg_id, ts)

    def decode_array(
        self, img: np.ndarray, *, id: Any = None, timestamp: Any = None
    ) -> tuple[Any, np.ndarray, FrameMeta]:
        """An already decoded HxWx3 uint8 BGR frame (a video source's) -> (id, row, FrameMeta); no JPEG round trip."""
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise PayloadError(
                "bad_image",
                f"a frame must be HxWx3 uint8 (BGR), not {getattr(img, 'dtype', type(img))} "
                f"{getattr(img, 'shape', '')}",
                id=id,
            )
        self._check_size(img.shape[1], img.shape[0], id)
        return id, *self._prepare(img, id, timestamp)

    def _npy(self, payload: bytes, msg_id: Any) -> np.ndarray:
        try:
            img: np.ndarray = np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy raises ValueError, EOFError, OSError: all mean a bad file
            raise PayloadError("bad_npy", f"not a readable .npy array: {err}", id=msg_id) from None
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise PayloadError(
                "bad_image", f".npy image must be HxWx3 uint8 (BGR), not {img.dtype} {img.shape}", id=msg_id
            )
        return img

    def _check_size(self, w: int, h: int, msg_id: Any) -> None:
        if w < self.min_side or h < self.min_side:
            raise PayloadError(
                "bad_image", f"image is {w}x{h}; at least {self.min_side}x{self.min_side} pixels needed", id=msg_id
            )
        if w * h > self.max_pixels:
            raise PayloadError(
                "too_large", f"image is {w}x{h}; at most {self.max_pixels} pixels are accepted", id=msg_id
            )

    def _prepare(self, img: np.ndarray, msg_id: Any, ts: Any) -> tuple[np.ndarray, FrameMeta]:
        p = self.pre
        h, w = img.shape[:2]
        if p.resize == "letterbox":
            img, scale, px, py = letterbox(img, p.width, p.height, p.pad_value, interpolation=p.interpolation)
            sx = sy = scale
        elif p.resize == "center_crop":
            img, sx, sy, x0, y0 = center_crop(
                img, p.width, p.height, p.resize_short or max(p.width, p.height), interpolation=p.interpolation
            )
            px, py = -x0, -y0  # boxes map back as (x - pad) / scale, like the letterbox's
        else:
            if (w, h) != (p.width, p.height):
                img = cv2.resize(img, (p.width, p.height), interpolation=_interpolation(p.interpolation, True))
            sx, sy, px, py = p.width / w, p.height / h, 0, 0
        if p.color == "rgb":
            img = img[:, :, ::-1]
        x = img.astype(np.float32) * np.float32(p.scale)
        if self._mean is not None:
            x -= self._mean
        if self._inv_std is not None:
            x *= self._inv_std
        if p.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self.dtype), FrameMeta(msg_id, ts, w, h, sx, sy, px, py)


def _frame(meta: FrameMeta) -> dict[str, Any]:
    out: dict[str, Any] = {"frame": {"width": meta.width, "height": meta.height}}
    if meta.timestamp is not None:
        out["frame"]["timestamp"] = meta.timestamp
    return out


class _ImageTask:
    def __init__(self, name: str):
        self.name = name

    def decoder(self, manifest: Manifest, *, max_bytes: int) -> ImageDecoder:
        return ImageDecoder(manifest, max_bytes=max_bytes)

    def annotate(self, frame: bytes | np.ndarray, result: dict[str, Any]) -> bytes | None:
        """The frame (a payload, or a source's decoded BGR image) with ``result`` drawn, as JPEG; None for a
        payload that is not an encoded image (.npy)."""
        if isinstance(frame, bytes) and frame.startswith(NPY_MAGIC):
            return None
        return annotate(frame, result)


class ImageClassifier(_ImageTask):
    """Top-k classes per frame; ``softmax: true`` in the manifest when the model outputs logits."""

    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        name = manifest.scores_output or manifest.outputs[0].name
        scores = np.asarray(outputs[name], np.float32).reshape(len(metas), -1)
        if manifest.softmax:
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = e / e.sum(axis=1, keepdims=True)
        k = min(manifest.top_k or 5, scores.shape[1])
        top = np.argsort(-scores, axis=1)[:, :k]
        labels = manifest.labels or list(range(scores.shape[1]))
        return [
            {
                "label": labels[t[0]],
                "score": float(s[t[0]]),
                "top": [{"label": labels[i], "score": round(float(s[i]), 5)} for i in t],
                **_frame(m),
            }
            for t, s, m in zip(top, scores, metas)
        ]


def decode_detections(
    pred: np.ndarray, *, layout: str, conf: float, iou: float, max_det: int
) -> list[tuple[list[float], int, float]]:
    """One frame's YOLO-style output to [(x1, y1, x2, y2), class, score] in model-input pixels, after NMS.

    ``yolov5``: rows of (cx, cy, w, h, objectness, class scores...); ``yolov8``: (4 + classes, N), no objectness.
    """
    if layout == "yolov8":
        pred = pred.T
        boxes, cls_scores = pred[:, :4], pred[:, 4:]
        best = cls_scores.argmax(axis=1)
        score = cls_scores[np.arange(len(pred)), best]
    else:
        boxes, obj, cls_scores = pred[:, :4], pred[:, 4], pred[:, 5:]
        best = cls_scores.argmax(axis=1) if cls_scores.shape[1] else np.zeros(len(pred), int)
        score = obj * (cls_scores[np.arange(len(pred)), best] if cls_scores.shape[1] else 1.0)
    keep = score >= conf
    boxes, best, score = boxes[keep], best[keep], score[keep]
    if not len(score):
        return []
    xywh = np.column_stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 2], boxes[:, 3]])
    # No top_k here: OpenCV's top_k caps the candidates *before* NMS, which would drop boxes that survive it
    # (Ultralytics keeps up to 30,000 candidates and caps the output at max_det); the output is capped below.
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), best.tolist(), conf, iou)
    out = []
    for i in np.asarray(idx).reshape(-1)[:max_det]:
        x, y, w, h = xywh[i]
        out.append(([float(x), float(y), float(x + w), float(y + h)], int(best[i]), float(score[i])))
    return out


class Detector(_ImageTask):
    """Boxes, classes and scores per frame, in the original frame's pixels."""

    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        spec = manifest.detector or DetectorSpec()
        layout, conf, iou, max_det = spec.format, spec.conf_threshold, spec.iou_threshold, spec.max_detections
        pred = np.asarray(outputs[manifest.outputs[0].name], np.float32)
        labels = manifest.labels
        out = []
        for frame, m in zip(pred, metas):
            dets = []
            for (x1, y1, x2, y2), c, s in decode_detections(frame, layout=layout, conf=conf, iou=iou, max_det=max_det):
                box = [
                    (x1 - m.pad_x) / m.scale_x,
                    (y1 - m.pad_y) / m.scale_y,
                    (x2 - m.pad_x) / m.scale_x,
                    (y2 - m.pad_y) / m.scale_y,
                ]
                box = [round(min(max(v, 0.0), lim), 1) for v, lim in zip(box, (m.width, m.height) * 2)]
                dets.append({"box": box, "label": labels[c] if labels and c < len(labels) else c, "score": round(s, 4)})
            out.append({"detections": dets, **_frame(m)})
        return out


def annotate(frame: bytes | np.ndarray, result: dict[str, Any], *, quality: int = 80) -> bytes:
    """The frame as JPEG with its detections drawn (for an optional snapshot topic, as Frigate does).

    ``frame`` is an encoded image, or a decoded BGR one (a video source's; drawn on a copy)."""
    img: np.ndarray | None
    if isinstance(frame, np.ndarray):
        img = frame.copy()
    elif frame:
        img = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    else:
        img = None
    if img is None:
        raise PayloadError("bad_image", "cannot decode the frame to annotate")
    if "label" in result:  # a classifier's answer, top left
        cv2.putText(
            img,
            f"{result['label']} {result.get('score', 0):.2f}",
            (6, 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (0, 255, 0),
            1,
            cv2.LINE_AA,
        )
    for det in result.get("detections", []):
        x1, y1, x2, y2 = (int(v) for v in det["box"])
        cv2.rectangle(img, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(
            img,
            f"{det['label']} {det['score']:.2f}",
            (x1, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 255, 0),
            1,
            cv2.LINE_AA,
        )
    _ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpeg.tobytes()


register_task(ImageClassifier("image_classifier"))
register_task(Detector("detector"))
