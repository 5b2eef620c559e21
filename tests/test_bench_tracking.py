"""`bench tracking` runs on small seeded scenes, its scores mean what they say and its counts add up.

Never how fast: benchmarks are not tests."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.bench.tracking import _score
from edge_runtime.bench.tracking_scenes import SCENES, build_scene


def test_scenes_are_seeded_and_hold_what_they_promise():
    a, b = build_scene(SCENES["crowded"], 3), build_scene(SCENES["crowded"], 3)
    assert [f.detections for f in a.frames] == [f.detections for f in b.frames]
    assert [f.detections for f in a.frames] != [f.detections for f in build_scene(SCENES["crowded"], 4).frames]
    spec = SCENES["crowded"]
    for f in a.frames:
        for _, (x1, y1, x2, y2) in f.truth:
            assert 0 <= x1 < x2 <= spec.width and 0 <= y1 < y2 <= spec.height
    truth = sum(len(f.truth) for f in a.frames)
    low = sum(len(f.low_boxes) for f in a.frames)
    dets = sum(len(f.detections) for f in a.frames)
    assert 0.1 * truth < low < dets < truth * 1.2  # weak detections of hidden objects, misses, false positives
    assert max(len(f.truth) for f in a.frames) >= 10  # crowded
    gaps = np.diff([f.t for f in build_scene(SCENES["irregular"], 0).frames])
    assert gaps.min() == pytest.approx(0.1) and gaps.max() >= 0.3  # frames skipped at random: uneven gaps


def test_a_tracker_that_reports_the_truth_scores_one_and_one_that_swaps_ids_does_not():
    scene = build_scene(SCENES["crossing"], 0)
    perfect = _score([(scene.frames, [list(f.truth) for f in scene.frames])])
    assert perfect["mota"] == 1 and perfect["idf1"] == 1 and perfect["misses"] == perfect["false_positives"] == 0
    assert perfect["matches"] == perfect["truth_boxes"] == sum(len(f.truth) for f in scene.frames)
    half = len(scene.frames) // 2  # from the middle on, every id is another one
    swapped = [[(i + (1000 if n >= half else 0), box) for i, box in f.truth] for n, f in enumerate(scene.frames)]
    scores = _score([(scene.frames, swapped)])
    before = {i for f in scene.frames[:half] for i, _ in f.truth}
    after = {i for f in scene.frames[half:] for i, _ in f.truth}
    assert scores["id_switches"] == len(before & after) > 0  # one for each object seen on both sides
    assert scores["idf1"] < 1 and scores["mota"] == pytest.approx(
        1 - scores["id_switches"] / scores["truth_boxes"], abs=1e-4
    )


def test_bench_tracking_runs_and_its_counts_add_up(tmp_path):
    report_path, csv_path = tmp_path / "t.json", tmp_path / "t.csv"
    args = ["--scenes", "easy,low_fps", "--seeds", "1", "--repeat", "1", "--json", report_path, "--csv", csv_path]
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "bench", "tracking", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    assert report["kind"] == "tracking" and list(report["scenes"]) == ["easy", "low_fps"]
    for s in report["scenes"].values():
        assert "edge-runtime" in s["systems"]
        for m in s["systems"].values():
            assert m["truth_boxes"] == s["truth_boxes"] and m["objects"] == s["objects"]
            assert m["matches"] + m["misses"] == m["truth_boxes"]
            errors = m["misses"] + m["false_positives"] + m["id_switches"]
            assert m["mota"] == pytest.approx(1 - errors / m["truth_boxes"], abs=1e-4)
            assert 0 <= m["idf1"] <= 1 and 0 <= m["low_score_kept"] <= 1 and m["ms_per_frame"] > 0
        measured = [k for k in s["systems"] if k != "edge-runtime"]
        assert bool(measured) == bool(s["vs_best_reference"])
        for v in s["vs_best_reference"].values():
            assert v["reference"] in measured
    for name, state in report["references"].items():  # measured, or why not
        assert state == "measured" or "pip install" in state, (name, state)
        assert (state == "measured") == (name in report["scenes"]["easy"]["systems"])
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == sum(len(s["systems"]) for s in report["scenes"].values())
    assert {r["tracker"] for r in rows} == set(report["scenes"]["easy"]["systems"])
    assert "MOTA" in proc.stdout and ("vs best reference" in proc.stdout) == bool(measured)


def test_bench_tracking_refuses_an_unknown_scene_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "bench", "tracking", "--scenes", "easy,rush_hour"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        "edge-runtime: error: --scenes: choose from easy, crossing, crowded, low_fps, irregular (not rush_hour)\n"
    )


def test_bench_tracking_without_motmetrics_says_what_to_install():
    hide = (
        "import sys; sys.modules['motmetrics'] = None; from edge_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", hide, "bench", "tracking", "--scenes", "easy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr == (
        "edge-runtime: error: bench tracking scores with motmetrics: pip install 'edge-runtime[bench]'\n"
    ), proc.stderr
