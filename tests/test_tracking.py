"""Tracking, zones, lines and object events: unit checks, then whole videos with known object tracks (read
back through a real VideoSource), with noisy ground-truth detections and with the demo detector."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.tracking import (
    Line,
    LineConfig,
    ObjectEvents,
    Tracker,
    TrackingConfig,
    Zone,
    ZoneConfig,
    iou_matrix,
    point_in_polygon,
    render_topic,
)

ROOT = Path(__file__).resolve().parents[1]


def _det(box, label="circle", score=0.9):
    return {"box": [float(v) for v in box], "label": label, "score": score}


def _result(dets, w=320, h=240):
    return {"detections": dets, "frame": {"width": w, "height": h}}


# --- geometry ---------------------------------------------------------------------------------------------
def test_iou_and_point_in_polygon():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    b = np.array([[5, 0, 15, 10]], float)
    assert iou_matrix(a, b)[:, 0] == pytest.approx([50 / 150, 0.0])
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert point_in_polygon(5, 5, square) and not point_in_polygon(15, 5, square)
    concave = [(0, 0), (10, 0), (10, 10), (5, 5), (0, 10)]  # a notch from the top edge
    assert point_in_polygon(2, 8, concave) is False or point_in_polygon(5, 8, concave) is False
    assert point_in_polygon(5, 2, concave)


def test_zones_use_the_bottom_centre_by_default_and_relative_coordinates_follow_the_frame():
    ground = Zone("ground", [(0, 0.5), (1, 0.5), (1, 1), (0, 1)])  # the lower half
    box = (100, 40, 140, 130)  # head in the upper half, feet in the lower
    assert ground.contains(box, 320, 240)
    assert not Zone("g", ground.points, anchor="center").contains(box, 320, 240)
    assert not ground.contains(box, 320, 300)  # the same box in a taller frame stands above the zone
    pixels = Zone("p", [(0, 120), (320, 120), (320, 240), (0, 240)], relative=False)
    assert pixels.contains(box, 320, 240) and pixels.contains(box, 640, 480)  # pixels do not scale


def test_lines_count_direction_and_only_within_the_segment():
    gate = Line("gate", [(0.5, 0.0), (0.5, 0.5)], anchor="center")  # top half of a vertical line, drawn downwards
    left, right = (100, 50, 120, 70), (200, 50, 220, 70)
    # Walking from the first point down to the second, the right-hand side is the image's left.
    assert gate.crossing(right, left, 320, 240) == "in"
    assert gate.crossing(left, right, 320, 240) == "out"
    assert gate.crossing(left, left, 320, 240) is None
    low_left, low_right = (100, 200, 120, 220), (200, 200, 220, 220)  # below the segment's end
    assert gate.crossing(low_left, low_right, 320, 240) is None


def _crossings(line: LineConfig, start: tuple[float, float], step: tuple[float, float]) -> list[dict]:
    """Every crossing of ``line`` by one object whose box centre moves ``step`` px per frame from ``start``."""
    events = TrackingConfig(track=True, tracker={"min_hits": 1}, lines=[line]).build("cam", id_prefix="")
    crossed = []
    for n in range(30):
        cx, cy = start[0] + step[0] * n, start[1] + step[1] * n
        out = events.process(_result([_det((cx - 10, cy - 10, cx + 10, cy + 10))]), timestamp=n / 10)
        crossed += [c for e in out.events for c in e.get("crossed", [])]
    return crossed


def test_in_direction_left_to_right_on_a_vertical_line_counts_a_left_to_right_crossing_as_in():
    """The README's line: drawn top to bottom at x = 0.5. Without in_direction, 'in' is the left of the line
    walking along it: the frame's right-to-left; in_direction says what a person means."""
    vertical = {"name": "gate", "points": [[0.5, 0.0], [0.5, 1.0]], "anchor": "center"}
    rightwards, leftwards = ((60.0, 120.0), (10.0, 0.0)), ((260.0, 120.0), (-10.0, 0.0))
    assert _crossings(LineConfig(**vertical, in_direction="left_to_right"), *rightwards) == [
        {"line": "gate", "direction": "in"}
    ]
    assert _crossings(LineConfig(**vertical, in_direction="left_to_right"), *leftwards) == [
        {"line": "gate", "direction": "out"}
    ]
    assert _crossings(LineConfig(**vertical, in_direction="right_to_left"), *leftwards) == [
        {"line": "gate", "direction": "in"}
    ]
    assert _crossings(LineConfig(**vertical), *rightwards) == [{"line": "gate", "direction": "out"}]  # as before
    # Drawn the other way up, the same direction means the same thing.
    upwards = {**vertical, "points": [[0.5, 1.0], [0.5, 0.0]]}
    assert _crossings(LineConfig(**upwards, in_direction="left_to_right"), *rightwards)[0]["direction"] == "in"


