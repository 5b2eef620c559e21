"""Moving shapes with known tracks: the synthetic scene as video (files, RTSP streams) with ground truth.

A ``MovingScene`` is a static noisy background (as a fixed camera sees) and shapes that appear, move in a
straight line and disappear at known frames, drawn as the demo detector was trained to see them
(``devices.scenes``). ``render(n)`` gives frame ``n`` and where every shape is in it; ``write_video``
writes the scene to a file and returns that ground truth, which ``truth_json`` turns into JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .scenes import _COLOURS, SHAPES, _background, _draw

__all__ = ["ObjectTrack", "MovingScene", "write_video", "truth_json"]


@dataclass(frozen=True)
class ObjectTrack:
    """A shape visible from frame ``start`` to ``end`` (inclusive), its centre moving ``velocity`` px per frame."""

    id: int
    label: str
    size: float
    start: int
    end: int
    origin: tuple[float, float]  # centre at frame ``start``
    velocity: tuple[float, float]
    colour: tuple[int, int, int]

    def box(self, n: int) -> tuple[float, float, float, float] | None:
        if not self.start <= n <= self.end:
            return None
        k = n - self.start
        cx, cy = self.origin[0] + self.velocity[0] * k, self.origin[1] + self.velocity[1] * k
        r = self.size / 2
        return cx - r, cy - r, cx + r, cy + r


class MovingScene:
    def __init__(self, tracks: list[ObjectTrack], *, width: int, height: int, fps: float, frames: int, seed: int = 0):
        if width < 16 or height < 16 or fps <= 0 or frames < 1:
            raise ValueError("the scene must be at least 16x16, with fps above 0 and at least one frame")
        self.tracks, self.width, self.height, self.fps, self.frames = tracks, width, height, fps, frames
        self.background = _background(np.random.default_rng(seed), width, height)

    @classmethod
    def crossing(
        cls,
        *,
        width: int = 320,
        height: int = 240,
        fps: float = 10.0,
        objects: int = 3,
        travel_s: float = 4.0,
        stagger_s: float = 2.0,
        lead_s: float = 1.0,
        tail_s: float = 2.0,
        seed: int = 0,
    ) -> MovingScene:
        """``objects`` shapes, each in its own horizontal lane, crossing the frame left to right in ``travel_s``
        seconds, one starting every ``stagger_s`` seconds after ``lead_s`` of empty scene; ``tail_s`` of empty
        scene at the end (so a tracker sees every object leave)."""
        rng = np.random.default_rng(seed)
        lanes = height / (objects + 1)
        size_max = min(0.24 * min(width, height), 0.8 * lanes)
        tracks = []
        for i in range(objects):
            size = float(rng.uniform(0.8, 1.0) * size_max)
            start = round((lead_s + i * stagger_s) * fps)
            steps = max(1, round(travel_s * fps) - 1)
            x0, x1 = size / 2 + 3, width - size / 2 - 3
            cy = lanes * (i + 1)
            drift = float(rng.uniform(-0.3, 0.3) * lanes) / steps
            shape = SHAPES[i % len(SHAPES)]
            b, g, r = (int(c) for c in _COLOURS[int(rng.integers(len(_COLOURS)))])
            tracks.append(
                ObjectTrack(
                    i + 1,
                    shape,
                    size,
                    start,
                    start + steps,
                    (x0, cy - drift * steps / 2),
                    ((x1 - x0) / steps, drift),
                    (b, g, r),
                )
            )
        frames = max(t.end for t in tracks) + 1 + round(tail_s * fps)
        return cls(tracks, width=width, height=height, fps=fps, frames=frames, seed=seed)

    def truth(self, n: int) -> list[tuple[int, str, tuple[float, float, float, float]]]:
        out = []
        for t in self.tracks:
            box = t.box(n)
            if box is not None:
                out.append((t.id, t.label, box))
        return out

    def render(self, n: int) -> tuple[np.ndarray, list[tuple[int, str, tuple[float, float, float, float]]]]:
        """Frame ``n`` (BGR) and each visible shape's (id, label, box)."""
        img = self.background.copy()
        for t in self.tracks:
            box = t.box(n)
            if box is not None:
                x1, y1, x2, y2 = box
                _draw(img, t.label, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, t.colour)
        return img, self.truth(n)


def write_video(scene: MovingScene, path: str | Path, *, fourcc: str | None = None) -> list[list]:
    """Write every frame of ``scene`` to ``path`` (.mp4: MPEG-4 Part 2, .avi/.mkv: MJPEG unless ``fourcc``);
    return the ground truth per frame."""
    import cv2

    path = Path(path)
    code = fourcc or ("mp4v" if path.suffix.lower() == ".mp4" else "MJPG")
    writer = cv2.VideoWriter(
        str(path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*code), scene.fps, (scene.width, scene.height)
    )
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {code} video to {path}")
    truth = []
    try:
        for n in range(scene.frames):
            img, objects = scene.render(n)
            writer.write(img)
            truth.append(objects)
    finally:
        writer.release()
    return truth


def truth_json(scene: MovingScene) -> dict[str, Any]:
    """The scene's ground truth: size, fps, frame count, and per object its frames and box at each."""
    return {
        "width": scene.width,
        "height": scene.height,
        "fps": scene.fps,
        "frames": scene.frames,
        "objects": [
            {
                **{k: v for k, v in asdict(t).items() if k not in ("colour",)},
                "boxes": [[round(v, 2) for v in t.box(n) or ()] for n in range(t.start, t.end + 1)],
            }
            for t in scene.tracks
        ],
    }


def save_truth(scene: MovingScene, path: str | Path) -> None:
    Path(path).write_text(json.dumps(truth_json(scene), indent=1))
