"""Zones (named polygons) and counting lines, in pixels or relative (0..1) coordinates.

Where an object *is* is one point of its box, the ``anchor``: by default the bottom centre, where it
touches the ground (Frigate does the same), so a person whose head overlaps a driveway zone drawn on the
ground is not "in" it; ``center`` suits top-down views and objects that do not stand on the floor.
Relative coordinates are resolved against each frame's size, so a zone survives a change of resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["Anchor", "BoxLike", "Direction", "anchor_point", "point_in_polygon", "orient_line", "Zone", "Line"]

Anchor = Literal["bottom_center", "center"]
Direction = Literal["left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"]
BoxLike = Sequence[float] | NDArray[np.float64]  # x1, y1, x2, y2


def anchor_point(box: BoxLike, anchor: Anchor = "bottom_center") -> tuple[float, float]:
    x1, y1, x2, y2 = box[:4]
    return (x1 + x2) / 2, (y2 if anchor == "bottom_center" else (y1 + y2) / 2)


def point_in_polygon(x: float, y: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Even-odd rule (ray casting); a point exactly on an edge may fall either side."""
    inside = False
    n = len(polygon)
    j = n - 1
    for i in range(n):
        xi, yi = polygon[i]
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def _scale(points: Iterable[Sequence[float]], relative: bool, width: float, height: float) -> list[tuple[float, float]]:
    return [(p[0] * width, p[1] * height) if relative else (float(p[0]), float(p[1])) for p in points]


class Zone:
    """A named polygon; ``contains(box, width, height)`` tests the box's anchor point."""

    def __init__(
        self,
        name: str,
        points: Sequence[Sequence[float]],
        *,
        relative: bool = True,
        anchor: Anchor = "bottom_center",
        labels: Iterable[str] | None = None,
        inertia: int = 1,
    ):
        if len(points) < 3:
            raise ValueError(f"zone {name!r} needs at least 3 points")
        if inertia < 1:
            raise ValueError("inertia is at least 1 frame")
        self.name, self.points, self.relative, self.anchor = name, [tuple(p) for p in points], relative, anchor
        self.labels = None if labels is None else frozenset(str(v) for v in labels)
        self.inertia = inertia
        self._cache: tuple[tuple[float, float], list[tuple[float, float]]] | None = None

    def polygon(self, width: float, height: float) -> list[tuple[float, float]]:
        if self._cache is None or self._cache[0] != (width, height):
            self._cache = ((width, height), _scale(self.points, self.relative, width, height))
        return self._cache[1]

    def counts(self, label: object) -> bool:
        return self.labels is None or str(label) in self.labels

    def contains(self, box: BoxLike, width: float, height: float) -> bool:
        return point_in_polygon(*anchor_point(box, self.anchor), self.polygon(width, height))


def _side(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def orient_line(points: Sequence[Sequence[float]], direction: Direction) -> list[tuple[float, float]]:
    """The line's two points in the order whose forward crossing (see ``Line``) goes ``direction`` across the
    frame. Left and right are the sides a horizontal line through the frame meets first from its left and
    right edges, top and bottom likewise for a vertical one: on a slanted line both pairs exist (on a
    diagonal from top left to bottom right, left_to_right is also bottom_to_top). ValueError for sides a
    line does not have: left and right of a horizontal line, top and bottom of a vertical one."""
    a, b = (float(points[0][0]), float(points[0][1])), (float(points[1][0]), float(points[1][1]))
    if direction in ("left_to_right", "right_to_left"):
        if a[1] == b[1]:
            raise ValueError(
                f'a horizontal line has no left or right side: in_direction "{direction}" never happens; '
                'use "top_to_bottom" or "bottom_to_top"'
            )
        keep = (b[1] < a[1]) == (direction == "left_to_right")  # drawn upwards, its right is the frame's
    elif direction in ("top_to_bottom", "bottom_to_top"):
        if a[0] == b[0]:
            raise ValueError(
                f'a vertical line has no top or bottom side: in_direction "{direction}" never happens; '
                'use "left_to_right" or "right_to_left"'
            )
        keep = (b[0] > a[0]) == (direction == "top_to_bottom")  # drawn rightwards, its right is below it
    else:
        raise ValueError(f"unknown direction {direction!r}")
    return [a, b] if keep else [b, a]


class Line:
    """A directed counting line from its first point to its second.

    Crossing it from the left to the right (as seen walking from the first point to the second, in image
    coordinates with y down: for a line drawn left to right, from above it to below it) is ``forward``;
    the other way is ``backward``. ``in_direction`` orders the two points so that forward is that
    direction across the frame instead (``orient_line``). Only a crossing within the segment counts (the
    anchor's path from one frame to the next must intersect it).
    """

    def __init__(
        self,
        name: str,
        points: Sequence[Sequence[float]],
        *,
        relative: bool = True,
        anchor: Anchor = "bottom_center",
        labels: Iterable[str] | None = None,
        forward: str = "in",
        backward: str = "out",
        in_direction: Direction | None = None,
    ):
        if len(points) != 2:
            raise ValueError(f"line {name!r} needs exactly 2 points")
        if tuple(points[0]) == tuple(points[1]):
            raise ValueError(f"line {name!r} has two equal points")
        ordered = [tuple(p) for p in points] if in_direction is None else orient_line(points, in_direction)
        self.name, self.points, self.relative, self.anchor = name, ordered, relative, anchor
        self.labels = None if labels is None else frozenset(str(v) for v in labels)
        self.forward, self.backward = forward, backward

    def counts(self, label: object) -> bool:
        return self.labels is None or str(label) in self.labels

    def crossing(self, before: BoxLike, after: BoxLike, width: float, height: float) -> str | None:
        """``forward``, ``backward`` or None for an anchor that moved from box ``before`` to box ``after``."""
        a, b = _scale(self.points, self.relative, width, height)
        p, q = anchor_point(before, self.anchor), anchor_point(after, self.anchor)
        s1, s2 = _side(a, b, p) > 0, _side(a, b, q) > 0  # a point on the line is on the backward side
        if s1 == s2:
            return None
        # The path p->q must cross the segment a->b, not the line's extension.
        t1, t2 = _side(p, q, a), _side(p, q, b)
        if t1 != 0 and t2 != 0 and (t1 > 0) == (t2 > 0):
            return None
        return self.forward if s2 else self.backward
