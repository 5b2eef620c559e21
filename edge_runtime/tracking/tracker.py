"""A ByteTrack-style multi-object tracker for detector results, in numpy only.

Why not a library: the maintained trackers on PyPI pull in what the device install must not carry
(Roboflow's ``trackers`` and ``supervision``: scipy, matplotlib, requests and the non-headless
``opencv-python``; ``norfair``: scipy, filterpy, rich and numpy<2; ``bytetracker``: torch), and Debian
packages none. ByteTrack's idea fits in a page: associate confident detections first, then let the
low-score ones (an object half hidden, or blurred) keep existing tracks alive; alone, they make a new
object only when they add up over several frames. ``edge-runtime bench tracking`` scores it against
``trackers``' ByteTrack and SORT on the same detections (BENCHMARKS.md).

Each frame (``update(detections, timestamp)``):
1. every track's box is predicted to ``timestamp`` from its smoothed box and velocity (pixels per second;
   time rather than frames, because sampling and superseded frames make the frame interval uneven);
2. detections scoring at least ``high_score`` are matched to the confirmed tracks (tracked or lost) by IoU
   of predicted and detected boxes, at least ``match_iou``;
3. detections between ``low_score`` and ``high_score`` are matched to the confirmed tracks still unmatched,
   at least ``low_match_iou``: the lost ones too, since a partly hidden object is the one most often missed;
4. tentative tracks take what is left, by IoU; a track seen only once has no velocity yet (its box stays
   where the object was), so failing that it takes the nearest detection of a similar size within
   ``max_speed`` of its box sizes per second since it was seen: a fast object is confirmed too;
5. a tentative track that misses a frame is dropped (a one-frame false positive never becomes an object);
   a confirmed one becomes lost, and ends once it has not been seen for ``lost_after_s`` seconds;
6. unmatched detections start tentative tracks, the low-score ones too (an object coming out from behind
   something is seen weakly first). A track is confirmed (``new``) after ``min_hits`` consecutive matches
   whose scores add up to ``min_hits`` times ``new_track_score``: two detections at 0.5, or three weaker
   ones at 0.35, or four at 0.25; what the detector barely believes (0.1) takes ten frames in a row.

The box and velocity used for prediction are smoothed (an alpha-beta filter, the steady state of a
constant-velocity Kalman filter): a jittery detection moves them only part of the way. The box a track
reports is the last detection's.

Before matching, detections of different labels that overlap by at least ``merge_iou`` (0.6) are taken as one
object and only the most confident is kept: detectors run NMS per class (``cv2.dnn.NMSBoxesBatched``,
YOLO's default), so one object often comes back twice, say as a circle at 0.96 and a triangle at 0.65,
and the second box would otherwise start a second track.

Matching is greedy (best pair first), not Hungarian: with the few, mostly separated objects of a camera
scene the two agree (an optimal assignment scored the same in ``bench tracking``, crowded scene
included), and greedy needs no scipy. Association ignores labels unless ``class_aware``
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
    inter = np.maximum(ix2 - ix1, 0.0) * np.maximum(iy2 - iy1, 0.0)  # (np.clip costs twice as much)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _greedy(score: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, column), best score first, each row and column used once, score at least ``threshold``."""
    if not score.size:
        return []
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


