"""A ByteTrack-style multi-object tracker for detector results, in numpy only.

Why not a library: the maintained trackers on PyPI pull in what the device install must not carry
(Roboflow's ``trackers`` and ``supervision``: scipy, matplotlib, requests and the non-headless
``opencv-python``; ``norfair``: scipy, filterpy, rich and numpy<2; ``bytetracker``: torch), and Debian
packages none. ByteTrack's idea fits in a page: associate confident detections first, then let the
low-score ones (an object half hidden, or blurred) keep existing tracks alive instead of starting new ones.

Each frame (``update(detections, timestamp)``):
1. every track's box is predicted to ``timestamp`` from its velocity (pixels per second, smoothed; time
   rather than frames, because sampling and superseded frames make the frame interval uneven);
2. detections scoring at least ``high_score`` are matched to all tracks (tracked, lost and tentative) by
   IoU of predicted and detected boxes, at least ``match_iou``;
3. detections between ``low_score`` and ``high_score`` are matched to the tracked tracks still unmatched,
   with the stricter ``low_match_iou``;
4. a tentative track that misses a frame is dropped (a one-frame false positive never becomes an object);
   a confirmed one becomes lost, and ends once it has not been seen for ``lost_after_s`` seconds;
5. unmatched detections scoring at least ``new_track_score`` start tentative tracks, confirmed after
   ``min_hits`` consecutive matches.

Before matching, detections of different labels that overlap by at least ``merge_iou`` (0.6) are taken as one
object and only the most confident is kept: detectors run NMS per class (``cv2.dnn.NMSBoxesBatched``,
YOLO's default), so one object often comes back twice, say as a circle at 0.96 and a triangle at 0.65,
and the second box would otherwise start a second track.

Matching is greedy on IoU (best pair first), not Hungarian: with the few, mostly separated objects of a
camera scene the two agree, and greedy needs no scipy. Association ignores labels unless ``class_aware``
(a detector that flips between two classes would otherwise split one object into two); a track's label
is the one with the most accumulated score over its matches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Track", "TrackerUpdate", "Tracker", "iou_matrix"]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4, x1 y1 x2 y2) with every box in ``b`` (M x 4)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float64)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _greedy(iou: np.ndarray, threshold: float, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Pairs (row, column), best IoU first, each row and column used once, IoU at least ``threshold``."""
    if not iou.size:
        return []
    score = iou if allowed is None else np.where(allowed, iou, -1.0)
    rows, cols = np.nonzero(score >= threshold)
    order = np.argsort(-score[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


@dataclass(eq=False)  # identity: two tracks are never equal because their boxes are
class Track:
    id: int
    box: np.ndarray  # last detected box (x1, y1, x2, y2), frame pixels
    score: float  # last detection's score
    label: Any
    first_seen: float
    last_seen: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per second
    hits: int = 1
    streak: int = 1  # consecutive frames matched
    confirmed: bool = False
    label_scores: dict[Any, float] = field(default_factory=dict)
    predicted: np.ndarray | None = None

    @property
    def lost(self) -> bool:
        return self.predicted is not None and self.streak == 0

    def predict(self, t: float, horizon: float) -> np.ndarray:
        dt = min(max(0.0, t - self.last_seen), horizon)
        self.predicted = self.box + self.velocity * dt
        return self.predicted

    def match(self, box: np.ndarray, score: float, label: Any, t: float, smoothing: float) -> None:
        dt = t - self.last_seen
        if dt > 0:
            v = (box - self.box) / dt
            self.velocity = v if self.hits == 1 else smoothing * v + (1 - smoothing) * self.velocity
        self.box, self.score, self.last_seen = box, score, t
        self.hits += 1
        self.streak += 1
        self.label_scores[label] = self.label_scores.get(label, 0.0) + score
        self.label = max(self.label_scores.items(), key=lambda kv: kv[1])[0]


@dataclass
class TrackerUpdate:
    confirmed: list[Track]  # tracks matched in this frame that are confirmed (newly or before)
    new: list[Track]  # the tracks among them confirmed in this frame
    lost: list[Track]  # confirmed tracks not matched in this frame but not ended
    ended: list[Track]  # confirmed tracks not seen for lost_after_s: they are gone


class Tracker:
    """Associates per-frame detections (``{"box": [x1, y1, x2, y2], "label", "score"}``) into tracks."""

    def __init__(
        self,
        *,
        high_score: float = 0.5,
        low_score: float = 0.1,
        new_track_score: float | None = None,
        match_iou: float = 0.3,
        low_match_iou: float = 0.5,
        min_hits: int = 2,
        lost_after_s: float = 2.0,
        class_aware: bool = False,
        merge_iou: float | None = 0.6,
        max_tracks: int = 1000,
        velocity_smoothing: float = 0.5,
        predict_horizon_s: float = 1.0,
    ):
        if not 0 <= low_score <= high_score <= 1:
            raise ValueError("scores must satisfy 0 <= low_score <= high_score <= 1")
        if new_track_score is not None and not high_score <= new_track_score <= 1:
            raise ValueError("new_track_score must be between high_score and 1")
        if not (0 < match_iou <= 1 and 0 < low_match_iou <= 1):
            raise ValueError("match_iou and low_match_iou must be above 0 and at most 1")
        if merge_iou is not None and not 0 < merge_iou <= 1:
            raise ValueError("merge_iou must be above 0 and at most 1 (or None: keep overlapping detections)")
        if min_hits < 1 or lost_after_s < 0 or max_tracks < 1 or not 0 < velocity_smoothing <= 1:
            raise ValueError(
                "min_hits and max_tracks are at least 1, lost_after_s at least 0, velocity_smoothing in (0, 1]"
            )
        self.high_score, self.low_score = high_score, low_score
        self.new_track_score = high_score if new_track_score is None else new_track_score
        self.match_iou, self.low_match_iou = match_iou, low_match_iou
        self.min_hits, self.lost_after_s, self.class_aware = min_hits, lost_after_s, class_aware
        self.max_tracks, self.smoothing, self.horizon = max_tracks, velocity_smoothing, predict_horizon_s
        self.merge_iou = merge_iou
        self.merged = 0  # detections dropped as duplicates of a more confident one of another label
        self.tracks: list[Track] = []
        self._next_id = 1
        self.refused = 0  # detections not tracked because max_tracks tracks exist (counted, never silent)

    def update(self, detections: Iterable[dict[str, Any]], timestamp: float) -> TrackerUpdate:
        dets = [d for d in detections if _valid_score(d) and _valid_box(d.get("box"))]
        dets = [d for d in dets if float(d["score"]) >= self.low_score]
        boxes = np.array([[float(v) for v in d["box"][:4]] for d in dets], np.float64).reshape(-1, 4)
        scores = np.array([float(d["score"]) for d in dets], np.float64)
        if self.merge_iou is not None and len(dets) > 1:
            keep_idx = self._merge(boxes, scores, [d.get("label") for d in dets])
            if len(keep_idx) < len(dets):
                self.merged += len(dets) - len(keep_idx)
                dets, boxes, scores = [dets[i] for i in keep_idx], boxes[keep_idx], scores[keep_idx]
        labels = [d.get("label") for d in dets]
        pred = np.array([t.predict(timestamp, self.horizon) for t in self.tracks], np.float64).reshape(-1, 4)
        iou = iou_matrix(pred, boxes)
        allowed = None
        if self.class_aware and iou.size:
            allowed = np.array([[t.label == lab for lab in labels] for t in self.tracks], bool).reshape(iou.shape)

        matched_t: dict[int, int] = {}
        high = scores >= self.high_score
        sub = np.where(high[None, :], iou, 0.0) if iou.size else iou
        for r, c in _greedy(sub, self.match_iou, allowed):
            if high[c]:
                matched_t[r] = c
        used = set(matched_t.values())
        # Second pass: low-score detections keep tracks that were tracked in the previous frame alive.
        rows = [r for r, t in enumerate(self.tracks) if r not in matched_t and t.streak > 0]
        cols = [c for c in range(len(dets)) if c not in used and not high[c]]
        if rows and cols:
            for r, c in _greedy(
                iou[np.ix_(rows, cols)], self.low_match_iou, None if allowed is None else allowed[np.ix_(rows, cols)]
            ):
                matched_t[rows[r]] = cols[c]
            used = set(matched_t.values())

        confirmed: list[Track] = []
        new: list[Track] = []
        lost: list[Track] = []
        ended: list[Track] = []
        keep: list[Track] = []
        for r, t in enumerate(self.tracks):
            m = matched_t.get(r)
            if m is not None:
                t.match(boxes[m], float(scores[m]), labels[m], timestamp, self.smoothing)
                if not t.confirmed and t.streak >= self.min_hits:
                    t.confirmed = True
                    new.append(t)
                if t.confirmed:
                    confirmed.append(t)
                keep.append(t)
            elif not t.confirmed:
                continue  # a tentative track that missed a frame: a false positive, forgotten
            else:
                t.streak = 0
                if timestamp - t.last_seen >= self.lost_after_s:
                    ended.append(t)
                else:
                    lost.append(t)
                    keep.append(t)
        for c in range(len(dets)):
            if c in used or scores[c] < self.new_track_score:
                continue
            if len(keep) >= self.max_tracks:
                self.refused += 1
                continue
            t = Track(
                self._next_id,
                boxes[c],
                float(scores[c]),
                labels[c],
                timestamp,
                timestamp,
                label_scores={labels[c]: float(scores[c])},
            )
            self._next_id += 1
            if self.min_hits <= 1:
                t.confirmed = True
                new.append(t)
                confirmed.append(t)
            keep.append(t)
        self.tracks = keep
        return TrackerUpdate(confirmed, new, lost, ended)

    def _merge(self, boxes: np.ndarray, scores: np.ndarray, labels: list[Any]) -> list[int]:
        """Indices to keep: most confident first, dropping a box of another label overlapping a kept one."""
        iou = iou_matrix(boxes, boxes)
        kept: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            if all(labels[i] == labels[k] or iou[i, k] < self.merge_iou for k in kept):
                kept.append(int(i))
        return sorted(kept)

    def expire(self, timestamp: float) -> list[Track]:
        """End the confirmed tracks not seen for ``lost_after_s`` at ``timestamp`` without a frame (a source
        that stopped delivering); tentative ones are dropped."""
        ended = [t for t in self.tracks if t.confirmed and timestamp - t.last_seen >= self.lost_after_s]
        gone = {id(t) for t in ended}
        self.tracks = [t for t in self.tracks if t.confirmed and id(t) not in gone]
        return ended

    def clear(self) -> list[Track]:
        """Forget every track; return the confirmed ones (to end them)."""
        ended = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return ended


def _valid_score(det: Any) -> bool:
    if not isinstance(det, dict) or det.get("score") is None:
        return False
    try:
        return bool(np.isfinite(float(det["score"])))
    except (TypeError, ValueError):
        return False


def _valid_box(box: Any) -> bool:
    if not isinstance(box, Sequence) or len(box) < 4:
        return False
    try:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
    except (TypeError, ValueError):
        return False
    return all(np.isfinite((x1, y1, x2, y2))) and x2 > x1 and y2 > y1
