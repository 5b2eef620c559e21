"""``edge-runtime bench model|e2e|camera``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli.argtypes import frame_size, positive_float, positive_int, positive_ints, rate, thread_count
from ..cli.outputs import check_writable_file, write_output


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure latency and throughput against baselines in the same run")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")

    m = kinds.add_parser("model", help="the runtime core alone vs bare onnxruntime session.run")
    m.add_argument("bundle", type=Path)
    m.add_argument("--batch-sizes", type=positive_ints("1,8,32"), default=(1, 8, 32))
    m.add_argument("--threads", type=thread_count, default=1)
    m.add_argument("--duration", type=positive_float, default=3.0, help="seconds of measurement per batch size")
    m.add_argument("--json", type=Path, help="also write the report as JSON")
    m.set_defaults(handler=_model)

    e = kinds.add_parser("e2e", help="through a real broker, with an echo control and optionally the naive loop")
    e.add_argument("--config", type=Path, required=True)
    load = e.add_mutually_exclusive_group()
    load.add_argument("--rate", type=rate, help="open-loop messages per second (default 1000)")
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
    c.add_argument("--fps", type=rate, default=60.0, help="frames per second per camera")
    c.add_argument("--size", type=frame_size, default=(1280, 720), help="frame size WxH")
    c.add_argument("--duration", type=positive_float, default=10.0)
    c.add_argument("--max-queue", type=positive_int, default=500)
    c.add_argument("--json", type=Path, help="also write the report as JSON")
    c.set_defaults(handler=_camera)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print("\r" + text[:100].ljust(100), end="", file=sys.stderr, flush=True)


def _done() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before minutes of measuring: can the report (and the plot) be written where asked?"""
    if args.json:
        check_writable_file(args.json, "--json")
    if getattr(args, "plot", None):
        check_writable_file(args.plot, "--plot")


def _model(args: argparse.Namespace) -> int:
    from .model import bench_model, format_model_report

    _check_outputs(args)
    report = bench_model(
        args.bundle, batch_sizes=args.batch_sizes, threads=args.threads, duration=args.duration, progress=_progress
    )
    _done()
    print(format_model_report(report))
    if args.json:
        write_output(args.json, json.dumps(report, indent=1), "--json")
    return 0


def _e2e(args: argparse.Namespace) -> int:
    from .e2e import E2EOptions, bench_e2e, format_e2e_report, plot_e2e_report

    _check_outputs(args)
    options = E2EOptions(
        config=args.config,
        rate=args.rate,
        burst=args.burst,
        sweep=args.sweep,
        duration=args.duration,
        payload=args.payload,
        baseline=args.baseline,
        echo=args.echo,
        slo_ms=args.slo_ms,
        devices=args.devices,
        workers=args.workers,
        data=args.data,
    )
    report = bench_e2e(options, progress=_progress)
    _done()
    print(format_e2e_report(report))
    if args.plot:
        plot_e2e_report(report, args.plot)
    if args.json:
        for system in report["systems"].values():
            system.pop("_latencies", None)
        write_output(args.json, json.dumps(report, indent=1), "--json")
    return 0


def _camera(args: argparse.Namespace) -> int:
    from .camera import DEFAULT_DETECTOR, CameraBenchOptions, bench_camera, format_camera_report

    _check_outputs(args)
    w, h = args.size
    options = CameraBenchOptions(
        bundle=args.bundle or DEFAULT_DETECTOR,
        cameras=args.cameras,
        fps=args.fps,
        width=w,
        height=h,
        duration=args.duration,
        max_queue=args.max_queue,
    )
    report = bench_camera(options, progress=_progress)
    _done()
    print(format_camera_report(report))
    if args.json:
        write_output(args.json, json.dumps(report, indent=1), "--json")
    return 0
