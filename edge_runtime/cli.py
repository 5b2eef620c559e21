"""The ``edge-runtime`` command: a thin layer over the library. Errors are one line, exit status 2.

Each package registers its own subcommands (``register(subparsers)``), so the CLI grows without one
file knowing every command. Handlers import heavy modules lazily: ``edge-runtime --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import EdgeRuntimeError

__all__ = ["main", "positive_int", "positive_float"]

# Modules that provide ``register(subparsers)``; each parser sets ``handler=callable(args) -> int``.
COMMAND_MODULES = (
    "edge_runtime._commands",
    "converters._cli",
    "devices._cli",
    "edge_runtime.bench._cli",
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-runtime", description="MQTT streams in, ONNX inference, results out.")
    p.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except EdgeRuntimeError as err:
        print(f"edge-runtime: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
