"""argparse types shared by every package's subcommands: each names the form it expects in its error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = [
    "positive_int",
    "positive_float",
    "positive_ints",
    "frame_size",
    "tcp_port",
    "listen_port",
    "thread_count",
    "thread_counts",
    "rate",
]


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


def positive_ints(example: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for comma-separated positive integers (``example`` shows the form in errors)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers like {example}, not {text!r}"
            ) from None
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


def tcp_port(text: str) -> int:
    """A TCP port to listen on: 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {value}")
    return value


def thread_count(text: str) -> int:
    """ONNX Runtime threads: 1 to 64 (what a [[models]] threads accepts; more would only thrash a small board)."""
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"at most 64 threads, not {value}")
    return value


def thread_counts(text: str) -> tuple[int, ...]:
    """Comma-separated thread counts, each 1 to 64 (as ``thread_count``)."""
    values = positive_ints("1,2")(text)
    for value in values:
        thread_count(str(value))
    return values


def rate(text: str) -> float:
    """A rate in Hz (messages or frames per second): 0.001 to 1,000,000, so that intervals stay computable."""
    value = positive_float(text)
    if not 0.001 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"a rate is 0.001 to 1000000 per second, not {text}")
    return value


def listen_port(text: str) -> int:
    """A port for a local server to listen on: 0 (any free port, printed) to 65535."""
    return 0 if text.strip() == "0" else tcp_port(text)
