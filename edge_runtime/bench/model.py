"""``bench model``: the runtime core alone, against bare ``InferenceSession.run`` on the same arrays.

The core is what the runtime does around inference for one batch: stack the decoded rows, run the
engine (with the runtime's settings), turn outputs into result dicts, and encode them. The codecs are
shown in their own column, per row, since their cost grows with rows, not with the model.

Every installed engine (ONNX Runtime, OpenVINO) is measured at every thread count from 1 to this
machine's cores, so the table shows on the device itself which engine and thread count serve the model
fastest, beside what the bundle recorded when it was converted. Image bundles are fed real JPEG frames
(drawn scenes), decoded with the bundle's own preprocessing.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from ..bundle import load_bundle, write_bundle
from ..engines import (
    available_engines,
    fixed_batch,
    open_engine,
    precisions,
    resolve_threads,
    run_in_slices,
    thread_counts,
    with_engine,
)
from ..errors import BundleError
from ..tasks.codecs import encode

__all__ = ["bench_model", "format_model_report", "bare_session"]


def _time(fn: Callable[[], object], duration: float, warmup: int = 3, min_runs: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end or len(samples) < min_runs:
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


def bare_session(
    model_path: Path, threads: int, *, spinning: bool = True
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """What a user would write: one ``InferenceSession`` with ``threads`` intra-op threads, ``run`` on the batch
    (in slices of the model's batch size when it is fixed, since ``run`` refuses anything else).

    ``spinning=False`` turns ONNX Runtime's default busy-waiting threads off, as the runtime's engine does:
    on a machine whose cores are busy with other work, spinning threads slow everything down.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    fixed = fixed_batch(session.get_inputs()[0].shape[0])

    def one(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {name: x})))

    if fixed:
        return lambda x: run_in_slices(one, x, fixed)
    return one