def test_the_readme_camera_example_counts_what_its_comment_says():
    """The README's line said left to right was "in" while the runtime counted it "out": read it from there."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("[[routes.lines]]\nname = ") :]
    block = block[: block.index("```")]
    line = tomllib.loads(block)["routes"]["lines"][0]
    assert 'left to right counts as "in"' in block and line["in_direction"] == "left_to_right"
    config = LineConfig(**line, anchor="center")
    assert _crossings(config, (60.0, 120.0), (10.0, 0.0)) == [{"line": "gate", "direction": "in"}]


def test_in_direction_on_horizontal_and_slanted_lines_and_where_it_cannot_be():
    horizontal = {"name": "door", "points": [[0.9, 0.5], [0.1, 0.5]], "anchor": "center"}
    downwards, upwards = ((160.0, 40.0), (0.0, 10.0)), ((160.0, 200.0), (0.0, -10.0))
    assert _crossings(LineConfig(**horizontal, in_direction="top_to_bottom"), *downwards)[0]["direction"] == "in"
    assert _crossings(LineConfig(**horizontal, in_direction="bottom_to_top"), *upwards)[0]["direction"] == "in"
    assert _crossings(LineConfig(**horizontal, in_direction="bottom_to_top"), *downwards)[0]["direction"] == "out"
    # A diagonal from top left to bottom right: its left side is also its bottom side.
    diagonal = {"name": "d", "points": [[0.0, 0.0], [1.0, 1.0]], "anchor": "center"}
    for direction in ("left_to_right", "bottom_to_top"):
        # From below-left of the diagonal (x = 60, y = 200) up and to the right.
        assert _crossings(LineConfig(**diagonal, in_direction=direction), (60.0, 200.0), (8.0, -6.0)) == [
            {"line": "d", "direction": "in"}
        ]
    from pydantic import ValidationError

    for points, direction, words in [
        ([[0.1, 0.5], [0.9, 0.5]], "left_to_right", "a horizontal line has no left or right side"),
        ([[0.5, 0.0], [0.5, 1.0]], "top_to_bottom", "a vertical line has no top or bottom side"),
        ([[0.5, 0.0], [0.5, 1.0]], "inwards", "'left_to_right', 'right_to_left', 'top_to_bottom' or 'bottom_to_top'"),
    ]:
        with pytest.raises(ValidationError) as err:
            TrackingConfig(track=True, lines=[{"name": "l", "points": points, "in_direction": direction}])
        assert words in str(err.value), str(err.value)


# --- tracker ----------------------------------------------------------------------------------------------
def test_two_objects_passing_each_other_keep_their_ids():
    tracker = Tracker(min_hits=1)  # merge_iou on: while they overlap most, one of the two boxes is dropped
    ids_a, ids_b = set(), set()
    for n in range(40):
        a = (10 + 7 * n, 100, 50 + 7 * n, 140)  # left to right
        b = (290 - 7 * n, 110, 330 - 7 * n, 150)  # right to left, overlapping a in the middle
        upd = tracker.update([_det(a), _det(b, "square")], n / 10)
        by_box = {tuple(np.round(t.box)): t.id for t in upd.confirmed}
        ids_a.add(by_box.get(tuple(np.round(a))))
        ids_b.add(by_box.get(tuple(np.round(b))))
    ids_a.discard(None)
    ids_b.discard(None)
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b  # predicted through the overlap, no swap


def test_low_score_detections_keep_a_track_alive_bytetrack_style():
    def run(low_score: float) -> list[tuple[str, str]]:
        events = ObjectEvents(source="cam", tracker=Tracker(low_score=low_score, lost_after_s=0.3), id_prefix="")
        seen = []
        for n in range(30):
            score = 0.3 if 10 <= n < 20 else 0.9  # half hidden for a second
            out = events.process(_result([_det((50 + n, 50, 90 + n, 90), score=score)]), timestamp=n / 10)
            seen += [(e["event"], e["id"]) for e in out.events]
        return seen

    assert run(0.1) == [("new", "1")]  # one object, never lost
    assert run(0.5) == [("new", "1"), ("end", "1"), ("new", "2")]  # without the second pass: split in two


def test_a_partly_hidden_object_missed_for_a_frame_is_revived_by_low_score_detections():
    """Half hidden behind something, an object is first missed, then seen only weakly: the weak detections
    must carry on its track (ByteTrack's second pass), not only those of tracks matched the frame before."""
    tracker = Tracker(lost_after_s=2.0)
    reported = []
    for n in range(20):
        box = (50 + 4 * n, 50, 90 + 4 * n, 130)
        if n == 8:
            dets = []  # behind the pole: missed
        elif 9 <= n < 14:
            dets = [_det(box, score=0.3)]  # coming out, partly hidden: weak detections only
        else:
            dets = [_det(box)]
        upd = tracker.update(dets, n / 10)
        reported.append([t.id for t in upd.confirmed])
    assert reported[0] == [] and reported[1:8] == [[1]] * 7
    assert reported[8] == []
    assert reported[9:] == [[1]] * 11  # the weak frames reported as the same object, and no second one


def test_a_fast_object_is_confirmed_and_announced():
    """A new track has no velocity yet: an object moving more than about half its width between frames (a
    car at fps = 5) never overlapped its first box again, so it was never confirmed: no `new` event at all."""
    events = ObjectEvents(source="cam", tracker=Tracker(min_hits=2), id_prefix="")
    log = []
    for n in range(8):
        x = 10 + 36 * n  # 36 px per frame at 5 fps for a 40 px wide box: 0.9 box widths per frame
        out = events.process(_result([_det((x, 100, x + 40, 130), "car")]), timestamp=n / 5)
        log += [(n, e["event"], e["id"]) for e in out.events]
    assert log == [(1, "new", "1")]


def test_uneven_frame_gaps_keep_one_object():
    """Frames come when the model is free (latest_only): the tracker predicts by time, not by frame count."""
    tracker = Tracker(min_hits=2)
    ids = set()
    t = 0.0
    for n, gap in enumerate([0.1, 0.3, 0.1, 0.4, 0.2, 0.1, 0.5, 0.1, 0.2, 0.3]):
        t += gap
        x = 20 + 150 * t  # 150 px/s: up to 1.9 box widths between two frames
        ids.update(tr.id for tr in tracker.update([_det((x, 60, x + 40, 100))], t).confirmed)
        assert n == 0 or len(tracker.tracks) == 1
    assert ids == {1}


def test_weak_detections_make_an_object_only_when_they_add_up():
    """Low-score detections may start a track, and an object is announced once min_hits detections in a row
    add up to min_hits x new_track_score (1.0 by default): two at 0.5, four at 0.3. An object first seen
    weakly (coming out from behind something) is announced at its first confident detection; what the
    detector believes in only now and then never becomes one."""

    def first_new(scores: list) -> int | None:
        events = ObjectEvents(source="cam", tracker=Tracker(min_hits=2), id_prefix="")
        for n, score in enumerate(scores):
            dets = [] if score is None else [_det((100 + n, 100, 140 + n, 180), score=score)]
            if events.process(_result(dets), timestamp=n / 10).events:
                return n
        return None

    assert first_new([0.9] * 10) == 1
    assert first_new([0.15] * 4 + [0.9] * 5) == 4  # not 5: it was followed while weak
    assert first_new([0.3] * 10) == 3
    assert first_new([0.45, None] * 10) is None  # never twice in a row
    assert first_new([0.12] * 8) is None


def test_a_one_frame_false_positive_never_becomes_an_object_and_bad_boxes_are_ignored():
    events = ObjectEvents(source="cam", tracker=Tracker(min_hits=2))
    out = events.process(
        _result(
            [
                _det((10, 10, 50, 50)),
                {"box": [1, 2]},
                {"box": [5, 5, 1, 1], "score": 1},
                {"box": [float("nan"), 0, 5, 5], "score": 1},
                {"score": 0.9},
                {"box": "x"},
            ]
        ),
        timestamp=0,
    )
    assert out.events == []
    for n in range(1, 10):
        assert events.process(_result([]), timestamp=n / 10).events == []


def test_an_object_ends_after_end_after_s_even_when_frames_stop_coming():
    events = ObjectEvents(source="cam", tracker=Tracker(min_hits=1, lost_after_s=2.0), id_prefix="x")
    assert [e["event"] for e in events.process(_result([_det((10, 10, 50, 50))]), timestamp=100.0).events] == ["new"]
    assert events.expire(101.0).events == []
    ended = events.expire(102.5).events
    assert [(e["event"], e["id"], e["last_seen"]) for e in ended] == [("end", "x1", 100.0)]


def test_tracks_are_bounded_and_refusals_counted():
    tracker = Tracker(min_hits=1, max_tracks=3)
    tracker.update([_det((10 * i, 0, 10 * i + 8, 8)) for i in range(10)], 0.0)
    assert len(tracker.tracks) == 3 and tracker.refused == 7


# --- events -----------------------------------------------------------------------------------------------
def _zone_cfg(**kw) -> TrackingConfig:
    return TrackingConfig(
        track=True,
        zones=[ZoneConfig(name="right", points=[[0.5, 0], [1, 0], [1, 1], [0.5, 1]], **kw)],
        tracker={"min_hits": 1},
    )


def test_updates_only_on_changes_or_at_the_interval():
    quiet = _zone_cfg().build("cam")
    chatty = TrackingConfig(track=True, update_interval_s=1.0, tracker={"min_hits": 1}).build("cam")
    counts = {"quiet": [], "chatty": []}
    for n in range(50):  # 5 s standing still, with detector jitter
        box = (200 + (n % 3), 100, 240 + (n % 2), 150)
        counts["quiet"] += [e["event"] for e in quiet.process(_result([_det(box)]), timestamp=n / 10).events]
        counts["chatty"] += [e["event"] for e in chatty.process(_result([_det(box)]), timestamp=n / 10).events]
    assert counts["quiet"] == ["new"]
    assert counts["chatty"] == ["new"] + ["update"] * 4


def test_a_label_flicker_is_not_a_change_but_a_lasting_new_label_is():
    events = ObjectEvents(source="cam", tracker=Tracker(min_hits=1), id_prefix="")
    out = []
    labels = ["circle"] * 5 + ["square"] + ["circle"] * 4 + ["square"] * 12
    for n, label in enumerate(labels):
        out += events.process(_result([_det((10 + n, 10, 50 + n, 50), label)]), timestamp=n / 10).events
    assert [(e["event"], e["label"]) for e in out] == [("new", "circle"), ("update", "square")]


def test_zone_entries_need_inertia_and_occupancy_is_published_on_change_only():
    events = _zone_cfg(inertia=3).build("cam", id_prefix="")
    # Bottom centre x: 155, 163 (in), 155 (out), 163, 163, 163 (in for three frames), ...
    xs = [155, 163, 155, 163, 163, 163, 163, 163]
    log = []
    for n, x in enumerate(xs):
        out = events.process(_result([_det((x - 40, 100, x + 40, 140))]), timestamp=n / 10)
        log += [(n, e["event"], e.get("entered"), e.get("left")) for e in out.events]
        log += [(n, "occupancy", o["count"]) for o in out.occupancy]
    assert log == [(0, "new", None, None), (0, "occupancy", 0), (5, "update", ["right"], None), (5, "occupancy", 1)]
    out = events.expire(10.0)
    assert [(e["event"], e["zones"]) for e in out.events] == [("end", ["right"])]
    assert [(o["zone"], o["count"], o["labels"]) for o in out.occupancy] == [("right", 0, {})]
    assert events.occupancy() == [{"zone": "right", "source": "cam", "count": 0, "labels": {}}]


def test_zone_label_filters_and_line_counts():
    cfg = TrackingConfig(
        track=True,
        tracker={"min_hits": 1},
        zones=[ZoneConfig(name="cars", points=[[0, 0], [1, 0], [1, 1], [0, 1]], labels=["square"], inertia=1)],
        lines=[LineConfig(name="mid", points=[[0.5, 1.0], [0.5, 0.0]], forward="east", backward="west")],
    )
    events = cfg.build("cam", id_prefix="")
    out_all = []
    for n in range(20):
        x = 100 + 10 * n
        dets = [_det((x - 10, 50, x + 10, 70), "circle"), _det((x - 10, 150, x + 10, 170), "square")]
        out = events.process(_result(dets), timestamp=n / 10)
        out_all.append(out)
    counts = [c for o in out_all for c in o.counts]
    assert counts[-1] == {
        "line": "mid",
        "source": "cam",
        "east": 2,
        "west": 0,
        "labels": {"circle": {"east": 1, "west": 0}, "square": {"east": 1, "west": 0}},
    }
    crossed = [e for o in out_all for e in o.events if e.get("crossed")]
    assert sorted(e["label"] for e in crossed) == ["circle", "square"]
    assert all(e["crossed"] == [{"line": "mid", "direction": "east"}] for e in crossed)
    occupancy = [o for out in out_all for o in out.occupancy]
    assert occupancy[-1]["count"] == 1 and occupancy[-1]["labels"] == {"square": 1}  # circles do not count there


# --- whole videos with known tracks ----------------------------------------------------------------------------
def _iou(a, b) -> float:
    return float(iou_matrix(np.array([a], float), np.array([b], float))[0, 0])


def _run_video(tmp_path, scene, detect, config: TrackingConfig):
    """Write ``scene`` to a file, read it back through a VideoSource as fast as we take frames, detect, track."""
    from devices.moving import write_video
    from edge_runtime.sources import VideoSource

    path = tmp_path / "scene.mp4"
    write_video(scene, path)
    events = config.build("scene", id_prefix="")
    log = []  # (frame index, event or occupancy message)
    stamps = []  # each frame's timestamp
    with VideoSource(str(path), name="scene", fps=None, realtime=False) as source:
        frames = 0
        for frame in source.frames(timeout=20):
            n = round(frame.position_s * scene.fps)
            assert n == frames  # every frame of the file, in order
            frames += 1
            stamps.append(frame.timestamp)
            out = events.process(detect(n, frame), timestamp=frame.timestamp)
            log += [(n, e) for e in out.events] + [(n, o) for o in out.occupancy]
    assert frames == scene.frames
    return log, stamps


def _check_against_truth(
    scene, log, stamps, *, zone_x: float, entry_tolerance: int, end_after_frames: int, check_labels: bool
):
    events = [(n, e) for n, e in log if "event" in e]
    by_id: dict[str, list] = {}
    for n, e in events:
        by_id.setdefault(e["id"], []).append((n, e))
    # Which drawn object each id is: the one its boxes overlap.
    owner = {}
    for eid, items in by_id.items():
        owners = set()
        for n, e in items:
            if e["event"] == "end":
                continue
            best = max(scene.tracks, key=lambda t: _iou(e["box"], t.box(n)) if t.box(n) else 0)
            assert best.box(n) and _iou(e["box"], best.box(n)) > 0.5, f"event {e} matches no object at frame {n}"
            owners.add(best.id)
        assert len(owners) == 1, f"id {eid} jumped between objects {owners}"  # ids are stable
        owner[eid] = owners.pop()
    assert sorted(owner.values()) == [t.id for t in scene.tracks]  # one id per object, no object split in two
    for eid, items in by_id.items():
        track = next(t for t in scene.tracks if t.id == owner[eid])
        kinds = [e["event"] for _, e in items]
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1 and kinds.count("end") == 1
        assert all(k == "update" for k in kinds[1:-1])
        if check_labels:
            assert {e["label"] for _, e in items} == {track.label}
        # Zone entry: the first frame whose bottom centre is inside, within the tolerance (inertia and misses).
        truth_entry = next(
            n for n in range(track.start, track.end + 1) if (track.box(n)[0] + track.box(n)[2]) / 2 >= zone_x
        )
        entries = [n for n, e in items if "right" in (e.get("entered") or [])]
        assert len(entries) == 1 and 0 <= entries[0] - truth_entry <= entry_tolerance, (entries, truth_entry)
        # The end: declared end_after_s after the object was last seen, which was at (or, when the last
        # detections were missed, just before) its last frame in the scene.
        end_frame, end = items[-1]
        last_seen_frame = int(np.argmin(np.abs(np.array(stamps) - end["last_seen"])))
        assert 0 <= track.end - last_seen_frame <= 3, (last_seen_frame, track.end)
        assert end_frame - last_seen_frame in (end_after_frames, end_after_frames + 1), (end_frame, last_seen_frame)
        assert items[-1][1]["zones"] == ["right"]
    counts = [e["count"] for _, e in log if "zone" in e]
    assert counts[0] == 0 and counts[-1] == 0 and max(counts) >= 1


ZONE = ZoneConfig(name="right", points=[[0.5, 0], [1, 0], [1, 1], [0.5, 1]], inertia=2)


def test_noisy_ground_truth_detections_give_one_new_and_one_end_per_object(tmp_path):
    from devices.moving import MovingScene

    scene = MovingScene.crossing(fps=10, objects=3, seed=4)
    rng = np.random.default_rng(7)

    def detect(n, frame):
        dets = []
        for _, label, box in scene.truth(n):
            r = rng.random()
            if r < 0.1:
                continue  # missed
            score = 0.3 if r < 0.2 else float(rng.uniform(0.6, 0.95))  # sometimes only a weak detection
            dets.append(_det(np.array(box) + rng.normal(0, 1.5, 4), label, score))
        if rng.random() < 0.05:  # a one-frame false positive somewhere
            x, y = rng.uniform(0, 280), rng.uniform(0, 200)
            dets.append(_det((x, y, x + 30, y + 30), "square", 0.7))
        return _result(dets, frame.image.shape[1], frame.image.shape[0])

    config = TrackingConfig(track=True, zones=[ZONE], tracker={"min_hits": 2, "end_after_s": 1.0})
    log, stamps = _run_video(tmp_path, scene, detect, config)
    _check_against_truth(
        scene, log, stamps, zone_x=scene.width / 2, entry_tolerance=3, end_after_frames=10, check_labels=True
    )


def test_the_demo_detector_on_a_video_file_gives_the_right_objects_and_zone_entries(tmp_path):
    pytest.importorskip("cv2")
    from devices.moving import MovingScene
    from edge_runtime.bundle import load_bundle
    from edge_runtime.engines import Engine

    bundle = load_bundle(ROOT / "edge_runtime" / "demo_models" / "shapes-detector")
    engine = Engine(bundle)
    decoder = engine.task.decoder(bundle.manifest, max_bytes=10_000_000)
    scene = MovingScene.crossing(fps=10, objects=2, seed=1)

    def detect(n, frame):
        _, row, meta = decoder.decode_array(frame.image, id=frame.id, timestamp=frame.timestamp)
        return engine.task.results(bundle.manifest, engine.run(row[None]), [meta])[0]

    config = TrackingConfig(track=True, zones=[ZONE], tracker={"min_hits": 2, "end_after_s": 1.0})
    log, stamps = _run_video(tmp_path, scene, detect, config)
    _check_against_truth(
        scene, log, stamps, zone_x=scene.width / 2, entry_tolerance=4, end_after_frames=10, check_labels=True
    )


def test_simulate_video_writes_the_scene_and_its_ground_truth(tmp_path):
    from edge_runtime.cli import main

    out = tmp_path / "clip.avi"
    assert main(["simulate", "video", "-o", str(out), "--objects", "3", "--fps", "5", "--size", "160x120"]) == 0
    truth = json.loads(out.with_suffix(".json").read_text())
    assert truth["fps"] == 5 and truth["width"] == 160 and len(truth["objects"]) == 3
    first = truth["objects"][0]
    assert len(first["boxes"]) == first["end"] - first["start"] + 1
    import cv2

    cap = cv2.VideoCapture(str(out), cv2.CAP_FFMPEG)
    frames = 0
    while cap.grab():
        frames += 1
    assert frames == truth["frames"]


# --- config and Home Assistant ---------------------------------------------------------------------------------
def test_tracking_config_checks_at_once():
    from pydantic import ValidationError

    for bad, words in [
        ({"zones": [{"name": "z", "points": [[0, 0], [1, 0], [1, 1]]}]}, "need track = true"),
        ({"track": True, "zones": [{"name": "z", "points": [[0, 0], [2, 0], [1, 1]]}]}, "between 0 and 1"),
        ({"track": True, "zones": [{"name": "z", "points": [[0, 0], [1, 0]]}]}, "at least 3"),
        ({"track": True, "lines": [{"name": "l", "points": [[0, 0], [0, 0]]}]}, "must differ"),
        ({"track": True, "events": "events/+/x"}, "without wildcards"),
        ({"track": True, "occupancy": "zones/{1}"}, "needs {zone}"),
        ({"track": True, "events": "events/{2}"}, "not {2}"),
        ({"track": True, "tracker": {"low_score": 0.6}}, "low_score"),
        ({"track": True, "tracker": {"min_hits": 0}}, "greater than or equal to 1"),
        ({"track": True, "zone": []}, "Extra inputs"),
        ({"track": True, "zones": [{"name": "a", "points": [[0, 0], [1, 0], [1, 1]]}] * 2}, "two zones"),
    ]:
        with pytest.raises(ValidationError) as err:
            TrackingConfig(**bad)
        assert words in str(err.value), str(err.value)
    cfg = TrackingConfig(track=True)
    assert render_topic(cfg.events, source="door") == "events/door"
    assert render_topic(cfg.occupancy, source="door", zone="porch") == "events/door/zones/porch"


def test_home_assistant_discovery_for_zones_lines_and_object_events():
    from edge_runtime.serving.homeassistant_events import (
        line_count_discovery,
        object_events_discovery,
        zone_occupancy_discovery,
    )

    topic, payload = zone_occupancy_discovery(
        prefix="homeassistant", node="edge-1", source="door", zone="porch", state_topic="events/door/zones/porch"
    )
    assert re.fullmatch(r"homeassistant/sensor/edge-1/door_porch_occupancy_[0-9a-f]{16}/config", topic)
    assert payload["state_topic"] == "events/door/zones/porch" and payload["value_template"] == "{{ value_json.count }}"
    assert payload["availability_topic"] == "edge-runtime/edge-1/status" and payload["state_class"] == "measurement"
    topic, payload = line_count_discovery(
        prefix="homeassistant",
        node="edge-1",
        source="door",
        line="gate",
        direction="in",
        state_topic="events/door/lines/gate",
    )
    assert topic.startswith("homeassistant/sensor/") and payload["state_class"] == "total_increasing"
    topic, payload = object_events_discovery(
        prefix="homeassistant", node="edge-1", source="door", events_topic="events/door"
    )
    assert re.fullmatch(r"homeassistant/event/edge-1/door_objects_[0-9a-f]{16}/config", topic)
    assert payload["event_types"] == ["new", "update", "end"] and payload["state_topic"] == "events/door"
    # The templates, rendered against real events: tests/test_homeassistant.py.


def test_one_object_reported_twice_under_two_labels_is_one_track_unless_class_aware():
    def tracks(**options) -> int:
        tracker = Tracker(min_hits=1, **options)
        for n in range(5):
            tracker.update(
                [_det((10 + n, 40, 60 + n, 90), "circle", 0.95), _det((8 + n, 30, 64 + n, 88), "triangle", 0.6)], n / 10
            )  # IoU about 0.7
        return len(tracker.tracks)

    assert tracks() == 1
    assert tracks(merge_iou=None) == 2
    assert TrackingConfig(track=True, tracker={"class_aware": True}).build("c").tracker.merge_iou is None


def test_cameras_named_by_publishers_are_announced_once_each_and_boundedly():
    """An MQTT camera route's cameras are named by whoever publishes: each new name was announced (retained
    discovery config on the broker) every time it came back into the tracker's LRU, and without bound."""
    from edge_runtime.config import parse_config
    from edge_runtime.mqtt.delivery import Inbound
    from edge_runtime.serving.discovery import Discovery
    from edge_runtime.serving.observers import ServedBatch
    from edge_runtime.serving.video import TrackingObserver

    config = parse_config(
        '[broker]\nurl = "mqtt://127.0.0.1:1883"\nclient_id = "t"\n[homeassistant]\ndiscovery = true\n'
        '[[models]]\nname = "d"\nbundle = "b"\n'
        '[[routes]]\nmodel = "d"\nsubscribe = "cameras/+/frames"\npublish = "det/{1}"\ntrack = true\n'
        'events = "events/{1}"\n'
    )
    published: list[tuple[str, bool]] = []
    observer = TrackingObserver(
        config.routes[0],
        publish=lambda topic, _payload, _qos, retain: published.append((topic, retain)),
        node="t",
        discovery=Discovery(
            prefix="homeassistant",
            node="t",
            publish=lambda topic, _payload, _qos, retain: published.append((topic, retain)),
            remove_after_s=3600,
            max_bytes=256 << 10,
        ),
    )

    def frame_from(camera: str) -> None:
        topic = f"cameras/{camera}/frames"
        inbound = Inbound(topic, b"")
        observer.observe(
            ServedBatch("r", "d", [inbound], [None], [0.0], None, None, [None], [_result([])], 0.0, 0.0, 0.0, 0.0)
        )

    def announced() -> int:
        return sum(1 for topic, retain in published if retain and topic.startswith("homeassistant/"))

    frame_from("door")
    assert announced() == 1
    for i in range(100):  # more than the tracker keeps: "door" is closed, then comes back
        frame_from(f"c{i}")
    before = announced()
    frame_from("door")
    assert announced() == before  # announced once, whatever the LRU did
    for i in range(3000):
        frame_from(f"{'x' * 100}{i}")
    assert announced() < 1000  # bounded in bytes of names, not one per name forever
