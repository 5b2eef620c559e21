"""The gate: build every quantization candidate, measure it here, keep the fastest that is accurate enough.

Quantization is measured, never assumed: int8 is often slower than fp32 on CPUs without dot-product or
VNNI instructions (onnxruntime #20052, #6695). Each candidate gets p50 latency at batch 1 and at a larger
batch, its file size, and its accuracy on validation data (against labels, or its agreement with the
fp32 model's outputs when there are none). The fastest candidate whose accuracy drop is within
``max_accuracy_drop`` points wins; a candidate slower than fp32 at either batch size never does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._registry import ConversionError
from .quantize import MODES, QuantizeConfig, quantize, unsupported_reason

__all__ = ["Candidate", "choose", "run_gate", "BATCH_SIZES"]

BATCH_SIZES = (1, 32)


@dataclass
class Candidate:
    mode: str
    size_bytes: int = 0
    latency_p50_ms: dict[str, float] = field(default_factory=dict)  # batch size -> ms
    accuracy: float | None = None  # percent: against labels, or agreement with fp32
    chosen: bool = False
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    model: bytes | None = field(default=None, repr=False)

    def report(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model")
        return d


def choose(candidates: list[Candidate], *, max_accuracy_drop: float) -> Candidate:
    """Mark the winner and say for each candidate why it was or was not chosen. ``none`` must be first."""
    base = candidates[0]
    assert base.mode == "none"
    eligible = [base]
    for c in candidates[1:]:
        if c.model is None:
            continue  # could not be built; its reason is already set
        drop = (base.accuracy or 0) - (c.accuracy or 0)
        slower = [b for b, ms in c.latency_p50_ms.items() if ms > base.latency_p50_ms.get(b, float("inf"))]
        if drop > max_accuracy_drop:
            c.reason = f"accuracy drop {drop:.2f} points > {max_accuracy_drop:g} allowed"
        elif slower:
            c.reason = f"slower than fp32 at batch {', '.join(slower)}"
        else:
            eligible.append(c)

    def speed(c: Candidate) -> float:  # geometric mean of the latency ratios to fp32
        return float(
            np.exp(np.mean([np.log(c.latency_p50_ms[b] / base.latency_p50_ms[b]) for b in base.latency_p50_ms]))
        )

    best = min(eligible, key=speed)
    best.chosen = True
    best.reason = (
        "fp32 baseline: no candidate was faster within the accuracy allowed"
        if best is base
        else f"fastest within the accuracy allowed: {1 / speed(best):.2f}x fp32"
    )
    for c in eligible:
        if c is not best:
            c.reason = f"within accuracy but slower than {best.mode} ({1 / speed(c):.2f}x fp32)"
    return best


def _session(model: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _latency(session, name: str, rows: np.ndarray, batch: int, *, budget_s: float) -> float:
    x = np.resize(rows, (batch, *rows.shape[1:])).astype(rows.dtype)
    session.run(None, {name: x})  # warm-up: first runs allocate and pick kernels
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < 20 or (time.perf_counter() < end and len(times) < 2000):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1000, 4)


def _score(
    outputs: list[np.ndarray],
    reference: list[np.ndarray],
    labels: np.ndarray | None,
    manifest: dict[str, Any],
    names: list[str],
) -> float:
    """Percent: accuracy against labels for classifiers, else agreement with the fp32 outputs."""
    if manifest.get("task") == "classifier":
        scores = outputs[names.index(manifest["scores_output"])]
        pred = scores.argmax(axis=1)
        if labels is not None:
            classes = np.asarray(manifest["labels"])
            return round(float(np.mean(classes[pred].astype(str) == labels.astype(str))) * 100, 3)
        ref = reference[names.index(manifest["scores_output"])].argmax(axis=1)
        return round(float(np.mean(pred == ref)) * 100, 3)
    out = outputs[names.index(manifest["value_output"])] if manifest.get("value_output") else outputs[0]
    ref = reference[names.index(manifest["value_output"])] if manifest.get("value_output") else reference[0]
    out, ref = np.asarray(out, np.float64).reshape(len(out), -1), np.asarray(ref, np.float64).reshape(len(ref), -1)
    # A row agrees when every value is within 1% of the fp32 output's scale.
    tol = 0.01 * (np.abs(ref).max() or 1.0)
    return round(float(np.mean(np.all(np.abs(out - ref) <= tol, axis=1))) * 100, 3)


def run_gate(
    model: bytes,
    manifest: dict[str, Any],
    *,
    modes: tuple[str, ...] = MODES,
    validation: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
    max_accuracy_drop: float = 1.0,
    threads: int = 1,
    budget_s: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> list[Candidate]:
    """Build and measure each mode; return all candidates, the chosen one marked."""
    if validation is None:
        raise ConversionError("measuring candidates needs validation data: --validation X.npy")
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    input_name = manifest["inputs"][0]["name"]
    validation = validation.astype(np.float32)
    calib = calibration if calibration is not None else validation
    candidates: list[Candidate] = []
    reference: list[np.ndarray] = []
    for i, mode in enumerate(("none", *tuple(m for m in modes if m != "none"))):
        c = Candidate(mode)
        candidates.append(c)
        reason = unsupported_reason(model, mode)
        if reason:
            c.reason = reason
            continue
        say(f"[{i + 1}/{len(modes)}] {mode}: building")
        try:
            result = quantize(model, QuantizeConfig(mode, calibration=calib if mode == "static" else None))
        except ConversionError as err:
            c.reason = str(err)
            continue
        except Exception as err:  # noqa: BLE001 - a candidate that cannot be built is reported, not fatal
            c.reason = f"could not be built: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        c.notes, c.size_bytes = result.notes, len(result.model)
        say(f"[{i + 1}/{len(modes)}] {mode}: measuring")
        try:
            session = _session(result.model, threads)
            names = [o.name for o in session.get_outputs()]
            outputs = session.run(None, {input_name: validation})
        except Exception as err:  # noqa: BLE001
            c.reason = f"ONNX Runtime cannot run it: {str(err).splitlines()[0]}"
            continue
        if mode == "none":
            reference = outputs
        c.accuracy = _score(outputs, reference, labels, manifest, names)
        c.latency_p50_ms = {
            str(b): _latency(session, input_name, validation, b, budget_s=budget_s) for b in BATCH_SIZES
        }
        c.model = result.model
    if candidates[0].model is None:
        raise ConversionError(f"the float32 model cannot be measured: {candidates[0].reason}")
    choose(candidates, max_accuracy_drop=max_accuracy_drop)
    return candidates
