"""Scenes for simulated cameras and the demo image models: coloured shapes on a noisy background.

Drawn in code (no downloads), so the demo models can be trained and checked on exactly what the
simulated cameras publish.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPES", "draw_scene", "draw_object"]

SHAPES = ("circle", "square", "triangle")
_COLOURS = ((40, 40, 220), (40, 200, 40), (220, 60, 40), (0, 200, 230), (200, 40, 200), (230, 160, 0))  # BGR


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.integers(90, 160)
    gradient = np.linspace(-20, 20, width)[None, :] * rng.choice([-1, 1])
    img = base + gradient + rng.normal(0, 6, (height, width))
    return np.clip(np.repeat(img[:, :, None], 3, axis=2), 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, shape: str, cx: float, cy: float, size: float, colour) -> tuple[float, float, float, float]:
    import cv2

    r = size / 2
    if shape == "circle":
        cv2.circle(img, (round(cx), round(cy)), round(r), colour, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(img, (round(cx - r), round(cy - r)), (round(cx + r), round(cy + r)), colour, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    return cx - r, cy - r, cx + r, cy + r


def draw_object(rng: np.random.Generator, size: int = 64, shape: str | None = None) -> tuple[np.ndarray, str]:
    """One shape filling much of a square frame (what the demo classifier recognises)."""
    shape = shape or str(rng.choice(SHAPES))
    img = _background(rng, size, size)
    s = rng.uniform(0.45, 0.8) * size
    c = rng.uniform(s / 2 + 1, size - s / 2 - 1, 2)
    _draw(img, shape, c[0], c[1], s, _COLOURS[rng.integers(len(_COLOURS))])
    return img, shape


def draw_scene(
    rng: np.random.Generator, width: int = 320, height: int = 240, objects: int | None = None
) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]]]:
    """A frame with 1-3 non-overlapping shapes; returns it (BGR) and each shape's label and box."""
    n = objects if objects is not None else int(rng.integers(1, 4))
    img = _background(rng, width, height)
    placed: list[tuple[str, tuple[float, float, float, float]]] = []
    side = min(width, height)
    for _ in range(50 * n):
        if len(placed) == n:
            break
        s = rng.uniform(0.18, 0.38) * side
        cx, cy = rng.uniform(s / 2 + 2, width - s / 2 - 2), rng.uniform(s / 2 + 2, height - s / 2 - 2)
        box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        if any(
            not (box[2] + 4 < b[0] or b[2] + 4 < box[0] or box[3] + 4 < b[1] or b[3] + 4 < box[1]) for _, b in placed
        ):
            continue
        shape = str(rng.choice(SHAPES))
        placed.append((shape, _draw(img, shape, cx, cy, s, _COLOURS[rng.integers(len(_COLOURS))])))
    return img, placed
