"""``bench tracking``: the tracker behind ``track = true`` against maintained trackers, on the same detections.

Every scene of ``tracking_scenes`` (easy, crossing, crowded, low fps, irregular frames) is built for a few
seeds; each tracker sees exactly the same detections with their timestamps, and what it reports on each
frame (an id and the box of every confirmed object matched there) is scored against the ground truth with
``motmetrics`` (MOTA, IDF1, identity switches; a match is IoU >= 0.5), the standard CLEAR-MOT and ID
measures. Beside them: the share of low-score detections of real objects (partly hidden ones) that made
it into the output, and the time per frame spent in the tracker's update (each frame's best of
``repeat`` runs: the tracker's cost, not the machine's other jobs).

The references, when installed (none is a dependency of this project):

- ``trackers`` (Roboflow): ``ByteTrackTracker`` and ``SORTTracker``, given the scene's frame rate and each
  frame's timestamp (they are timestamp-aware);
- ``supervision``: ``ByteTrack`` (deprecated in 0.28, gone in 0.31: it moved to ``trackers``), given the
  frame rate; it has no timestamps, so it takes uneven frames as even.

Every tracker runs at its defaults (this project's: ``[routes.tracker]``'s); only the frame rate, which
describes the stream, is passed. Ratios are against the best reference in the same run, per figure.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeRuntimeError
from ..tracking import TrackerConfig, iou_matrix
from .tracking_scenes import SCENES, Frame, SceneSpec, build_scene

__all__ = ["TrackingBenchOptions", "bench_tracking", "format_tracking_report", "write_tracking_csv", "SYSTEMS"]

OURS = "edge-runtime"
MS_TARGET = 0.3  # ms per frame

Output = list[tuple[int, Sequence[float] | np.ndarray]]  # (track id, box) of each object reported on a frame
Update = Callable[[Any, float], Output]


@dataclass(frozen=True)
class _System:
    name: str
    dist: str  # the package it comes from
    make: Callable[[SceneSpec], tuple[Callable[[list[dict]], Any], Update]]  # -> (prepare detections, update)
    available: Callable[[], str | None]  # None, or why it cannot be measured


def _ours(spec: SceneSpec) -> tuple[Callable[[list[dict]], Any], Update]:
    tracker = TrackerConfig().build()

    def update(dets: list[dict], t: float) -> Output:
        return [(tr.id, tr.box) for tr in tracker.update(dets, t).confirmed]

    return (lambda dets: dets), update


def _sv_detections(dets: list[dict]) -> Any:
    import supervision as sv

    labels = {"person": 0, "car": 1}
    return sv.Detections(
        xyxy=np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
        confidence=np.array([d["score"] for d in dets], np.float32),
        class_id=np.array([labels.get(d["label"], 2) for d in dets], int),
    )


def _tracked(result: Any) -> Output:
    return [(int(i), box) for i, box in zip(result.tracker_id, result.xyxy) if i >= 0]


def _roboflow(class_name: str) -> Callable[[SceneSpec], tuple[Callable[[list[dict]], Any], Update]]:
    def make(spec: SceneSpec) -> tuple[Callable[[list[dict]], Any], Update]:
        import trackers

        tracker = getattr(trackers, class_name)(frame_rate=spec.fps)
        return _sv_detections, lambda dets, t: _tracked(tracker.update(dets, timestamp=t))

    return make


def _supervision(spec: SceneSpec) -> tuple[Callable[[list[dict]], Any], Update]:
    import supervision as sv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        tracker = sv.ByteTrack(frame_rate=spec.fps)
    return _sv_detections, lambda dets, _t: _tracked(tracker.update_with_detections(dets))


def _installed(module: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(module) else f"not installed (pip install {module})"


def _supervision_bytetrack() -> str | None:
    if importlib.util.find_spec("supervision") is None:
        return "not installed (pip install 'supervision<0.31')"
    import supervision as sv

    if hasattr(sv, "ByteTrack"):
        return None
    return f"supervision {_version('supervision')} has none (removed in 0.31; pip install 'supervision<0.31')"


SYSTEMS = (
    _System(OURS, "edge-runtime", _ours, lambda: None),
    _System("trackers ByteTrack", "trackers", _roboflow("ByteTrackTracker"), _installed("trackers")),
    _System("trackers SORT", "trackers", _roboflow("SORTTracker"), _installed("trackers")),
    _System("supervision ByteTrack", "supervision", _supervision, _supervision_bytetrack),
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True, kw_only=True)
class TrackingBenchOptions:
    scenes: tuple[str, ...] = tuple(SCENES)
    seeds: int = 5  # scenes built per scene kind: seed, seed + 1, ...
    seed: int = 0
    repeat: int = 3  # timed runs per tracker and scene; the best is kept
    references: bool = True

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenes if s not in SCENES]
        if unknown or not self.scenes:
            raise EdgeRuntimeError(f"--scenes: choose from {', '.join(SCENES)} (not {', '.join(unknown) or 'none'})")
        if self.seeds < 1 or self.repeat < 1:
            raise EdgeRuntimeError("--seeds and --repeat are at least 1")


def _run(system: _System, spec: SceneSpec, frames: list[Frame], repeat: int) -> tuple[list[Output], float]:
    """Every frame's output (from the first run) and the seconds spent in ``update``: each frame's best of
    ``repeat`` runs, added up (a frame the scheduler took the core from in one run counts its fastest)."""
    outputs: list[Output] = []
    best = np.full(len(frames), np.inf)
    for r in range(repeat):
        prepare, update = system.make(spec)
        inputs = [prepare(f.detections) for f in frames]
        for k, (f, x) in enumerate(zip(frames, inputs)):
            t0 = time.perf_counter()
            out = update(x, f.t)
            best[k] = min(best[k], time.perf_counter() - t0)
            if r == 0:
                outputs.append(out)
    return outputs, float(best.sum())


def _distances(truth: Sequence[Any], hypotheses: Sequence[Any]) -> np.ndarray:
    """1 - IoU, NaN (no match possible) below IoU 0.5: ``motmetrics.distances.iou_matrix(..., max_iou=0.5)``,
    which motmetrics 1.4 cannot run on numpy 2 (``np.asfarray``)."""
    a, b = (np.array(x, np.float64).reshape(-1, 4) for x in (truth, hypotheses))
    d = 1 - iou_matrix(a, b)
    return np.where(d <= 0.5, d, np.nan)


def _key(box: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 1) for v in box[:4])


_METRICS = {  # motmetrics name -> report name
    "mota": "mota",
    "idf1": "idf1",
    "num_switches": "id_switches",
    "num_fragmentations": "fragmentations",
    "num_false_positives": "false_positives",
    "num_misses": "misses",
    "num_detections": "matches",
    "num_objects": "truth_boxes",
    "num_unique_objects": "objects",
    "mostly_tracked": "mostly_tracked",
}


def _score(runs: list[tuple[list[Frame], list[Output]]]) -> dict[str, Any]:
    """MOT metrics over every seed's frames (ids kept apart per seed), and the low-score detections kept."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    low_total = low_kept = 0
    for k, (frames, outputs) in enumerate(runs):
        offset = 1_000_000 * k
        for f, out in zip(frames, outputs):
            dist = _distances([b for _, b in f.truth], [b for _, b in out])
            acc.update([offset + i for i, _ in f.truth], [offset + i for i, _ in out], dist)
            reported = {_key(b) for _, b in out}
            low_total += len(f.low_boxes)
            low_kept += sum(_key(b) in reported for b in f.low_boxes)
    summary = mm.metrics.create().compute(acc, metrics=list(_METRICS), name="s")
    row = {_METRICS[k]: summary[k].iloc[0] for k in _METRICS}
    scores: dict[str, Any] = {k: round(float(v), 4) if k in ("mota", "idf1") else int(v) for k, v in row.items()}
    scores["low_score_kept"] = round(low_kept / low_total, 4) if low_total else None
    return scores


