"""argparse types shared by every package's subcommands: each names the form it expects in its error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["positive_int", "positive_float", "positive_ints", "frame_size"]


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
