"""Models exported with a fixed batch (Ultralytics: 1) run any batch in slices of their own size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["fixed_batch", "run_in_slices"]


def fixed_batch(dim: Any) -> int | None:
    """The batch size a model insists on (its input's first dimension), or None when the axis is dynamic."""
    return dim if isinstance(dim, int) and dim > 0 else None


def run_in_slices(
    run: Callable[[np.ndarray], dict[str, np.ndarray]], batch: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """Run ``batch`` through a model that takes exactly ``size`` rows, ``size`` rows at a time.

    A last partial slice is padded with zero rows and their outputs cut off again, so callers see
    outputs for exactly the rows they gave.
    """
    n = len(batch)
    if n == size:
        return run(batch)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n, size):
        chunk = batch[start : start + size]
        k = len(chunk)
        if k < size:
            chunk = np.concatenate([chunk, np.zeros((size - k, *batch.shape[1:]), batch.dtype)])
        out = run(chunk)
        parts.append({name: v[:k] if v.ndim and v.shape[0] == size else v for name, v in out.items()})
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
