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

__all__ = ["main", "positive_int", "positive_float", "positive_ints", "frame_size"]

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the fields a call passed in ``extra``."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        import json

        body = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        body.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def positive_ints(example: str):
    """An argparse type for comma-separated positive integers (``example`` shows the form in errors)."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers like {example}, not {text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError("every value must be at least 1")
        return values

    return parse


def frame_size(text: str) -> tuple[int, int]:
    """``WxH`` for camera frames: each side at least 16 pixels, at most 16.7 megapixels in all."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH like 640x480, not {text!r}") from None
    if w < 16 or h < 16 or w * h > 4096 * 4096:
        raise argparse.ArgumentTypeError("each side at least 16 pixels, at most 16.7 megapixels in all")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-runtime", description="MQTT streams in, ONNX inference, results out.")
    p.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one JSON object per line (for journald, Loki, ...)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return args.handler(args)
    except EdgeRuntimeError as err:
        print(f"edge-runtime: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
