"""Calibration data for static quantization, as an iterator (ONNX Runtime's CalibrationDataReader).

From an ``.npy`` array of inputs, or a folder of images (JPEG/PNG). An image bundle's images are
decoded with its own preprocessing (``load_images``: letterbox or crop, colour order, scale, mean/std,
exactly what the runtime will feed the model); for other models they are resized to the input and
scaled to [0, 1]. Only the first ``limit`` rows are used: a few hundred representative inputs calibrate
as well as thousands.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._registry import ConversionError

__all__ = ["load_calibration", "load_images", "CalibrationReader"]

_IMAGES = {".jpg", ".jpeg", ".png", ".bmp"}


def load_calibration(
    source: Path | np.ndarray, input_shape: list, *, limit: int = 256, manifest: dict | None = None
) -> np.ndarray:
    if isinstance(source, np.ndarray):
        data = source
    elif source.is_dir():
        from edge_runtime.bundle.image_spec import IMAGE_TASKS

        if manifest is not None and manifest.get("task") in IMAGE_TASKS:
            data = load_images(source, manifest, limit=limit)
        else:
            data = _images(source, input_shape, limit)
    else:
        try:
            data = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConversionError(f"calibration file {source}: not a readable .npy array ({err})") from err
    want = [d if isinstance(d, int) and d > 0 else None for d in input_shape[1:]]
    if data.ndim != len(input_shape) or any(w is not None and w != d for w, d in zip(want, data.shape[1:])):
        raise ConversionError(
            f"calibration data has shape {list(data.shape)}; the model takes {input_shape} (rows along the first axis)"
        )
    if len(data) == 0:
        raise ConversionError("calibration data is empty")
    return data[:limit]


def _images(folder: Path, input_shape: list, limit: int) -> np.ndarray:
    try:
        import cv2
    except ImportError:
        raise ConversionError("calibrating from images needs OpenCV: pip install 'edge-runtime[camera]'") from None
    nchw = len(input_shape) == 4 and input_shape[1] in (1, 3)
    h, w = (input_shape[2], input_shape[3]) if nchw else (input_shape[1], input_shape[2])
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGES)[:limit]
    if not files:
        raise ConversionError(f"no images (.jpg, .png, .bmp) in {folder}")
    rows = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ConversionError(f"{f}: not a readable image")
        img = cv2.cvtColor(cv2.resize(img, (w, h)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        rows.append(img.transpose(2, 0, 1) if nchw else img)
    return np.stack(rows)


def load_images(folder: Path, manifest: dict, *, limit: int = 256) -> np.ndarray:
    """The first ``limit`` images of ``folder`` (by name) as model rows, decoded as the runtime decodes frames."""
    try:
        from edge_runtime.tasks.vision import ImageDecoder
    except ImportError:
        raise ConversionError("reading a folder of images needs OpenCV: pip install 'edge-runtime[camera]'") from None
    from edge_runtime.bundle import Manifest
    from edge_runtime.errors import PayloadError

    decoder = ImageDecoder(Manifest.model_validate({**manifest, "sha256": "0" * 64}), max_bytes=64 << 20)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGES)[:limit]
    if not files:
        raise ConversionError(f"no images (.jpg, .png, .bmp) in {folder}")
    rows = []
    for f in files:
        try:
            rows.append(decoder.decode(f.read_bytes())[1])
        except (OSError, PayloadError) as err:
            raise ConversionError(f"{f}: {err}") from None
    return np.stack(rows)


class CalibrationReader:
    """Feeds rows one batch at a time: ONNX Runtime's calibrator pulls with ``get_next()`` until None."""

    def __init__(self, input_name: str, data: np.ndarray, *, batch: int = 16, exact: bool = False):
        # exact: the model's batch is fixed, so a short last batch would be refused: leave those rows out.
        stop = len(data) - len(data) % batch if exact else len(data)
        if stop == 0:
            raise ConversionError(f"calibration needs at least {batch} rows: the model's batch is fixed at {batch}")
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: data[i : i + batch].astype(np.float32)} for i in range(0, stop, batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators; one pass is enough here
        pass
