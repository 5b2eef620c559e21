"""The ``edge-runtime`` command: a thin layer over the library. Errors are one line, exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import EdgeRuntimeError

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-runtime", description="MQTT streams in, ONNX inference, results out.")
    p.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve the routes of a config file")
    run.add_argument("config", type=Path)
    run.add_argument("--validate-config", action="store_true", help="check the config (and its bundles) and exit")
    run.add_argument("--duration", type=_positive_float, help="stop after this many seconds")

    conv = sub.add_parser("convert", help="turn a trained model into a bundle")
    conv.add_argument("source", type=Path, help="model file: .pkl/.joblib (scikit-learn; trusted sources only)")
    conv.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to write")
    conv.add_argument("--name", help="model name (default: the file's stem)")
    conv.add_argument("--model-version", default="1", help="version recorded in the manifest")

    sim = sub.add_parser("simulate", help="simulated devices that publish to a broker")
    simsub = sim.add_subparsers(dest="what", required=True, metavar="KIND")
    sens = simsub.add_parser("sensors", help="vibration/temperature sensors on sensors/<device>/<kind>")
    sens.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    sens.add_argument("--devices", type=_positive_int, default=3)
    sens.add_argument("--rate", type=_positive_float, default=10.0, help="readings per second per device")
    sens.add_argument("--duration", type=_positive_float, default=None, help="seconds (default: until Ctrl-C)")
    sens.add_argument("--qos", type=int, choices=[0, 1, 2], default=0)
    sens.add_argument("--seed", type=int, default=0)

    brk = sub.add_parser("broker", help="run a local broker (Mosquitto if installed, else amqtt) on 127.0.0.1")
    brk.add_argument("--port", type=_positive_int, default=1883)
    brk.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto")

    demo = sub.add_parser("demo", help="broker + demo model + runtime + simulated sensors, with live results")
    demo.add_argument("--duration", type=_positive_float, default=20.0)
    demo.add_argument("--devices", type=_positive_int, default=4)
    demo.add_argument("--rate", type=_positive_float, default=20.0, help="readings per second per device")
    demo.add_argument("--workdir", type=Path, default=Path(".edge-runtime/demo"))
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except EdgeRuntimeError as err:
        print(f"edge-runtime: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
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
    if args.command == "convert":
        from converters import convert

        bundle = convert(args.source, args.output, name=args.name, version=args.model_version)
        m = bundle.manifest
        print(f"wrote {bundle.path}: {m.name} v{m.version} ({m.task}, input {m.inputs[0].shape}, sha256 {m.sha256[:12]})")
        return 0
    if args.command == "simulate":
        from devices.simulate import simulate_sensors

        return simulate_sensors(args.broker, devices=args.devices, rate=args.rate, duration=args.duration,
                                qos=args.qos, seed=args.seed)
    if args.command == "broker":
        from .broker import run_foreground

        return run_foreground(args.port, kind=args.kind)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(duration=args.duration, devices=args.devices, rate=args.rate, workdir=args.workdir,
                        broker_kind=args.broker)
    raise AssertionError(args.command)
