"""``edge-runtime simulate ...``."""

from __future__ import annotations

import argparse

from edge_runtime.cli import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("simulate", help="simulated devices that publish to a broker")
    simsub = sim.add_subparsers(dest="what", required=True, metavar="KIND")
    sens = simsub.add_parser("sensors", help="vibration/temperature sensors on sensors/<device>/<kind>")
    sens.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    sens.add_argument("--devices", type=positive_int, default=3)
    sens.add_argument("--rate", type=positive_float, default=10.0, help="readings per second per device")
    sens.add_argument("--duration", type=positive_float, default=None, help="seconds (default: until Ctrl-C)")
    sens.add_argument("--qos", type=int, choices=[0, 1, 2], default=0)
    sens.add_argument("--seed", type=int, default=0)
    sens.set_defaults(handler=_sensors)


def _sensors(args: argparse.Namespace) -> int:
    from .simulate import simulate_sensors

    return simulate_sensors(args.broker, devices=args.devices, rate=args.rate, duration=args.duration,
                            qos=args.qos, seed=args.seed)