# The alpha-beta filter's gains: how far a detection moves the smoothed box, and its velocity (per the
# elapsed time). Measured with `bench tracking`: 0.6 / 0.2 keep identities through occlusions where raw
# detections (1.0 / 0.5: the box follows the detection) lose them.
_POSITION_GAIN, _VELOCITY_GAIN = 0.6, 0.2
_SLACK = 0.3  # box sizes a detection may stray from where its object is (jitter), for the distance gate


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
    evidence: float = 0.0  # its detections' scores added up (a tentative track's all come in a row)
    smoothed: np.ndarray | None = None  # the filtered box predictions start from (default: ``box``)

    @property
    def lost(self) -> bool:
        return self.predicted is not None and self.streak == 0

    def predict(self, t: float, horizon: float) -> np.ndarray:
        dt = min(max(0.0, t - self.last_seen), horizon)
        self.predicted = self._smoothed() + self.velocity * dt
        return self.predicted

    def _smoothed(self) -> np.ndarray:
        return self.box if self.smoothed is None else self.smoothed

    def match(self, box: np.ndarray, score: float, label: Any, t: float) -> None:
        dt = t - self.last_seen
        base = self._smoothed()
        if dt <= 0:
            self.smoothed = box
        elif self.hits == 1:  # the first velocity: all we know
            self.velocity = (box - base) / dt
            self.smoothed = box
        else:  # where predict() put it for this frame (no further than its horizon), else by velocity
            expected = self.predicted if self.predicted is not None else base + self.velocity * dt
            error = box - expected
            self.smoothed = expected + _POSITION_GAIN * error
            self.velocity = self.velocity + _VELOCITY_GAIN * error / dt
        self.box, self.score, self.last_seen = box, score, t
        self.evidence += score
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
        low_match_iou: float = 0.4,
        min_hits: int = 2,
        lost_after_s: float = 2.0,
        class_aware: bool = False,
        merge_iou: float | None = 0.6,
        max_tracks: int = 1000,
        max_speed: float = 4.0,
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
        if min_hits < 1 or lost_after_s < 0 or max_tracks < 1 or not max_speed > 0 or not predict_horizon_s >= 0:
            raise ValueError(
                "min_hits and max_tracks are at least 1, lost_after_s and predict_horizon_s at least 0, "
                "max_speed above 0"
            )
        self.high_score, self.low_score = high_score, low_score
        self.new_track_score = high_score if new_track_score is None else new_track_score
        self.match_iou, self.low_match_iou = match_iou, low_match_iou
        self.min_hits, self.lost_after_s, self.class_aware = min_hits, lost_after_s, class_aware
        self.max_tracks, self.max_speed, self.horizon = max_tracks, max_speed, predict_horizon_s
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
        matched = self._associate(boxes, scores, labels, timestamp)

        confirmed: list[Track] = []
        new: list[Track] = []
        lost: list[Track] = []
        ended: list[Track] = []
        keep: list[Track] = []
        for r, t in enumerate(self.tracks):
            m = matched.get(r)
            if m is not None:
                t.match(boxes[m], float(scores[m]), labels[m], timestamp)
                if self._confirms(t):
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
        used = set(matched.values())
        for c in np.argsort(-scores, kind="stable"):  # the most confident first when tracks run out
            if c in used:
                continue
            if len(keep) >= self.max_tracks:
                self.refused += 1
                continue
            score = float(scores[c])
            t = Track(
                self._next_id,
                boxes[c],
                score,
                labels[c],
                timestamp,
                timestamp,
                label_scores={labels[c]: score},
                evidence=score,
            )
            self._next_id += 1
            if self._confirms(t):
                new.append(t)
                confirmed.append(t)
            keep.append(t)
        self.tracks = keep
        return TrackerUpdate(confirmed, new, lost, ended)

    def _confirms(self, t: Track) -> bool:
        """Confirm tentative ``t`` once ``min_hits`` detections in a row add up to ``min_hits`` times
        ``new_track_score``; True if it was confirmed now."""
        if t.confirmed or t.streak < self.min_hits or t.evidence < self.min_hits * self.new_track_score:
            return False
        t.confirmed = True
        return True

    def _associate(self, boxes: np.ndarray, scores: np.ndarray, labels: list[Any], timestamp: float) -> dict[int, int]:
        """Track row -> detection column, in the passes the module's docstring describes.

        Each pass is a priority level (its pairs' score plus the level): one greedy over the whole matrix,
        best first, takes the first pass's pairs, then the next's among what is left, and so on, as the
        passes run in turn would, in one sort."""
        pred = np.array([t.predict(timestamp, self.horizon) for t in self.tracks], np.float64).reshape(-1, 4)
        iou = iou_matrix(pred, boxes)
        if not iou.size:
            return {}
        confirmed = np.array([t.confirmed for t in self.tracks], bool)[:, None]
        high = (scores >= self.high_score)[None, :]
        high_ok, low_ok = iou >= self.match_iou, iou >= self.low_match_iou
        priority = np.select(
            [
                confirmed & high & high_ok,
                confirmed & ~high & low_ok,
                ~confirmed & high & high_ok,
                ~confirmed & ~high & low_ok,
            ],
            [10 + iou, 8 + iou, 6 + iou, 4 + iou],
            -1.0,
        )
        seen_once = np.array([t.hits == 1 for t in self.tracks], bool)
        if seen_once.any():  # what IoU cannot pair for them: the nearest similar detection within reach
            near = self._nearness(np.flatnonzero(seen_once), boxes, timestamp)
            priority = np.where((priority < 0) & (near >= 0), np.where(high, 2, 0) + near, priority)
        if self.class_aware:
            same = np.array([[t.label == lab for lab in labels] for t in self.tracks], bool)
            priority = np.where(same, priority, -1.0)
        return dict(_greedy(priority, 0.0))

    def _nearness(self, rows: np.ndarray, boxes: np.ndarray, timestamp: float) -> np.ndarray:
        """For tracks ``rows``: 1 - distance / reach to each detection of a similar size (at most 1.6 times
        larger or smaller each way), -1 beyond reach. Distances are between box centres, in the track's box
        widths (x) and heights (y); the reach is ``max_speed`` per second since the track was seen."""
        out = np.full((len(self.tracks), len(boxes)), -1.0)
        own = np.array([self.tracks[r].box for r in rows], np.float64)
        dt = np.array([min(max(0.0, timestamp - self.tracks[r].last_seen), self.horizon) for r in rows])
        w, h = (own[:, 2] - own[:, 0])[:, None], (own[:, 3] - own[:, 1])[:, None]
        dx = (boxes[None, :, 0] + boxes[None, :, 2] - own[:, 0, None] - own[:, 2, None]) / (2 * w)
        dy = (boxes[None, :, 1] + boxes[None, :, 3] - own[:, 1, None] - own[:, 3, None]) / (2 * h)
        dist = np.hypot(dx, dy)
        reach = self.max_speed * dt[:, None] + _SLACK
        rw, rh = (boxes[None, :, 2] - boxes[None, :, 0]) / w, (boxes[None, :, 3] - boxes[None, :, 1]) / h
        similar = (rw > 1 / 1.6) & (rw < 1.6) & (rh > 1 / 1.6) & (rh < 1.6)
        out[rows] = np.where(similar & (dist <= reach), 1 - dist / reach, -1.0)
        return out

    def _merge(self, boxes: np.ndarray, scores: np.ndarray, labels: list[Any]) -> list[int]:
        """Indices to keep: most confident first, dropping a box of another label overlapping a kept one."""
        iou = iou_matrix(boxes, boxes)
        if not np.triu(iou >= self.merge_iou, 1).any():
            return list(range(len(labels)))  # the usual frame: no two boxes on one object
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
