"""Subcommands of the runtime itself: run, broker, status, demo."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .argtypes import positive_float, positive_int, rate, tcp_port
from .broker_options import add_broker_options, broker_from_args
from .outputs import check_writable_file, write_output


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="serve the routes of a config file")
    run.add_argument("config", type=Path)
    run.add_argument("--validate-config", action="store_true", help="check the config (and its bundles) and exit")
    run.add_argument("--duration", type=positive_float, help="stop after this many seconds")
    run.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="worker processes sharing each route through MQTT v5 shared subscriptions "
        "(with [metrics] prometheus_port P, worker i serves Prometheus on port P + i - 1)",
    )
    run.add_argument("--worker-index", type=positive_int, help=argparse.SUPPRESS)
    run.add_argument("--stats-json", type=Path, help="write the final per-route statistics to this file")
    run.set_defaults(handler=_run)

    brk = sub.add_parser("broker", help="run a local broker (Mosquitto if installed, else amqtt) on 127.0.0.1")
    brk.add_argument("--port", type=tcp_port, default=1883)
    brk.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto")
    brk.set_defaults(handler=_broker)

    status = sub.add_parser("status", help="live table of the runtimes on a broker (their status and metrics topics)")
    add_broker_options(status)
    status.add_argument("--duration", type=positive_float, help="stop after this many seconds (default: Ctrl-C)")
    status.set_defaults(handler=_status)

    demo = sub.add_parser("demo", help="broker + demo model + runtime + simulated sensors, with live results")
    demo.add_argument("--duration", type=positive_float, default=20.0)
    demo.add_argument("--devices", type=positive_int, default=4)
    demo.add_argument("--rate", type=rate, default=20.0, help="readings per second per device")
    demo.add_argument("--workdir", type=Path, default=Path(".edge-runtime/demo"))
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    demo.add_argument("--cameras", type=int, default=1, help="simulated cameras (0: none; needs the [camera] extra)")
    demo.add_argument("--fps", type=rate, default=4.0, help="frames per second per camera")
    demo.set_defaults(handler=_demo)


def _run(args: argparse.Namespace) -> int:
    import json

    from ..config import config_warnings, load_config
    from ..serving.runtime import Runtime
    from ..serving.workers import as_worker, check_workers, retire_sessions, run_workers

    config = load_config(args.config)
    check_workers(config, args.workers)
    if args.stats_json:
        check_writable_file(args.stats_json, "--stats-json")
    if args.workers > 1 and not args.validate_config and args.worker_index is None:
        Runtime(config)  # verify every bundle once, here, before starting processes that would all fail
        extra = ["--duration", str(args.duration)] if args.duration else []
        if args.stats_json:
            extra += ["--stats-json", str(args.stats_json)]
        return run_workers(
            args.config,
            args.workers,
            extra_args=extra,
            global_args=["--log-level", args.log_level, "--log-format", args.log_format],
        )
    stats_path = args.stats_json
    if args.worker_index is not None:
        config = as_worker(config, args.worker_index)
        if stats_path:
            stats_path = stats_path.with_name(f"{stats_path.name}.w{args.worker_index}")
    runtime = Runtime(config)  # loads and verifies every bundle: a bad one fails here, before connecting
    if args.validate_config:
        warned = len(config_warnings(config))  # each was logged, with its key and line, when the config was read
        shown = f"; {warned} warning{'s' if warned > 1 else ''} above" if warned else ""
        print(f"{args.config}: ok ({len(config.models)} models, {len(config.routes)} routes{shown})")
        return 0
    if args.worker_index is None:
        retire_sessions(config, first=1)  # sessions of workers from an earlier `run --workers N`
    runtime.run(duration=args.duration)
    stats = runtime.stats()
    routes = stats["routes"].values()
    logging.getLogger("edge_runtime").info(
        "stopped: %d received, %d results, %d errors, %d dropped",
        sum(r["received"] for r in routes),
        sum(r["results"] for r in routes),
        sum(sum(r["errors"].values()) for r in routes),
        sum(sum(r["dropped"].values()) for r in routes),
    )
    if stats_path:
        write_output(stats_path, json.dumps(stats, indent=1), "--stats-json")
    return 0


def _broker(args: argparse.Namespace) -> int:
    from ..devtools.broker import run_foreground

    return run_foreground(args.port, kind=args.kind)


def _status(args: argparse.Namespace) -> int:
    from ..observability.status import watch_status

    return watch_status(broker_from_args(args), duration=args.duration)


def _demo(args: argparse.Namespace) -> int:
    from ..devtools.demo import run_demo

    return run_demo(
        duration=args.duration,
        devices=args.devices,
        rate=args.rate,
        workdir=args.workdir,
        broker_kind=args.broker,
        cameras=args.cameras,
        fps=args.fps,
    )
