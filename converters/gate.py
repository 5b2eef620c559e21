"""The gate: build every candidate, measure it here, keep the fastest that is accurate enough.

A candidate is a quantization mode run by an engine (ONNX Runtime, and OpenVINO where it is installed)
with the number of intra-op threads that measured best for it. Quantization is measured, never assumed:
int8 is often slower than fp32 on CPUs without dot-product or VNNI instructions (onnxruntime #20052,
#6695). Each candidate gets its p50 latency at the batch sizes the route will use, for every thread count
from 1 to this machine's cores; its file size; and its accuracy on validation data (against labels, or
its agreement with ONNX Runtime's fp32 outputs when there are none: top-1 for classifiers, matched boxes
for detectors). The fastest candidate whose accuracy drop is within ``max_accuracy_drop`` points wins; a
candidate slower than ONNX Runtime fp32 at any batch size, or not at least ``MIN_GAIN`` faster overall,
never does.

Threads: a candidate keeps the fewest threads unless more are at least ``THREAD_GAIN`` faster, so a
5 us model keeps one thread and leaves the other cores to MQTT, and a 65 ms CNN takes the cores.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.engines import thread_counts
from edge_runtime.errors import first_line

from ._registry import ConversionError
from .quantize import MODES, QuantizeConfig, quantize, unsupported_reason

__all__ = [
    "Candidate",
    "choose",
    "pick_threads",
    "run_gate",
    "thread_counts",
    "BATCH_SIZES",
    "ENGINE_MODES",
    "THREAD_GAIN",
    "MIN_GAIN",
    "match_detections",
]

BATCH_SIZES = (1, 32)
# Which modes each engine is measured with: OpenVINO runs fp32 and QDQ int8 models natively; it computes
# fp16 weights in f32 (no gain) and has no fast path for ONNX Runtime's dynamic-quantization operators.
ENGINE_MODES: dict[str, tuple[str, ...]] = {"onnxruntime": MODES, "openvino": ("none", "static")}
THREAD_GAIN = 0.15  # an extra thread must make a candidate at least this much faster to be kept
# A candidate must beat fp32 by this much to replace it: on a shared machine, a few percent either way is noise
# (measured here: the same session timed in alternation with itself differed by up to 25% under load).
MIN_GAIN = 0.05
DETECTION_IOU = 0.5  # a candidate's box matches fp32's when of the same class and overlapping this much
NO_BOX_SCORE_TOLERANCE = 0.01  # when fp32 finds no boxes: how far a candidate's score may be from fp32's


@dataclass
class Candidate:
    mode: str
    size_bytes: int = 0
    latency_p50_ms: dict[str, float] = field(default_factory=dict)  # batch size -> ms, at ``threads``
    accuracy: float | None = None  # percent: against labels, or agreement with fp32
    chosen: bool = False
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    model: bytes | None = field(default=None, repr=False)
    engine: str = "onnxruntime"
    threads: int = 1
    streams: int | None = None
    precision: str | None = None  # OpenVINO: the inference precision it computed in (f32, bf16, f16)
    latency_by_threads: dict[str, dict[str, float]] = field(default_factory=dict)  # threads -> batch -> ms
    threads_reason: str = ""
    detection: dict[str, Any] | None = None  # detectors: precision and recall against fp32's boxes

    @property
    def label(self) -> str:
        if self.engine == "onnxruntime":
            return self.mode
        return f"{self.mode} ({self.engine}{', ' + self.precision if self.precision else ''})"

    def report(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model")
        return d


def _speed(c: Candidate, base: Candidate) -> float:
    """Geometric mean of the latency ratios to ``base`` (below 1: faster)."""
    return float(np.exp(np.mean([np.log(c.latency_p50_ms[b] / base.latency_p50_ms[b]) for b in base.latency_p50_ms])))


def choose(candidates: list[Candidate], *, max_accuracy_drop: float, only_mode: str | None = None) -> Candidate:
    """Mark the winner and say for each candidate why it was or was not chosen. ONNX Runtime fp32 must be first.

    ``only_mode`` (``--quantize MODE``): only candidates of that mode may win; the others are still reported.
    """
    base = candidates[0]
    assert base.mode == "none" and base.engine == "onnxruntime"
    forced = [c for c in candidates if c.mode == only_mode and c.model is not None] if only_mode else []
    # With a forced mode, another engine's version of it may lose as much as ONNX Runtime's did, no more.
    floor = max(
        [max_accuracy_drop] + [(base.accuracy or 0) - (c.accuracy or 0) for c in forced if c.engine == "onnxruntime"]
    )
    eligible = [] if only_mode and only_mode != "none" else [base]
    for c in candidates[1:]:
        if c.model is None:
            continue  # could not be built or run; its reason is already set
        drop = (base.accuracy or 0) - (c.accuracy or 0)
        if only_mode and c.mode != only_mode:
            c.reason = f"measured for comparison; --quantize {only_mode} was asked for"
            continue
        if only_mode and c.engine == "onnxruntime":
            eligible.append(c)  # the mode asked for is kept whatever it measured
            continue
        slower = [b for b, ms in c.latency_p50_ms.items() if ms > base.latency_p50_ms.get(b, float("inf"))]
        if drop > (floor if only_mode else max_accuracy_drop):
            c.reason = f"accuracy drop {drop:.2f} points > {max_accuracy_drop:g} allowed"
        elif slower:
            c.reason = f"slower than fp32 at batch {', '.join(slower)}"
        elif _speed(c, base) > 1 / (1 + MIN_GAIN):
            c.reason = f"not measurably faster than fp32 ({1 / _speed(c, base):.2f}x; {1 + MIN_GAIN:.2f}x needed)"
        else:
            eligible.append(c)
    if not eligible:
        why = next((c.reason for c in candidates if c.mode == only_mode), "not built")
        raise ConversionError(f"--quantize {only_mode}: {why}")
    best = min(eligible, key=lambda c: _speed(c, base))
    best.chosen = True
    if only_mode and only_mode != "none" and best.engine == "onnxruntime":
        best.reason = f"asked for with --quantize {only_mode} ({1 / _speed(best, base):.2f}x fp32)"
    elif best is base:
        best.reason = "fp32 baseline: no candidate was faster within the accuracy allowed"
    else:
        best.reason = f"fastest within the accuracy allowed: {1 / _speed(best, base):.2f}x fp32"
    for c in eligible:
        if c is not best:
            c.reason = f"within accuracy but slower than {best.label} ({1 / _speed(c, base):.2f}x fp32)"
    return best


def pick_threads(latency: dict[int, dict[str, float]]) -> tuple[int, str]:
    """The fewest threads unless more are at least ``THREAD_GAIN`` faster; and why, in words."""

    def speed(t: int) -> float:
        return float(np.exp(np.mean(np.log(list(latency[t].values())))))

    counts = sorted(latency)
    best = counts[0]
    for t in counts[1:]:
        if speed(t) < speed(best) * (1 - THREAD_GAIN):
            best = t
    if len(counts) == 1:
        return best, f"{best} thread(s): the only count measured"
    if best == counts[0]:
        top = min(counts, key=speed)
        if top == best:
            return best, f"{best} thread(s): more threads were not faster"
        return best, (
            f"{best} thread(s): {top} were only {speed(best) / speed(top):.2f}x faster "
            f"(less than {1 / (1 - THREAD_GAIN):.2f}x)"
        )
    return best, f"{best} threads: {speed(counts[0]) / speed(best):.2f}x faster than {counts[0]}"


def _time_interleaved(
    configs: list[tuple[Any, np.ndarray, int]], *, budget_s: float, min_runs: int = 10
) -> list[float]:
    """p50 ms of each (engine, rows, batch), measured in rounds that visit every configuration in turn.

    On a machine shared with other work, load comes and goes: measured one after the other, a candidate
    measured during a busy second loses to one measured in a quiet one. In rounds, each sees the same load.
    """
    feeds = [(engine, np.resize(rows, (batch, *rows.shape[1:])).astype(rows.dtype)) for engine, rows, batch in configs]
    for engine, x in feeds:
        engine.run(x)  # warm-up: first runs allocate and pick kernels
    samples: list[list[float]] = [[] for _ in feeds]
    end = time.perf_counter() + budget_s * len(feeds)
    while len(samples[0]) < min_runs or (time.perf_counter() < end and len(samples[0]) < 2000):
        for (engine, x), times in zip(feeds, samples):
            t = time.perf_counter()
            engine.run(x)
            times.append(time.perf_counter() - t)
    return [round(float(np.median(t)) * 1000, 4) for t in samples]


def match_detections(found: list, reference: list, *, iou: float = DETECTION_IOU) -> int:
    """How many of ``found`` match a box of ``reference`` (same class, IoU >= ``iou``), each matched once.

    Both are lists of ``(box, class, score)`` as ``vision.decode_detections`` returns them; the most
    confident boxes are matched first.
    """
    used: set[int] = set()
    matched = 0
    for box, cls, _ in sorted(found, key=lambda d: -d[2]):
        best, best_iou = None, iou
        for j, (rbox, rcls, _) in enumerate(reference):
            if j in used or rcls != cls:
                continue
            overlap = _iou(box, rbox)
            if overlap >= best_iou:
                best, best_iou = j, overlap
        if best is not None:
            used.add(best)
            matched += 1
    return matched


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _detections(outputs: dict[str, np.ndarray], manifest: dict[str, Any]) -> list[list]:
    from edge_runtime.bundle.image_spec import DetectorSpec
    from edge_runtime.tasks.vision import decode_detections

    spec = DetectorSpec.model_validate(manifest.get("detector") or {})
    pred = np.asarray(outputs[manifest["outputs"][0]["name"]], np.float32)
    # Uncapped: with more boxes than max_detections, which ones make the cut is decided by score ties a
    # rounding difference flips; the gate compares the objects found, the cap is a serving limit.
    return [
        decode_detections(p, layout=spec.format, conf=spec.conf_threshold, iou=spec.iou_threshold, max_det=1_000_000)
        for p in pred
    ]


def _score(
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    labels: np.ndarray | None,
    manifest: dict[str, Any],
    candidate: Candidate,
) -> float:
    """Percent: accuracy against labels for classifiers, else agreement with the fp32 outputs."""
    task = manifest.get("task")
    if task in ("classifier", "image_classifier"):
        name = manifest.get("scores_output") or manifest["outputs"][0]["name"]
        pred = np.asarray(outputs[name]).reshape(len(outputs[name]), -1).argmax(axis=1)
        if labels is not None:
            classes = np.asarray(manifest.get("labels") or np.arange(int(pred.max()) + 1))
            return round(float(np.mean(classes[pred].astype(str) == labels.astype(str))) * 100, 3)
        ref = np.asarray(reference[name]).reshape(len(reference[name]), -1).argmax(axis=1)
        return round(float(np.mean(pred == ref)) * 100, 3)
    if task == "detector":
        found, ref = _detections(outputs, manifest), _detections(reference, manifest)
        matched = sum(match_detections(f, r) for f, r in zip(found, ref))
        n_found, n_ref = sum(map(len, found)), sum(map(len, ref))
        if not n_ref:
            return _score_without_boxes(outputs, reference, manifest, candidate, n_found)
        precision = matched / n_found if n_found else 1.0
        recall = matched / n_ref if n_ref else 1.0
        candidate.detection = {
            "precision": round(precision * 100, 2),
            "recall": round(recall * 100, 2),
            "boxes": n_found,
            "fp32_boxes": n_ref,
            "iou": DETECTION_IOU,
        }
        # One number for the accuracy rule: F1 of the boxes against fp32's, in percent.
        return round(200 * precision * recall / (precision + recall), 3) if precision + recall else 0.0
    key = manifest.get("value_output") or manifest["outputs"][0]["name"]
    out, ref = outputs[key], reference[key]
    out, ref = np.asarray(out, np.float64).reshape(len(out), -1), np.asarray(ref, np.float64).reshape(len(ref), -1)
    # A row agrees when every value is within 1% of the fp32 output's scale.
    tol = 0.01 * (np.abs(ref).max() or 1.0)
    return round(float(np.mean(np.all(np.abs(out - ref) <= tol, axis=1))) * 100, 3)


def _score_without_boxes(
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    manifest: dict[str, Any],
    candidate: Candidate,
    n_found: int,
) -> float:
    """Percent of frames whose every score is within ``NO_BOX_SCORE_TOLERANCE`` of fp32's.

    When fp32 finds no box on any frame, precision and recall of boxes are a vacuous 100 % that any
    candidate passes whatever it computed; the scores (objectness and classes) are what can still be
    compared.
    """
    from edge_runtime.bundle.image_spec import DetectorSpec

    layout = DetectorSpec.model_validate(manifest.get("detector") or {}).format
    name = manifest["outputs"][0]["name"]
    out, ref = np.asarray(outputs[name], np.float32), np.asarray(reference[name], np.float32)
    # yolov8: (frames, 4 + classes, anchors); yolov5: (frames, anchors, 5 + classes)
    out, ref = (out[:, 4:, :], ref[:, 4:, :]) if layout == "yolov8" else (out[..., 4:], ref[..., 4:])
    agree = np.all(np.abs(out - ref).reshape(len(ref), -1) <= NO_BOX_SCORE_TOLERANCE, axis=1)
    candidate.detection = {"boxes": n_found, "fp32_boxes": 0, "compared": "scores"}
    candidate.notes.append(
        "fp32 finds no boxes on these frames: compared the scores instead (every one within "
        f"{NO_BOX_SCORE_TOLERANCE}); give --validation frames on which the model finds objects"
    )
    return round(float(np.mean(agree)) * 100, 3)


def _bundle(model: bytes, manifest: dict[str, Any], directory: Path, candidate: Candidate):
    """A bundle of one candidate for the engines to open: written here, not verified (it is ours)."""
    import hashlib

    from edge_runtime.bundle import Bundle, Manifest

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    if not path.exists():
        path.write_bytes(model)
    fields = {k: v for k, v in manifest.items() if k not in ("engine", "sha256", "files", "model_file")}
    fields["engine"] = {"kind": candidate.engine, "precision": candidate.precision}
    return Bundle(directory, Manifest.model_validate({**fields, "sha256": hashlib.sha256(model).hexdigest()}))


def _run_all(engine: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    step = getattr(engine, "fixed_batch", None) or 32
    parts = [engine.run(rows[i : i + step]) for i in range(0, len(rows), step)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def run_gate(
    model: bytes,
    manifest: dict[str, Any],
    *,
    modes: tuple[str, ...] = MODES,
    validation: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
    max_accuracy_drop: float = 1.0,
    threads: int | tuple[int, ...] | None = None,
    engines: tuple[str, ...] | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    only_mode: str | None = None,
    budget_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> list[Candidate]:
    """Build each mode, measure it on each engine at each thread count; return every candidate, the chosen one marked.

    The first candidate is always ONNX Runtime fp32, the reference for agreement and speed.
    """
    from edge_runtime.engines import available_engines, open_engine, precisions

    if validation is None:
        raise ConversionError("measuring candidates needs validation data: --validation X.npy")
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    dtype = np.dtype(manifest["inputs"][0]["dtype"])
    validation = validation.astype(np.float32) if dtype.kind == "f" else validation.astype(dtype)
    calib = calibration if calibration is not None else validation
    counts = (threads,) if isinstance(threads, int) else tuple(threads or thread_counts())
    kinds = tuple(k for k in (engines or available_engines()) if k in available_engines())
    if "onnxruntime" not in kinds:
        kinds = ("onnxruntime", *kinds)  # the reference every other candidate is compared with
    tail = manifest["outputs"][0]["name"] if manifest.get("task") == "detector" else None
    ordered = ("none", *tuple(m for m in modes if m != "none"))
    candidates: list[Candidate] = []
    reference: dict[str, np.ndarray] = {}
    measured: list[tuple[Candidate, dict[int, Any], bytes]] = []  # candidate, engine per thread count, model
    with tempfile.TemporaryDirectory(prefix="edge-gate-") as tmp:
        for i, mode in enumerate(ordered):
            step = f"[{i + 1}/{len(ordered)}] {mode}"
            mine = [
                Candidate(mode, engine=k, precision=p)
                for k in kinds
                if mode in ENGINE_MODES.get(k, ("none",))
                for p in precisions(k, mode)
            ]
            candidates += mine
            reason = unsupported_reason(model, mode)
            if reason:
                for c in mine:
                    c.reason = reason
                continue
            say(f"{step}: building")
            try:
                result = quantize(
                    model, QuantizeConfig(mode, calibration=calib if mode == "static" else None, float_tail_of=tail)
                )
            except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is reported, not fatal
                for c in mine:
                    c.reason = (
                        str(err) if isinstance(err, ConversionError) else f"could not be built: {first_line(err)}"
                    )
                continue
            for c in mine:
                bundle = _bundle(result.model, manifest, Path(tmp) / mode, c)
                c.notes, c.size_bytes = list(result.notes), len(result.model)
                say(f"{step} on {c.engine}{' ' + c.precision if c.precision else ''}: checking its outputs")
                try:
                    opened = {t: open_engine(bundle, engine=c.engine, threads=t) for t in counts}
                    outputs = _run_all(opened[counts[0]], validation)  # outputs do not depend on threads
                    c.precision = getattr(opened[counts[0]], "precision", None)
                    if c.mode == "none" and c.engine == "onnxruntime":
                        reference = outputs
                    c.accuracy = _score(outputs, reference, labels, manifest, c)
                except Exception as err:  # noqa: BLE001 - an engine that cannot run a candidate is reported
                    c.reason = f"{c.engine} cannot run it: {first_line(err)}"
                    continue
                measured.append((c, opened, result.model))
        if any((c.detection or {}).get("compared") == "scores" for c, _, _ in measured):
            say("note: fp32 finds no boxes on these frames, so candidates are compared on their scores")
        configs = [(c, t, b) for c, engines, _ in measured for t in counts for b in batch_sizes]
        say(
            f"measuring {len(measured)} candidate(s) x {len(counts)} thread count(s) x batch "
            f"{', '.join(map(str, batch_sizes))}"
        )
        try:
            p50 = _time_interleaved(
                [
                    (engines[t], validation, b)
                    for (c, t, b), (_, engines, _) in zip(
                        configs, (m for m in measured for _ in counts for _ in batch_sizes)
                    )
                ],
                budget_s=budget_s,
            )
        except Exception as err:
            raise ConversionError(f"timing the candidates failed: {first_line(err)}") from err
        for c, _engines, model_bytes in measured:
            latency = {t: {str(b): ms for (cc, tt, b), ms in zip(configs, p50) if cc is c and tt == t} for t in counts}
            c.threads, c.threads_reason = pick_threads(latency)
            c.streams = 1 if c.engine == "openvino" else None
            c.latency_by_threads = {str(t): v for t, v in latency.items()}
            c.latency_p50_ms = latency[c.threads]
            c.model = model_bytes
        measured.clear()  # close the sessions before the temporary files go
    if candidates[0].model is None:
        raise ConversionError(f"the float32 model cannot be measured: {candidates[0].reason}")
    choose(candidates, max_accuracy_drop=max_accuracy_drop, only_mode=only_mode)
    return candidates
