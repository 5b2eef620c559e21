"""``bench model``: the runtime core alone, against bare ``InferenceSession.run`` on the same arrays.

The core is what the runtime does around inference for one batch: stack the decoded rows, run the
session (with the runtime's settings), turn outputs into result dicts, and encode them. The codecs are
shown in their own column, per row, since their cost grows with rows, not with the model.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from ..bundle import load_bundle, write_bundle
from ..engines import Engine
from ..errors import PayloadError
from ..tasks.codecs import encode

__all__ = ["bench_model"]


def _time(fn: Callable[[], object], duration: float, warmup: int = 20) -> np.ndarray:
    for _ in range(warmup):
        fn()
    samples = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end or len(samples) < 50:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return np.asarray(samples) * 1000


def _stats(ms: np.ndarray, rows: int) -> dict:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "max_ms": round(float(ms.max()), 4),
        "rows_per_s": round(rows / (float(np.median(ms)) / 1000), 1),
    }


def bench_model(
    bundle_path: str | Path,
    *,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    threads: int = 1,
    duration: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure each batch size: bare session.run, the runtime core, and the codecs; return a report dict.

    A bundle converted with ``--keep-candidates`` also holds the quantization candidates the converter
    did not choose: each gets the same table, under ``candidates``.
    """
    bundle = load_bundle(bundle_path)
    report = _bench_bundle(bundle, batch_sizes=batch_sizes, threads=threads, duration=duration, progress=progress)
    kept = _kept_candidates(bundle)
    if kept:
        with tempfile.TemporaryDirectory() as tmp:
            report["candidates"] = {}
            for mode, model_bytes in kept.items():
                fields = bundle.manifest.model_dump(exclude={"sha256", "signature", "model_file"})
                fields["quantization"] = {"mode": mode}
                candidate = write_bundle(Path(tmp) / mode, model_bytes, fields)
                report["candidates"][mode] = _bench_bundle(
                    candidate, batch_sizes=batch_sizes, threads=threads, duration=duration, progress=progress
                )
    return report


def _kept_candidates(bundle) -> dict[str, bytes]:
    try:
        report = json.loads((bundle.path / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for c in report.get("candidates", []):
        path = bundle.path / str(c.get("file") or "")
        if c.get("file") and not c.get("chosen") and bundle.path.resolve() in path.resolve().parents and path.is_file():
            out[c["mode"]] = path.read_bytes()
    return out


def _bench_bundle(bundle, *, batch_sizes, threads, duration, progress) -> dict:
    engine = Engine(bundle, threads=threads)
    m = bundle.manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    bare = ort.InferenceSession(str(bundle.model_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    decoder = engine.task.decoder(m, max_bytes=1 << 30)
    rows_out = []
    for n in batch_sizes:
        if progress:
            progress(f"batch {n}")
        payloads, rows, metas = _sample_inputs(engine, decoder, n, rng)
        batch = np.stack(rows)
        feed = {m.inputs[0].name: batch}

        def core(rows: list[np.ndarray] = rows, metas: list = metas) -> None:
            outputs = engine.run(np.stack(rows))
            for result in engine.task.results(m, outputs, metas):
                encode({"id": 1, "model": m.name, "version": m.version, **result})

        def codecs(payloads: list[bytes] = payloads) -> None:
            for p in payloads:
                decoder.decode(p)

        bare_ms = _time(lambda feed=feed: bare.run(None, feed), duration / 3)
        core_ms = _time(core, duration / 3)
        decode_ms = _time(codecs, duration / 3)
        rows_out.append(
            {
                "batch": n,
                "bare": _stats(bare_ms, n),
                "core": _stats(core_ms, n),
                "overhead_ratio": round(float(np.median(core_ms) / np.median(bare_ms)), 3),
                "decode_us_per_row": round(float(np.median(decode_ms)) * 1000 / n, 2),
            }
        )
    return {
        "bundle": str(bundle.path),
        "model": m.name,
        "task": m.task,
        "threads": threads,
        "quantization": m.quantization.get("mode", "none"),
        "batches": rows_out,
    }


def _sample_inputs(engine, decoder, n: int, rng) -> tuple[list[bytes], list[np.ndarray], list]:
    """``n`` payloads as a client sends them, and the rows and metas the decoder makes of them.

    Tensor models take JSON rows; image models refuse those, and get frames (as ``.npy``, which needs no
    image encoder) of the model's input size.
    """
    shape = engine.example_row_shape()
    dtype = engine.manifest.inputs[0].dtype
    payloads = [orjson.dumps({"id": i, "values": rng.normal(size=shape).astype(dtype).tolist()}) for i in range(n)]
    try:
        decoded = [decoder.decode(p) for p in payloads]
    except PayloadError:
        h, w = shape[1:3] if len(shape) == 3 and shape[0] in (1, 3) else shape[:2]
        payloads = []
        for _ in range(n):
            buf = io.BytesIO()
            np.save(buf, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), allow_pickle=False)
            payloads.append(buf.getvalue())
        decoded = [decoder.decode(p) for p in payloads]
    return payloads, [row for _, row, _ in decoded], [meta for _, _, meta in decoded]


def format_model_report(report: dict) -> str:
    tables = [_format_one(report)]
    for mode, sub in (report.get("candidates") or {}).items():
        tables.append(f"candidate not chosen by the converter: {mode}\n" + _format_one(sub))
    return "\n\n".join(tables)


def _format_one(report: dict) -> str:
    lines = [
        f"{report['model']} ({report['task']}, {report['quantization']}) with {report['threads']} thread(s)",
        f"{'batch':>5}  {'bare p50':>9} {'p99':>8}  {'core p50':>9} {'p90':>8} {'p99':>8} {'max':>8}"
        f"  {'rows/s':>9}  {'core/bare':>9}  {'decode/row':>10}",
    ]
    for b in report["batches"]:
        bare, core = b["bare"], b["core"]
        lines.append(
            f"{b['batch']:>5}  {bare['p50_ms']:>7.3f}ms {bare['p99_ms']:>6.3f}ms  {core['p50_ms']:>7.3f}ms"
            f" {core['p90_ms']:>6.3f}ms {core['p99_ms']:>6.3f}ms {core['max_ms']:>6.3f}ms  {core['rows_per_s']:>9.0f}"
            f"  {b['overhead_ratio']:>8.2f}x  {b['decode_us_per_row']:>8.1f}us"
        )
    return "\n".join(lines)
