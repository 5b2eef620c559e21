"""Subcommands of the runtime itself: run, broker, demo."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .cli import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="serve the routes of a config file")
    run.add_argument("config", type=Path)
    run.add_argument("--validate-config", action="store_true", help="check the config (and its bundles) and exit")
    run.add_argument("--duration", type=positive_float, help="stop after this many seconds")
    run.set_defaults(handler=_run)

    brk = sub.add_parser("broker", help="run a local broker (Mosquitto if installed, else amqtt) on 127.0.0.1")
    brk.add_argument("--port", type=positive_int, default=1883)
    brk.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto")
    brk.set_defaults(handler=_broker)

    demo = sub.add_parser("demo", help="broker + demo model + runtime + simulated sensors, with live results")
    demo.add_argument("--duration", type=positive_float, default=20.0)
    demo.add_argument("--devices", type=positive_int, default=4)
    demo.add_argument("--rate", type=positive_float, default=20.0, help="readings per second per device")
    demo.add_argument("--workdir", type=Path, default=Path(".edge-runtime/demo"))
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    demo.set_defaults(handler=_demo)


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import Runtime

    config = load_config(args.config)
    runtime = Runtime(config)  # loads and verifies every bundle: a bad one fails here, before connecting
    if args.validate_config:
        print(f"{args.config}: ok ({len(config.models)} models, {len(config.routes)} routes)")
        return 0
    runtime.run(duration=args.duration)
    logging.getLogger("edge_runtime").info("stopped; %s", runtime.stats())
    return 0


def _broker(args: argparse.Namespace) -> int:
    from .broker import run_foreground

    return run_foreground(args.port, kind=args.kind)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, devices=args.devices, rate=args.rate, workdir=args.workdir,
                    broker_kind=args.broker)
