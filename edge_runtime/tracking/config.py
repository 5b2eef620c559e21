"""Config for tracking, zones, counting lines and event topics: the keys a detector route takes.

```toml
[[routes]]
source = "rtsp://cam.local:554/stream1"
model = "detector"
publish = "results/{1}/detections"
track = true
events = "events/{1}"                          # {1}: the source's name
occupancy = "events/{1}/zones/{zone}"          # retained, on change
[routes.tracker]
end_after_s = 3
[[routes.zones]]
name = "driveway"
points = [[0.1, 0.55], [0.9, 0.55], [0.9, 1.0], [0.1, 1.0]]   # relative (0..1) unless units = "pixels"
[[routes.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 1.0]]
in_direction = "left_to_right"                  # crossing left to right is "in" (forward), the other way "out"
```
The lead adds these fields to RouteConfig (``TrackingConfig`` holds them; ``build`` makes the generator).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .events import ObjectEvents
from .geometry import Direction, Line, Zone, orient_line
from .tracker import Tracker

__all__ = ["TrackerConfig", "ZoneConfig", "LineConfig", "TrackingConfig", "render_topic"]

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Point = Annotated[list[float], Field(min_length=2, max_length=2)]  # [x, y]; a list: TOML has no tuples


class TrackerConfig(_Strict):
    high_score: float = Field(0.5, ge=0, le=1, description="Detections at least this confident are matched first.")
    low_score: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Detections below high_score but at least this keep existing tracks alive, lost ones "
        "too (ByteTrack's second pass: a partly hidden object), and may start a new one; lower ones are "
        "ignored. Not above high_score.",
    )
    new_track_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="A new object needs min_hits detections in a row whose scores add up to min_hits times "
        "this (with 0.5: two detections at 0.5, three at 0.35 or four at 0.25). Not below high_score; "
        "default: high_score.",
    )
    match_iou: float = Field(
        0.3, gt=0, le=1, description="Least IoU of predicted and detected box to match (first pass)."
    )
    low_match_iou: float = Field(0.4, gt=0, le=1, description="Least IoU for low-score detections (second pass).")
    max_speed: float = Field(
        4.0,
        gt=0,
        le=100,
        description="How fast a new object may move, in its own box widths (sideways) or heights (up and "
        "down) per second: a track seen once has no velocity yet, so its next detection is the nearest one "
        "of a similar size within this reach. 4 covers people and town traffic (a car at 50 km/h moves about "
        "3 of its lengths a second); raise it for faster objects.",
    )
    min_hits: int = Field(
        2,
        ge=1,
        le=100,
        description="Consecutive frames with a detection before an object is 'new' (see new_track_score).",
    )
    end_after_s: float = Field(2.0, ge=0, le=3600, description="An object not seen for this long ends ('end' event).")
    class_aware: bool = Field(
        False,
        description="Match only detections of the track's label (off: a detector that "
        "flips between classes keeps one id; the label is the one seen most).",
    )
    merge_iou: float | None = Field(
        0.6,
        gt=0,
        le=1,
        description="Detections of different labels overlapping this much are one object (per-class "
        "NMS reports some objects twice); the most confident is kept. Ignored with class_aware.",
    )
    max_tracks: int = Field(
        256, ge=1, le=100_000, description="Objects tracked at once per source; more are counted and ignored."
    )

    @model_validator(mode="after")
    def _order(self) -> TrackerConfig:
        if self.low_score > self.high_score:
            raise ValueError("low_score must not be above high_score")
        if self.new_track_score is not None and self.new_track_score < self.high_score:
            raise ValueError("new_track_score must not be below high_score")
        return self

    def build(self) -> Tracker:
        return Tracker(
            high_score=self.high_score,
            low_score=self.low_score,
            new_track_score=self.new_track_score,
            match_iou=self.match_iou,
            low_match_iou=self.low_match_iou,
            min_hits=self.min_hits,
            lost_after_s=self.end_after_s,
            class_aware=self.class_aware,
            merge_iou=None if self.class_aware else self.merge_iou,
            max_tracks=self.max_tracks,
            max_speed=self.max_speed,
        )


class _Shape(_Strict):
    name: str = Field(pattern=_NAME, description="Name used in events, topics ({zone}/{line}) and Home Assistant.")
    units: Literal["relative", "pixels"] = Field(
        "relative",
        description="relative: x and y from 0 to 1 of the frame's width and height; pixels: frame pixels "
        "(not negative).",
    )
    anchor: Literal["bottom_center", "center"] = Field(
        "bottom_center",
        description="The point of a box that must be inside: bottom_center (where it stands) or center.",
    )
    labels: list[str] | None = Field(None, min_length=1, description="Only objects with these labels; default: all.")
    points: list[Point] = Field(description="The shape's points [[x, y], ...].")  # each kind of shape says how many

    @model_validator(mode="after")
    def _relative_range(self) -> _Shape:
        points = self.points
        if self.units == "relative" and any(not (0 <= v <= 1) for p in points for v in p):
            raise ValueError('relative coordinates are between 0 and 1 (or set units = "pixels")')
        if self.units == "pixels" and any(v < 0 for p in points for v in p):
            raise ValueError("pixel coordinates are not negative")
        return self


class ZoneConfig(_Shape):
    points: list[Point] = Field(min_length=3, max_length=64, description="Polygon corners [[x, y], ...], in order.")
    inertia: int = Field(
        2,
        ge=1,
        le=100,
        description="Frames an object must be in (or out of) the zone before it counts as entered (left).",
    )

    def build(self) -> Zone:
        return Zone(
            self.name,
            self.points,
            relative=self.units == "relative",
            anchor=self.anchor,
            labels=self.labels,
            inertia=self.inertia,
        )


class LineConfig(_Shape):
    points: list[Point] = Field(
        min_length=2, max_length=2, description="The line's two ends [[x1, y1], [x2, y2]]; they must differ."
    )
    in_direction: Direction | None = Field(
        None,
        description="Which way across the frame counts as forward (named in by default): left_to_right, "
        "right_to_left, top_to_bottom or bottom_to_top (see the picture below this table). Not set: forward "
        "is a crossing from the left to the right of the line as seen walking from its first point to its "
        "second, y pointing down (for [[0.5, 0.0], [0.5, 1.0]]: right to left).",
    )
    forward: str = Field(
        "in",
        pattern=_NAME,
        description="Name of a crossing in_direction (without it: from the left to the right of first->second point).",
    )
    backward: str = Field("out", pattern=_NAME, description="Name of a crossing the other way; not forward's.")

    @model_validator(mode="after")
    def _distinct(self) -> LineConfig:
        if tuple(self.points[0]) == tuple(self.points[1]):
            raise ValueError("a line's two points must differ")
        if self.forward == self.backward:
            raise ValueError("forward and backward need different names")
        if self.in_direction is not None:
            orient_line(self.points, self.in_direction)  # a horizontal line has no left_to_right: say so now
        return self

    def build(self) -> Line:
        return Line(
            self.name,
            self.points,
            relative=self.units == "relative",
            anchor=self.anchor,
            labels=self.labels,
            forward=self.forward,
            backward=self.backward,
            in_direction=self.in_direction,
        )


def _check_template(value: str, allowed: set[str], key: str) -> str:
    if not value or any(c in value for c in "+#"):
        raise ValueError(f"{key} is a topic without wildcards")
    bad = [p for p in _PLACEHOLDER.findall(value) if p not in allowed]
    if bad:
        raise ValueError(f"{key} may use {', '.join('{' + a + '}' for a in sorted(allowed))}, not {{{bad[0]}}}")
    return value


class TrackingConfig(_Strict):
    track: bool = Field(
        False, description="Track detections across frames and publish object events (detector routes)."
    )
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="How detections become objects.")
    zones: list[ZoneConfig] = Field(
        default_factory=list,
        max_length=64,
        description="Areas of the frame: objects' events say which zones they are in, and each zone's occupancy "
        "is published. Zones need track = true; their names are unique per route.",
    )
    lines: list[LineConfig] = Field(
        default_factory=list,
        max_length=64,
        description="Counting lines: crossings are reported in the objects' events and counted per direction. "
        "Lines need track = true; their names are unique per route.",
    )
    events: str = Field("events/{1}", description="Topic of the object events; {1} (or {source}): the source's name.")
    occupancy: str | None = Field(
        "events/{1}/zones/{zone}",
        description="Topic of each zone's object counts, retained, published on change; needs {zone} "
        "(the zone's name); {1} or {source}: the source's name.",
    )
    counts: str | None = Field(
        "events/{1}/lines/{line}",
        description="Topic of each line's crossing counts, retained, published on change; needs {line} "
        "(the line's name); {1} or {source}: the source's name.",
    )
    update_interval_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="Besides updates on zone, line or label changes, one update at most this "
        "often while an object stays in view. Default: only on changes.",
    )

    @field_validator("events")
    @classmethod
    def _events(cls, value: str) -> str:
        return _check_template(value, {"1", "source"}, "events")

    @field_validator("occupancy")
    @classmethod
    def _occupancy(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value, {"1", "source", "zone"}, "occupancy")
            if "{zone}" not in value:
                raise ValueError("occupancy needs {zone} in the topic (one retained topic per zone)")
        return value

    @field_validator("counts")
    @classmethod
    def _counts(cls, value: str | None) -> str | None:
        if value is not None:
            _check_template(value, {"1", "source", "line"}, "counts")
            if "{line}" not in value:
                raise ValueError("counts needs {line} in the topic (one retained topic per line)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> TrackingConfig:
        for kind, items in (("zone", self.zones), ("line", self.lines)):
            names = [i.name for i in items]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"two {kind}s are named {sorted(dup)[0]!r}")
        if (self.zones or self.lines) and not self.track:
            raise ValueError("zones and lines need track = true")
        return self

    def build(self, source: str, *, id_prefix: str | None = None) -> ObjectEvents:
        return ObjectEvents(
            source=source,
            tracker=self.tracker.build(),
            zones=[z.build() for z in self.zones],
            lines=[ln.build() for ln in self.lines],
            update_interval_s=self.update_interval_s,
            id_prefix=id_prefix,
        )


def render_topic(template: str, *, source: str, zone: str | None = None, line: str | None = None) -> str:
    """A concrete topic from an events/occupancy/counts template."""
    values = {"1": source, "source": source, "zone": zone, "line": line}
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
