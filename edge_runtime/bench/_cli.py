"""``edge-runtime bench model|e2e|camera``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import frame_size, positive_float, positive_int, positive_ints


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure latency and throughput against baselines in the same run")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")

    m = kinds.add_parser("model", help="the runtime core alone vs bare onnxruntime session.run")
    m.add_argument("bundle", type=Path)
    m.add_argument("--batch-sizes", type=positive_ints("1,8,32"), default=(1, 8, 32))
    m.add_argument("--threads", type=positive_ints("1,2"),
                   help="intra-op thread counts to measure (default: 1 up to this machine's cores)")
    m.add_argument("--engines", help="comma-separated engines to measure (default: every installed one: onnxruntime, openvino)")
    m.add_argument("--duration", type=positive_float, default=3.0, help="seconds of measurement per batch size")
    m.add_argument("--json", type=Path, help="also write the report as JSON")
    m.set_defaults(handler=_model)

    e = kinds.add_parser("e2e", help="through a real broker, with an echo control and optionally the naive loop")
    e.add_argument("--config", type=Path, required=True)
    load = e.add_mutually_exclusive_group()
    load.add_argument("--rate", type=positive_float, help="open-loop messages per second (default 1000)")
    load.add_argument("--burst", type=positive_int, help="send this many messages at full speed")
    load.add_argument("--sweep", action="store_true", help="find the highest rate with p99 under --slo-ms, none lost")
    e.add_argument("--duration", type=positive_float, default=10.0)
    e.add_argument("--payload", choices=["json", "npy"], default="json")
    e.add_argument("--baseline", choices=["naive"], help="also run the naive paho loop on the same workload")
    e.add_argument("--no-echo", dest="echo", action="store_false", help="skip the echo control")
    e.add_argument("--slo-ms", type=positive_float, default=50.0)
    e.add_argument("--devices", type=positive_int, default=8, help="distinct input topics the load is spread over")
    e.add_argument("--workers", type=positive_int, default=1, help="run the runtime with --workers N")
    e.add_argument("--data", type=Path, help=".npy rows to send (default: random rows of the model's shape)")
    e.add_argument("--json", type=Path, help="also write the report as JSON")
    e.add_argument("--plot", type=Path, help="latency CDF (or the rate sweep) as a PNG")
    e.set_defaults(handler=_e2e)

    c = kinds.add_parser("camera", help="frame freshness under overload: latest_only vs drop_oldest")
    c.add_argument("--bundle", type=Path, help="image model bundle (default: the demo detector)")
    c.add_argument("--cameras", type=positive_int, default=4)
    c.add_argument("--fps", type=positive_float, default=60.0, help="frames per second per camera")
    c.add_argument("--size", type=frame_size, default=(1280, 720), help="frame size WxH")
    c.add_argument("--duration", type=positive_float, default=10.0)
    c.add_argument("--max-queue", type=positive_int, default=500)
    c.add_argument("--threads", type=positive_int,
                   help="the model's threads in the runtime's config (default: what the bundle measured)")
    c.add_argument("--policies", default="drop_oldest,latest_only",
                   help="overflow policies to run, comma-separated (drop_oldest, latest_only)")
    c.add_argument("--no-stages", dest="stages", action="store_false",
                   help="skip the bare-engine and per-stage measurement on the same frames")
    c.add_argument("--json", type=Path, help="also write the report as JSON")
    c.set_defaults(handler=_camera)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print("\r" + text[:100].ljust(100), end="", file=sys.stderr, flush=True)


def _done() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)


def _model(args: argparse.Namespace) -> int:
    from .model import bench_model, format_model_report

    from ..engines import get_engine_kind
    from ..errors import EdgeRuntimeError

    engines = tuple(e.strip() for e in args.engines.split(",")) if args.engines else None
    for name in engines or ():
        try:
            if not get_engine_kind(name).available():
                raise EdgeRuntimeError(f"--engines: {name} is not installed: {get_engine_kind(name).install_hint}")
        except LookupError as err:
            raise EdgeRuntimeError(f"--engines: {err}") from None
    report = bench_model(args.bundle, batch_sizes=args.batch_sizes, threads=args.threads, engines=engines,
                         duration=args.duration, progress=_progress)
    _done()
    print(format_model_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _e2e(args: argparse.Namespace) -> int:
    from .e2e import E2EOptions, bench_e2e, format_e2e_report, plot_e2e_report

    options = E2EOptions(config=args.config, rate=args.rate, burst=args.burst, sweep=args.sweep,
                         duration=args.duration, payload=args.payload, baseline=args.baseline, echo=args.echo,
                         slo_ms=args.slo_ms, devices=args.devices, workers=args.workers, data=args.data)
    report = bench_e2e(options, progress=_progress)
    _done()
    print(format_e2e_report(report))
    if args.plot:
        plot_e2e_report(report, args.plot)
    if args.json:
        for system in report["systems"].values():
            system.pop("_latencies", None)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _camera(args: argparse.Namespace) -> int:
    from .camera import DEFAULT_DETECTOR, CameraBenchOptions, bench_camera, format_camera_report

    w, h = args.size
    from ..errors import EdgeRuntimeError

    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not policies or set(policies) - {"drop_oldest", "latest_only"}:
        raise EdgeRuntimeError(f"--policies {args.policies!r}: choose from drop_oldest, latest_only")
    options = CameraBenchOptions(bundle=args.bundle or DEFAULT_DETECTOR, cameras=args.cameras, fps=args.fps, width=w,
                                 height=h, duration=args.duration, max_queue=args.max_queue, threads=args.threads,
                                 policies=policies, stages=args.stages)
    report = bench_camera(options, progress=_progress)
    _done()
    print(format_camera_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0
