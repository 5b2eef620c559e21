"""The runtime as the bench runs it: ``Runtime(config).run()``, as ``edge-runtime run`` does, plus three
things only a benchmark needs, none of which changes what the runtime does:

- ``SIGUSR1`` writes a snapshot of every route's counters and histogram buckets to ``--marks DIR``
  (``mark-<n>.json``, renamed into place when complete) and restarts each histogram's ``max``, so the
  bench can subtract the warm-up from the runtime's own figures;
- ``--trace FILE`` records, per input, its id and the stage boundaries of its batch (arrival, decode
  start, inference start and end, published), for the CSV's per-message stages. It puts stand-ins for
  each route's decoder and engine and wraps the batch call, so it costs a little per message: off by
  default;
- ``--profile FILE`` runs the whole serve loop under cProfile (``pstats`` file).

The signal handler runs in the main thread between two bytecodes of the serve loop, so a snapshot never
sees half of a counter update.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import orjson

__all__ = ["main", "snapshot"]

log = logging.getLogger("edge_runtime.bench")


def _histogram(h) -> dict:
    return {"counts": list(h.counts), "total": h.total, "sum": h.sum, "max": h.max}


def snapshot(runtime) -> dict:
    """Every route's counters and raw histograms (bucket counts), and the link's counters."""
    snap = runtime.snapshot()
    routes = {}
    for r in snap.routes:
        s = r.stats
        routes[r.name] = {
            "received": s.received,
            "results": s.results,
            "errors": dict(s.errors),
            "dropped": dict(s.dropped),
            "batches": s.batches,
            "batch_sizes": {str(k): v for k, v in s.batch_sizes.items()},
            "latency": _histogram(s.latency),
            "stages": {name: _histogram(h) for name, h in s.stages.items()},
            "queue": {"depth": r.queue_depth, "high_water": r.queue_high_water},
        }
    return {"t": time.monotonic(), "routes": routes, "link": dict(snap.link)}


class _Tracer:
    """Per-input stage boundaries, from the runtime's batch observer hook (ServedBatch)."""

    def __init__(self, runtime) -> None:
        self.rows: list[tuple] = []
        for route in runtime.routes:
            route.observers.append(self)

    def observe(self, batch) -> None:
        for msg_id, arrived in zip(batch.ids, batch.arrived):
            if msg_id is not None:
                self.rows.append(
                    (msg_id, arrived, batch.t_started, batch.t_decoded, batch.t_inferred, batch.t_published)
                )

    def tick(self, now: float) -> None:
        return None

    def snapshot(self) -> dict:
        return {}

    def close(self) -> None:
        return None

    def save(self, path: Path) -> None:
        ids, times = [], []
        for msg_id, *t in self.rows:
            try:
                ids.append(int(msg_id))
            except (TypeError, ValueError):
                continue
            times.append(t)
        np.save(path, np.column_stack([np.asarray(ids, dtype=float), np.asarray(times, dtype=float).reshape(-1, 5)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_runtime.bench.host")
    p.add_argument("config", type=Path)
    p.add_argument("--worker-index", type=int, help="run as worker N of a shared-subscription group")
    p.add_argument("--marks", type=Path, required=True, help="directory for SIGUSR1 snapshots")
    p.add_argument("--trace", type=Path, help="write per-input stage boundaries here (.npy)")
    p.add_argument("--profile", type=Path, help="write a cProfile of the serve loop here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from ..config import load_config
    from ..serving.runtime import Runtime
    from ..serving.workers import as_worker

    config = load_config(args.config)
    if args.worker_index is not None:
        config = as_worker(config, args.worker_index)
    runtime = Runtime(config)
    tracer = None
    if args.trace:
        try:
            tracer = _Tracer(runtime)
        except AttributeError as err:  # the serve loop changed shape: run untraced rather than not at all
            log.warning("per-message trace unavailable: %s", err)
    args.marks.mkdir(parents=True, exist_ok=True)
    # The bench signals and measures this process by this id, even when a profiler started it.
    (args.marks / "pid").write_text(str(os.getpid()))
    marks = 0

    def mark(*_):
        nonlocal marks
        marks += 1
        snap = snapshot(runtime)
        for r in runtime.routes:  # so that the next snapshot's max is the max since this one
            r.stats.latency.max = 0.0
            for h in r.stats.stages.values():
                h.max = 0.0
        tmp = args.marks / f".mark-{marks}.json"
        tmp.write_bytes(orjson.dumps(snap))
        os.replace(tmp, args.marks / f"mark-{marks}.json")

    signal.signal(signal.SIGUSR1, mark)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        runtime.run()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(args.profile))
        if tracer is not None:
            tracer.save(args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
