"""The ``edge-runtime`` command: a thin layer over the library. Errors are one line, exit status 2.

Each package registers its own subcommands (``register(subparsers)``), so the CLI grows without one
file knowing every command. Handlers import heavy modules lazily: ``edge-runtime --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
import threading
from typing import Any

from .. import __version__
from ..errors import EdgeRuntimeError

__all__ = ["main", "build_parser", "setup_logging", "JsonFormatter", "TextFormatter"]

# Modules that provide ``register(subparsers)``; each parser sets ``handler=callable(args) -> int``.
COMMAND_MODULES = (
    "edge_runtime.cli.commands",
    "converters._cli",
    "converters._release_cli",
    "devices._cli",
    "edge_runtime.bench._cli",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the fields a call passed in ``extra``."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        import json

        body = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


# C0 and C1 controls, DEL, and Unicode's line and paragraph separators: what can end a line or drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """One line per record, for people: time, level, logger, message.

    Messages quote what came from the network (topics with ``%r``), and this is the second line of defence:
    control characters left in a message are escaped (``\\n``, ``\\x1b``), so no topic, id or detail can
    forge a log line or drive the terminal. A traceback follows with each of its lines indented and escaped
    the same way, so none of them can pass for a record either.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + _escape(line) for line in text.split("\n"))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-runtime", description="MQTT streams in, ONNX inference, results out.")
    p.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line (for journald, Loki, ...)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    # SIGTERM (systemd, a supervisor, a test) is Ctrl-C for every command that does not handle it itself
    # (run, broker and the simulators do): their ``finally`` blocks then stop the brokers and runtimes they
    # started, instead of the process dying and leaving those to init.
    previous = None
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.handler(args)
    except EdgeRuntimeError as err:
        print(f"edge-runtime: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