def bench_model(
    bundle_path: str | Path,
    *,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    threads: int | tuple[int, ...] | None = None,
    engines: tuple[str, ...] | None = None,
    duration: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure each engine, thread count and batch size: bare session.run, the runtime core, and the codecs.

    ``threads``: the counts to measure (default: 1 up to this machine's cores). The report's ``batches``
    are for the engine and threads the runtime would use for this bundle (what it recorded, else one
    thread); ``engines`` lists every combination measured and ``fastest`` the best one.
    A bundle converted with ``--keep-candidates`` also holds the quantization candidates the converter
    did not choose: each gets the same table, under ``candidates``.
    """
    bundle = load_bundle(bundle_path)
    counts = (threads,) if isinstance(threads, int) else tuple(threads or thread_counts())
    kinds = tuple(engines or available_engines())
    report = _bench_bundle(
        bundle, batch_sizes=batch_sizes, threads=counts, engines=kinds, duration=duration, progress=progress
    )
    kept = _kept_candidates(bundle)
    if kept:
        with tempfile.TemporaryDirectory() as tmp:
            report["candidates"] = {}
            for mode, model_bytes in kept.items():
                fields = bundle.manifest.model_dump(exclude={"sha256", "signature", "model_file", "engine"})
                fields["quantization"] = {"mode": mode}
                candidate = write_bundle(Path(tmp) / mode, model_bytes, fields)
                report["candidates"][mode] = _bench_bundle(
                    candidate,
                    batch_sizes=batch_sizes,
                    threads=counts,
                    engines=("onnxruntime",),
                    duration=duration,
                    progress=progress,
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


def _inputs(engine, n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list, list[bytes]]:
    """``n`` decoded rows, their metas, and the payloads they came from: JPEG frames for image models."""
    m = engine.manifest
    decoder = engine.task.decoder(m, max_bytes=1 << 30)
    if m.task in ("image_classifier", "detector"):
        from devices.cameras import encode_frame
        from devices.scenes import draw_scene

        payloads = [encode_frame(draw_scene(rng, 640, 480)[0]) for _ in range(n)]
    else:
        shape = engine.example_row_shape()
        payloads = [
            orjson.dumps({"id": i, "values": rng.normal(size=shape).astype(m.inputs[0].dtype).tolist()})
            for i in range(n)
        ]
    decoded = [decoder.decode(p) for p in payloads]
    return [d[1] for d in decoded], [d[2] for d in decoded], payloads


def _bench_bundle(bundle, *, batch_sizes, threads, engines, duration, progress) -> dict:
    m = bundle.manifest
    rng = np.random.default_rng(0)
    recorded_threads, origin = resolve_threads(m, None, 1)
    recorded_kind = m.engine.kind if m.engine else "onnxruntime"
    if recorded_kind not in engines:
        recorded_kind = "onnxruntime"
    recorded_precision = m.engine.precision if m.engine and m.engine.kind == recorded_kind else None
    mode = m.quantization.get("mode", "none")
    combos = [
        (k, p, t)
        for k in engines
        for p in precisions(k, mode)
        for t in sorted(set(threads) | ({recorded_threads} if k == recorded_kind else set()))
    ]
    per_batch = duration / max(1, 3 * len(combos))
    bare_ms: dict[tuple[int, int], np.ndarray] = {}
    results = []
    first = open_engine(bundle, engine="onnxruntime", threads=1)
    inputs = {n: _inputs(first, n, rng) for n in batch_sizes}
    decoder = first.task.decoder(m, max_bytes=1 << 30)
    skipped: dict[str, str] = {}
    for kind, precision, t in combos:
        if kind in skipped:
            continue
        try:
            engine = open_engine(with_engine(bundle, kind, precision) if precision else bundle, engine=kind, threads=t)
        except BundleError as err:  # e.g. OpenVINO has no tree-ensemble operators: say so, measure the rest
            skipped[kind] = str(err).split(": ", 1)[-1]
            continue
        bare = bare_session(bundle.model_path, t) if (t, batch_sizes[0]) not in bare_ms else None
        rows_out = []
        for n in batch_sizes:
            if progress:
                progress(f"{kind}, {t} thread(s), batch {n}")
            rows, metas, payloads = inputs[n]
            feed = np.stack(rows)

            def core(engine: Any = engine, rows: list = rows, metas: list = metas) -> None:
                outputs = engine.run(np.stack(rows))
                for result in engine.task.results(m, outputs, metas):
                    encode({"id": 1, "model": m.name, "version": m.version, **result})

            def codecs(payloads: list = payloads) -> None:
                for p in payloads:
                    decoder.decode(p)

            if (t, n) not in bare_ms:
                assert bare is not None  # opened above for any thread count not yet measured

                def run_bare(bare: Callable[[np.ndarray], object] = bare, feed: np.ndarray = feed) -> object:
                    return bare(feed)

                bare_ms[(t, n)] = _time(run_bare, per_batch)
            core_ms = _time(core, per_batch)
            decode_ms = _time(codecs, per_batch / 2, min_runs=3)
            rows_out.append(
                {
                    "batch": n,
                    "bare": _stats(bare_ms[(t, n)], n),
                    "core": _stats(core_ms, n),
                    "overhead_ratio": round(float(np.median(core_ms) / np.median(bare_ms[(t, n)])), 3),
                    "decode_us_per_row": round(float(np.median(decode_ms)) * 1000 / n, 2),
                }
            )
        results.append(
            {"engine": kind, "threads": t, "precision": getattr(engine, "precision", None), "batches": rows_out}
        )
    # The configuration the runtime serves this bundle with (the first one measured if that one could not run).
    same = [r for r in results if r["engine"] == recorded_kind and r["threads"] == recorded_threads]
    served = next((r for r in same if recorded_precision in (None, r["precision"])), same[0] if same else results[0])
    fastest = min(results, key=lambda r: float(np.exp(np.mean([np.log(b["core"]["p50_ms"]) for b in r["batches"]]))))
    return {
        "bundle": str(bundle.path),
        "model": m.name,
        "task": m.task,
        "threads": recorded_threads,
        "threads_from": origin,
        "engine": recorded_kind,
        "quantization": m.quantization.get("mode", "none"),
        "batches": served["batches"],
        "engines": results,
        "skipped_engines": skipped,
        "fastest": {"engine": fastest["engine"], "threads": fastest["threads"], "precision": fastest["precision"]},
    }


def format_model_report(report: dict) -> str:
    tables = [_format_one(report)]
    for mode, sub in (report.get("candidates") or {}).items():
        tables.append(f"candidate not chosen by the converter: {mode}\n" + _format_one(sub))
    return "\n\n".join(tables)


def _format_one(report: dict) -> str:
    lines = [
        f"{report['model']} ({report['task']}, {report['quantization']}); served with {report['engine']}, "
        f"{report['threads']} thread(s) ({report.get('threads_from', 'default')})",
        f"{'engine':>18} {'thr':>3} {'batch':>5}  {'bare p50':>9} {'p99':>8}  {'core p50':>9} {'p90':>8} "
        f"{'p99':>8}"
        f" {'max':>8}  {'rows/s':>9}  {'core/bare':>9}  {'decode/row':>10}",
    ]
    served = {"engine": report["engine"], "threads": report["threads"], "batches": report["batches"]}
    for r in report.get("engines") or [served]:
        name = r["engine"] + (f" {r['precision']}" if r.get("precision") else "")
        for b in r["batches"]:
            bare, core = b["bare"], b["core"]
            lines.append(
                f"{name:>18} {r['threads']:>3} {b['batch']:>5}  {bare['p50_ms']:>7.3f}ms "
                f"{bare['p99_ms']:>6.3f}ms  {core['p50_ms']:>7.3f}ms {core['p90_ms']:>6.3f}ms "
                f"{core['p99_ms']:>6.3f}ms {core['max_ms']:>6.3f}ms  {core['rows_per_s']:>9.0f}  "
                f"{b['overhead_ratio']:>8.2f}x  {b['decode_us_per_row']:>8.1f}us"
            )
    for kind, why in (report.get("skipped_engines") or {}).items():
        lines.append(f"{kind}: not measured: {why}")
    f = report.get("fastest")
    if f and (f["engine"], f["threads"]) != (report["engine"], report["threads"]):
        lines.append(
            f"fastest here: {f['engine']} {f.get('precision') or ''} with {f['threads']} thread(s); "
            f"to serve with that thread count "
            f"set `threads = {f['threads']}` on the model in the config"
            + (
                f" (the engine is chosen at convert time: --engine {f['engine']})"
                if f["engine"] != report["engine"]
                else ""
            )
        )
    return "\n".join(lines)