def bench_tracking(options: TrackingBenchOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    try:
        import motmetrics  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("bench tracking scores with motmetrics: pip install 'edge-runtime[bench]'") from None
    from .machine import machine_facts

    systems = [s for s in SYSTEMS if options.references or s.name == OURS]
    skipped = {s.name: why for s in systems if (why := s.available()) is not None}
    measured = [s for s in systems if s.name not in skipped]
    seeds = [options.seed + k for k in range(options.seeds)]
    scenes: dict[str, dict] = {}
    for name in options.scenes:
        spec = SCENES[name]
        built = [build_scene(spec, s) for s in seeds]
        frames = sum(len(sc.frames) for sc in built)
        entry: dict[str, Any] = {
            "what": spec.what,
            "fps": spec.fps,
            "seeds": seeds,
            "frames": frames,
            "objects": sum(sc.objects for sc in built),
            "truth_boxes": sum(len(f.truth) for sc in built for f in sc.frames),
            "detections": sum(len(f.detections) for sc in built for f in sc.frames),
            "low_score_true": sum(len(f.low_boxes) for sc in built for f in sc.frames),
            "systems": {},
        }
        for system in measured:
            if progress:
                progress(f"{name}: {system.name}")
            runs, spent = [], 0.0
            for sc in built:
                outputs, seconds = _run(system, spec, sc.frames, options.repeat)
                runs.append((sc.frames, outputs))
                spent += seconds
            entry["systems"][system.name] = {**_score(runs), "ms_per_frame": round(1000 * spent / frames, 4)}
        entry["vs_best_reference"] = _versus(entry["systems"])
        scenes[name] = entry
    return {
        "kind": "tracking",
        "options": {"scenes": list(options.scenes), "seeds": options.seeds, "seed": options.seed},
        "versions": {s.dist: _version(s.dist) for s in measured},
        "references": {
            s.name: skipped.get(s.name, "measured" if s in measured else "left out (--no-references)")
            for s in SYSTEMS
            if s.name != OURS
        },
        "target": _target(scenes),
        "scenes": scenes,
        "machine": machine_facts(broker=None),
    }


def _versus(systems: dict[str, dict]) -> dict[str, Any]:
    """Ours against the best reference on each figure: MOTA, IDF1 (higher is better), ms per frame (lower)."""
    refs = {k: v for k, v in systems.items() if k != OURS}
    ours = systems.get(OURS)
    if not refs or ours is None:
        return {}
    out = {}
    for key, higher in (("mota", True), ("idf1", True), ("ms_per_frame", False)):
        best = (max if higher else min)(refs, key=lambda k: refs[k][key])
        ref = refs[best][key]
        out[key] = {"reference": best, "value": ref, "ratio": round(ours[key] / ref, 3) if ref > 0 else None}
    return out


def _target(scenes: dict[str, dict]) -> dict[str, Any]:
    """Per scene: MOTA and IDF1 at least the best reference's, and at most MS_TARGET ms per frame."""
    out = {}
    for name, s in scenes.items():
        ours, vs = s["systems"].get(OURS), s["vs_best_reference"]
        if ours is None:
            continue
        quality = None if not vs else all(ours[k] >= vs[k]["value"] for k in ("mota", "idf1"))
        out[name] = {"quality": quality, "speed": ours["ms_per_frame"] <= MS_TARGET}
    return out


def format_tracking_report(report: dict) -> str:
    lines = [
        f"{'scene / tracker':<26} {'MOTA':>6} {'IDF1':>6} {'IDsw':>5} {'frag':>5} {'FP':>5} {'miss':>5} "
        f"{'low kept':>8} {'ms/frame':>9}"
    ]
    for name, s in report["scenes"].items():
        lines.append(
            f"{name}: {s['what']}; {len(s['seeds'])} seed(s), {s['frames']} frames, {s['objects']} objects, "
            f"{s['truth_boxes']} truth boxes, {s['detections']} detections"
        )
        for system, m in s["systems"].items():
            low = "-" if m["low_score_kept"] is None else f"{m['low_score_kept']:.0%}"
            lines.append(
                f"  {system:<24} {m['mota']:>6.3f} {m['idf1']:>6.3f} {m['id_switches']:>5} {m['fragmentations']:>5} "
                f"{m['false_positives']:>5} {m['misses']:>5} {low:>8} {m['ms_per_frame']:>9.3f}"
            )
        vs = s["vs_best_reference"]
        if vs:
            lines.append(
                "  vs best reference: "
                + ", ".join(
                    f"{k.replace('_per_frame', '/frame')} {v['ratio']}x ({v['reference']})"
                    for k, v in vs.items()
                    if v["ratio"] is not None
                )
            )
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    for system, state in report["references"].items():
        if state != "measured":
            lines.append(f"{system}: {state}")
    missed = [n for n, t in report["target"].items() if t["quality"] is False or not t["speed"]]
    if any(t["quality"] is not None for t in report["target"].values()):
        lines.append(
            f"target (MOTA and IDF1 >= the best reference's, <= {MS_TARGET} ms/frame): "
            + ("met on every scene" if not missed else f"missed on {', '.join(missed)}")
        )
    return "\n".join(lines)


def write_tracking_csv(report: dict, path: Path) -> int:
    """One row per scene and tracker. Returns the row count."""
    fields = ["scene", "tracker", "frames", *(_METRICS[k] for k in _METRICS), "low_score_kept", "ms_per_frame"]
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, s in report["scenes"].items():
            for system, m in s["systems"].items():
                w.writerow({"scene": name, "tracker": system, "frames": s["frames"], **m})
                n += 1
    return n
