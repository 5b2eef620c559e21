"""Seeded synthetic scenes for ``bench tracking``: ground-truth boxes and the detections a detector would give.

No images: a tracker sees only boxes, so the scene is the boxes and a model of the detector's errors on
them, which is what makes trackers differ:

- objects (people, tall boxes; cars, wide ones) enter from the side of a 1280x720 frame at staggered
  times and cross it, their velocity wandering a little from frame to frame;
- each object's visibility is the share of its box seen: not hidden by objects in front of it (lower in
  the frame: nearer the camera) or by the scene's fixed occluders (a pole, a parked van), and inside the
  frame;
- below 30 % visible nothing is detected (and the object is not in the ground truth: nobody could see
  it); an object with more than 30 % of its in-frame part hidden gets a *low-score* detection (0.15-0.5)
  with twice the jitter, the case ByteTrack's second pass is for, and so does one less than half inside
  the frame; the others a confident detection (0.55-0.95), or now and then (8 %) a low score (blur). An
  object cut by the frame's edge is not hidden: detectors are trained on such boxes;
- every detection is missed with the scene's miss rate (10-20 %), jittered (Gaussian, a few percent of
  the box's size), and one-frame false positives arrive at random (mostly low scores);
- ``skip`` drops that share of frames at random, as ``overflow = "latest_only"`` does when the model is
  slower than the camera: the tracker sees uneven gaps between timestamps.

Each scene is a fixed function of its spec and the seed (``build_scene``), so two runs and two trackers
see exactly the same detections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SceneSpec", "Scene", "Frame", "SCENES", "build_scene"]

Box = tuple[float, float, float, float]  # x1, y1, x2, y2, frame pixels


@dataclass(frozen=True, kw_only=True)
class SceneSpec:
    name: str
    what: str  # one line for the report
    objects: int  # objects over the whole scene (most of them in view at once)
    fps: float
    duration_s: float = 20.0
    speed: tuple[float, float] = (0.4, 1.2)  # box widths per second, uniform in this range
    band: tuple[float, float] = (0.35, 0.95)  # where the objects' feet are, share of the frame's height
    miss: float = 0.12  # a detection missed at random
    false_positives: float = 0.3  # mean per frame
    jitter: float = 0.03  # standard deviation of each box edge, share of the box's width (x) or height (y)
    occluders: tuple[Box, ...] = ()  # fixed, in front of everything; shares of the frame (x1, y1, x2, y2)
    skip: float = 0.0  # share of frames never seen by the tracker (at random)
    width: int = 1280
    height: int = 720


_POLE: Box = (0.46, 0.15, 0.5, 1.0)
_VAN: Box = (0.18, 0.62, 0.34, 0.9)

SCENES: dict[str, SceneSpec] = {
    s.name: s
    for s in (
        SceneSpec(
            name="easy",
            what="4 objects, 10 fps, slow, few misses",
            objects=4,
            fps=10,
            speed=(0.3, 0.8),
            miss=0.08,
            false_positives=0.15,
            jitter=0.02,
        ),
        SceneSpec(
            name="crossing",
            what="8 objects, 10 fps, both ways in one lane, a pole",
            objects=8,
            fps=10,
            speed=(0.6, 1.5),
            band=(0.62, 0.78),
            miss=0.12,
            occluders=(_POLE,),
        ),
        SceneSpec(
            name="crowded",
            what="15 objects, 10 fps, a pole and a van",
            objects=15,
            fps=10,
            duration_s=25.0,
            speed=(0.4, 1.3),
            miss=0.15,
            false_positives=0.5,
            occluders=(_POLE, _VAN),
        ),
        SceneSpec(
            name="low_fps",
            what="12 objects, 3 fps, fast (0.5-1.2 box widths per frame)",
            objects=12,
            fps=3,
            duration_s=40.0,
            speed=(1.5, 3.6),
            miss=0.15,
            occluders=(_POLE,),
        ),
        SceneSpec(
            name="irregular",
            what="8 objects, 10 fps, 35% of frames skipped at random",
            objects=8,
            fps=10,
            speed=(0.6, 1.5),
            miss=0.15,
            occluders=(_POLE,),
            skip=0.35,
        ),
    )
}


@dataclass
class Frame:
    t: float  # seconds from the scene's start
    truth: list[tuple[int, Box]]  # (object id, box) of every object at least 30 % visible
    detections: list[dict] = field(default_factory=list)  # {"box", "label", "score"}, as a detector gives them
    low_boxes: list[tuple[float, ...]] = field(default_factory=list)  # the low-score detections of real objects


@dataclass
class Scene:
    spec: SceneSpec
    seed: int
    frames: list[Frame]

    @property
    def objects(self) -> int:
        return len({i for f in self.frames for i, _ in f.truth})


_VISIBLE = 0.3  # below this share visible: not detected, not in the ground truth
_PARTLY = 0.7  # below this: a low-score detection
_GRID = np.linspace(0.08, 0.92, 6)  # sample points across a box, to measure what is hidden


@dataclass
class _Object:
    id: int
    label: str
    w: float
    h: float
    start: float  # seconds
    x: float  # centre x
    foot: float  # bottom y
    vx: float  # px per second
    vy: float
    speed: float
    heading: tuple[float, float]  # the velocity it keeps coming back to


def _objects(spec: SceneSpec, rng: np.random.Generator) -> list[_Object]:
    out = []
    for i in range(spec.objects):
        person = rng.random() < 0.7
        w = float(rng.uniform(40, 70)) if person else float(rng.uniform(110, 170))
        h = w * (2.4 if person else 0.6)
        left = bool(rng.random() < 0.5)
        speed = float(rng.uniform(*spec.speed)) * w
        angle = float(rng.uniform(-0.12, 0.12))  # radians off horizontal
        foot = float(rng.uniform(*spec.band)) * spec.height
        start = float(rng.uniform(0, 0.55 * spec.duration_s))
        x = -w / 2 + 1 if left else spec.width + w / 2 - 1
        vx = speed * np.cos(angle) * (1 if left else -1)
        vy = speed * np.sin(angle)
        label = "person" if person else "car"
        out.append(_Object(i + 1, label, w, h, start, x, foot, vx, vy, speed, (vx, vy)))
    return out


def _box(o: _Object) -> Box:
    return (o.x - o.w / 2, o.foot - o.h, o.x + o.w / 2, o.foot)


def _visibility(box: Box, front: list[Box], width: int, height: int) -> tuple[float, float]:
    """Share of ``box`` seen (inside the frame, not behind any of ``front``), and share of what is inside the
    frame that is hidden."""
    x1, y1, x2, y2 = box
    px, py = np.meshgrid(x1 + _GRID * (x2 - x1), y1 + _GRID * (y2 - y1))
    inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    seen = inside.copy()
    for fx1, fy1, fx2, fy2 in front:
        seen &= ~((px >= fx1) & (px <= fx2) & (py >= fy1) & (py <= fy2))
    n = int(inside.sum())
    return float(seen.mean()), (1 - float(seen.sum()) / n) if n else 1.0


def _clip(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))


def build_scene(spec: SceneSpec, seed: int = 0) -> Scene:
    """The scene's frames: ground truth and detections, a fixed function of ``spec`` and ``seed``."""
    rng = np.random.default_rng([seed, *spec.name.encode()])
    objects = _objects(spec, rng)
    occluders = [(a * spec.width, b * spec.height, c * spec.width, d * spec.height) for a, b, c, d in spec.occluders]
    dt = 1 / spec.fps
    frames: list[Frame] = []
    for n in range(round(spec.duration_s * spec.fps)):
        t = n * dt
        live = [o for o in objects if o.start <= t]
        for o in live:  # a wandering velocity: a walker is never quite where a straight line puts it
            if o.start < t:
                o.vx += 0.1 * (o.heading[0] - o.vx) + float(rng.normal(0, 0.05 * o.speed))
                o.vy += 0.1 * (o.heading[1] - o.vy) + float(rng.normal(0, 0.03 * o.speed))
                o.x += o.vx * dt
                o.foot += o.vy * dt
        live = [o for o in live if -o.w < o.x < spec.width + o.w]
        boxes = {o.id: _box(o) for o in live}
        skipped = n > 0 and rng.random() < spec.skip  # drawn for every frame: the scene is the same whatever skip is
        frame = Frame(round(t, 6), [])
        true_low: list[dict] = []
        confident: list[dict] = []
        for o in sorted(live, key=lambda o: o.foot):
            front = [boxes[p.id] for p in live if p.foot > o.foot] + occluders
            vis, hidden = _visibility(boxes[o.id], front, spec.width, spec.height)
            draws = rng.random(3)
            noise = rng.normal(0, 1, 4)
            if vis < _VISIBLE:
                continue
            clipped = _clip(boxes[o.id], spec.width, spec.height)
            frame.truth.append((o.id, clipped))
            if draws[0] < spec.miss:
                continue
            occluded = hidden > 1 - _PARTLY
            low = occluded or vis < 0.5 or draws[1] < 0.08
            score = 0.15 + 0.35 * draws[2] if low else 0.55 + 0.4 * draws[2]
            sd = spec.jitter * (2 if occluded else 1) * np.array([o.w, o.h, o.w, o.h])
            x1, y1, x2, y2 = (float(v) for v in np.asarray(clipped) + noise * sd)
            box = _clip((x1, y1, x2, y2), spec.width, spec.height)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            det = {"box": [round(v, 2) for v in box], "label": o.label, "score": round(score, 3)}
            (true_low if low else confident).append(det)
        false = []
        for _ in range(int(rng.poisson(spec.false_positives))):
            w = float(rng.uniform(40, 160))
            h = w * float(rng.uniform(0.6, 2.4))
            x, y = float(rng.uniform(0, spec.width - w)), float(rng.uniform(0, spec.height - h))
            score = float(rng.uniform(0.1, 0.5) if rng.random() < 0.7 else rng.uniform(0.5, 0.75))
            label = "person" if rng.random() < 0.6 else "car"
            false.append({"box": [round(v, 2) for v in (x, y, x + w, y + h)], "label": label, "score": round(score, 3)})
        dets = confident + true_low + false
        order = rng.permutation(len(dets))  # a detector's order says nothing about identity
        if skipped:
            continue
        frame.low_boxes = [tuple(d["box"]) for d in true_low]
        frame.detections = [dets[i] for i in order]
        frames.append(frame)
    return Scene(spec, seed, frames)
