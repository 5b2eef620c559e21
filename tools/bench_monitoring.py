"""What monitoring costs the serving loop, against the loop's own work in the same run (a development tool).

    python tools/bench_monitoring.py [--rounds 7]

For batches of 32 rows of 16 features (the vibration spectra) and a 20-tree forest, it times, interleaved
round by round, the loop-side calls of monitoring (``DriftMonitor.observe``, ``ShadowRunner.offer`` at 10%,
``CaptureWriter.offer`` at 1%) against (a) a bare ``session.run`` on the same batch and (b) the loop's CPU
work for the batch without MQTT: decode 32 JSON payloads, stack, run, results, encode 32 result bodies.
(b) is what a batch costs the loop before any socket work, so observe / (b) bounds the throughput cost from
above; the README's `bench e2e` figures (about 140 us per row) include the broker round trip as well.
Reported: the ratio of the best rounds (the least disturbed on a shared machine) and the median of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import orjson

from converters import write_estimator_bundle
from devices.sensors import vibration_dataset
from edge_runtime.engines import Engine
from edge_runtime.monitoring import CaptureWriter, DriftMonitor, ShadowRunner
from edge_runtime.tasks.codecs import encode


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    args = p.parse_args()

    from sklearn.ensemble import RandomForestClassifier

    X, y = vibration_dataset(4000, seed=0)
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    model = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(X[:3000], y[:3000])
    bundle = write_estimator_bundle(model, work / "forest", name="forest", reference=X[:3000])
    engine = Engine(bundle)
    manifest, task = engine.manifest, engine.task
    decoder = task.decoder(manifest, max_bytes=1_000_000)
    rows = X[3000:3032]
    payloads = [orjson.dumps({"id": i, "values": r.tolist()}) for i, r in enumerate(rows)]
    outputs = engine.run(rows)
    results = task.results(manifest, outputs, [None] * 32)

    session, name = engine.session, engine.input_name

    def bare_run() -> None:
        session.run(None, {name: rows})

    def loop_batch() -> None:  # the loop's CPU work for one batch, without MQTT
        decoded = [decoder.decode(p) for p in payloads]
        batch = np.stack([r for _, r, _ in decoded])
        out = engine.run(batch)
        for (i, _, _), res in zip(decoded, task.results(manifest, out, [m for _, _, m in decoded])):
            encode({"id": i, "model": manifest.name, "version": manifest.version, **res})

    def measure(label: str, fn) -> None:
        """``fn`` against both baselines, interleaved round by round (the machine's load moves)."""
        for f in (bare_run, loop_batch, fn):  # warm up (and fill the drift window)
            _time(f, 200)
        rows_us: dict[str, list[float]] = {"session.run": [], "loop batch": [], label: []}
        ratios: dict[str, list[float]] = {"session.run": [], "loop batch": []}
        for _ in range(args.rounds):
            base = {"session.run": _time(bare_run, args.calls), "loop batch": _time(loop_batch, args.calls // 4)}
            t = _time(fn, args.calls)
            rows_us[label].append(t / 32 * 1e6)
            for b, tb in base.items():
                rows_us[b].append(tb / 32 * 1e6)
                ratios[b].append(t / tb)
        print(f"{label}: " + ", ".join(f"{k} {min(v):.2f}" for k, v in rows_us.items()) + " us per row (best round)")
        for b, v in ratios.items():
            best = min(rows_us[label]) / min(rows_us[b])
            print(
                f"  {label} / {b:12} best rounds {best:6.3f}, median of ratios {statistics.median(v):6.3f} "
                f"(rounds: {min(v):.3f}..{max(v):.3f})"
            )

    print(f"batches of 32 rows x 16 features, 20-tree forest; medians of {args.rounds} rounds")
    monitor = DriftMonitor(manifest.model_extra["reference"], window=1000)
    measure("observe", lambda: monitor.observe(rows, outputs))
    # The shadow's own thread runs the model on what it takes: it competes for the cores, as it would in service.
    shadow = ShadowRunner(
        lambda r, m: task.results(manifest, engine.run(r), m), model="forest", fraction=0.1, max_queue=100_000
    )
    measure("shadow.offer (10%)", lambda: shadow.offer(rows, results))
    shadow.close()
    capture = CaptureWriter(work / "capture", max_mb=50, fraction=0.01)
    measure("capture.offer (1%)", lambda: capture.offer(rows, results))
    capture.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
