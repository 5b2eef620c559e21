"""Payloads in and out: JSON (orjson) and numpy's ``.npy`` format, never pickle.

Decoding turns one MQTT payload into one row for the model, or raises PayloadError with a short code
that is published on the route's error topic.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import orjson

from ..errors import PayloadError

__all__ = ["RowDecoder", "encode", "NPY_MAGIC"]

NPY_MAGIC = b"\x93NUMPY"


def encode(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


_SCALAR_IDS = (str, int, float, bool, type(None))

# Rows of zeros kept for the finiteness check: at most this many sizes, each of at most this many values
# (64 x 4,096 float64: 2 MB at most, whatever sizes arrive).
_ZERO_ROWS = 64
_ZERO_ROW_MAX = 4096


def _check_echoable(msg_id: object) -> None:
    """An id is echoed in the answer: one that orjson reads but cannot write (nested deeper than its 254
    levels; it reads 1,024) is refused here, not found unwritable after the batch was served."""
    try:
        orjson.dumps(msg_id)
    except orjson.JSONEncodeError:
        raise PayloadError(
            "bad_id", '"id" is nested too deeply to be echoed; send a string, a number or a flat object'
        ) from None


class RowDecoder:
    """Decodes payloads for one model input: checks size, syntax, shape, dtype and finiteness."""

    __slots__ = ("shape", "dtype", "allow_non_finite", "max_bytes", "_check_finite", "_shape_text", "_zero_rows")

    def __init__(self, *, shape: tuple[int | None, ...], dtype: str, allow_non_finite: bool, max_bytes: int):
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.allow_non_finite = allow_non_finite
        self.max_bytes = max_bytes
        self._check_finite = self.dtype.kind in "fc" and not allow_non_finite
        self._zero_rows: dict[int, np.ndarray] = {}
        self._shape_text = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"

    def decode(self, payload: bytes) -> tuple[Any, np.ndarray]:
        """Return ``(id, row)``; the id is None when the payload carries none."""
        if len(payload) > self.max_bytes:
            raise PayloadError(
                "too_large", f"payload is {len(payload)} bytes; this route accepts at most {self.max_bytes}"
            )
        if not payload:
            raise PayloadError("empty", 'payload is empty; send JSON {"id": ..., "values": [...]} or .npy bytes')
        if payload.startswith(NPY_MAGIC):
            return None, self._check(self._npy(payload), None)
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            raise PayloadError("bad_json", f'not valid JSON ({err}); send {{"id": ..., "values": [...]}}') from None
        msg_id = None
        if isinstance(doc, dict):
            msg_id = doc.get("id")
            if not isinstance(msg_id, _SCALAR_IDS):
                _check_echoable(msg_id)
            if "values" not in doc:
                raise PayloadError("no_values", 'JSON object has no "values" key', id=msg_id)
            values = doc["values"]
        elif isinstance(doc, list):
            values = doc
        else:
            raise PayloadError("bad_json", 'expected a JSON object {"id": ..., "values": [...]} or a list', id=msg_id)
        try:
            with np.errstate(over="ignore"):  # 1e300 becomes inf in float32, and is refused as not finite below
                row = np.asarray(values, dtype=self.dtype)
        except (ValueError, TypeError, OverflowError) as err:
            reason = "ragged or non-numeric values" if self.dtype.kind in "fiucb" else str(err)
            raise PayloadError(
                "bad_values", f"{reason}: expected numbers of shape {self._shape_text}", id=msg_id
            ) from None
        return msg_id, self._check(row, msg_id)

    def _npy(self, payload: bytes) -> np.ndarray:
        try:
            arr = np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy raises ValueError, EOFError, OSError...: all mean a bad file
            raise PayloadError("bad_npy", f"not a readable .npy array: {err}") from None
        if arr.dtype.kind not in "biuf":
            raise PayloadError("bad_dtype", f".npy dtype {arr.dtype} is not numeric")
        try:
            casting = "same_kind" if self.dtype.kind == "f" else "safe"
            row: np.ndarray = arr.astype(self.dtype, copy=False, casting=casting)
            return row
        except TypeError:
            raise PayloadError("bad_dtype", f".npy dtype {arr.dtype} cannot be safely cast to {self.dtype}") from None

    def _finite(self, row: np.ndarray) -> bool:
        """Whether every value is finite. 0 * x is NaN exactly when x is NaN or infinite, and a dot product never
        overflows from zeros: for a small row one call instead of isfinite + all (half the cost, per input),
        with a row of zeros cached per size. Large rows (an image sent as .npy) are checked directly: caching a
        zero row of every size a stranger sends would hold their memory for the decoder's life."""
        size = row.size
        if size > _ZERO_ROW_MAX:
            return bool(np.isfinite(row).all())
        zeros = self._zero_rows.get(size)
        if zeros is None:
            zeros = np.zeros(size, dtype=self.dtype)
            if len(self._zero_rows) < _ZERO_ROWS:  # dynamic shapes: a few sizes cached, the rest made when needed
                self._zero_rows[size] = zeros
        return math.isfinite(float(np.dot(row.ravel(), zeros)))

    def _check(self, row: np.ndarray, msg_id: Any) -> np.ndarray:
        shape = self.shape
        if row.ndim == len(shape) + 1 and row.shape[0] == 1:
            row = row[0]  # a batch of one, sent with its batch axis
        if row.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, row.shape)):
            raise PayloadError(
                "bad_shape", f"got shape {tuple(row.shape)}, the model takes {self._shape_text}", id=msg_id
            )
        if self._check_finite and not self._finite(row):
            raise PayloadError("not_finite", "values contain NaN or Inf, which this model does not accept", id=msg_id)
        return row
