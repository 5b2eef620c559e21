"""Sample capture: a bounded ring on disk, rows chosen by share and condition, faults counted, replay."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_runtime.bundle import load_bundle
from edge_runtime.engines import Engine
from edge_runtime.monitoring import CaptureWriter, read_capture
from edge_runtime.monitoring.capture import confidence


def _on_disk(directory: Path) -> int:
    total = 0
    for name in os.listdir(directory):
        with contextlib.suppress(FileNotFoundError):  # deleted or renamed between listing and stat
            total += (directory / name).stat().st_size
    return total


def _lines(directory: Path) -> list[dict]:
    out = []
    for f in sorted(directory.glob("cap-*.jsonl")):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines()]
    return out


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 16)).astype(np.float32)


def test_the_ring_never_exceeds_its_cap(tmp_path):
    cap = 64 * 1024
    directory = tmp_path / "cap"
    writer = CaptureWriter(directory, max_mb=cap / 1024 / 1024, fraction=1.0, flush_s=0.05)
    largest, stop = [0], threading.Event()

    def watch():  # every file counts, including one being written under its temporary name
        while not stop.is_set():
            if directory.exists():
                largest[0] = max(largest[0], _on_disk(directory))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(150):
            rows = _rows(32, seed=i)
            writer.offer(rows, [{"value": float(v)} for v in rows[:, 0]], ids=list(range(i * 32, i * 32 + 32)))
            if i % 10 == 0:
                assert writer.wait(10)
        assert writer.wait(10)
    finally:
        stop.set()
        watcher.join()
        writer.close()
    snap = writer.snapshot()
    assert snap["captured"] == 150 * 32 and snap["dropped"] == {"queue_full": 0, "too_large": 0}
    assert snap["deleted_segments"] > 0 and snap["write_errors"] == 0
    assert 0 < largest[0] <= cap and _on_disk(directory) == snap["bytes"] <= cap
    # What is left is the newest rows, readable as .npy + JSONL, each line naming its row.
    lines = _lines(directory)
    ids = [e["id"] for e in lines]
    assert ids == list(range(150 * 32 - len(ids), 150 * 32))
    for f in directory.glob("cap-*.npy"):
        rows = np.load(f, allow_pickle=False)
        index = [orjson.loads(x) for x in f.with_suffix(".jsonl").read_bytes().splitlines()]
        assert rows.shape == (len(index), 16) and [e["row"] for e in index] == list(range(len(index)))
        first = index[0]["id"]
        assert np.array_equal(rows[0], _rows(32, seed=first // 32)[first % 32])


def test_existing_files_over_the_cap_are_trimmed_at_start(tmp_path):
    directory = tmp_path / "cap"
    first = CaptureWriter(directory, max_mb=10, fraction=1.0, flush_s=0.05)
    for i in range(8):
        first.offer(_rows(64, seed=i), [{"value": 0.0}] * 64, ids=[i] * 64)
        assert first.wait(10)
    first.close()
    segments = sorted(p.stem for p in directory.glob("cap-*.jsonl"))
    assert len(segments) == 8
    (directory / "notes.txt").write_text("not the capture's")  # neither counted nor deleted
    (directory / f".{segments[-1]}.npy.tmp").write_bytes(b"x" * 100)  # a crash mid-write
    (directory / "cap-99999999999999999999-000001.npy").write_bytes(b"x" * 100)  # a segment without its index

    cap = _on_disk(directory) // 3
    second = CaptureWriter(directory, max_mb=cap / 1024 / 1024, fraction=1.0)
    try:
        assert second.wait(10)
        snap = second.snapshot()
    finally:
        second.close()
    left = sorted(p.stem for p in directory.glob("cap-*.jsonl"))
    assert 0 < len(left) < 8 and left == segments[-len(left) :]  # the oldest went first
    assert (directory / "notes.txt").exists()
    assert not list(directory.glob(".*.tmp")) and not (directory / "cap-99999999999999999999-000001.npy").exists()
    ours = sum(p.stat().st_size for p in directory.glob("cap-*"))
    assert ours == snap["bytes"] <= cap and snap["deleted_segments"] == 8 - len(left)


def test_low_confidence_takes_exactly_the_rows_below_the_threshold(tmp_path, vibration_bundle):
    from devices.sensors import vibration_dataset

    engine = Engine(load_bundle(vibration_bundle))
    rows, _ = vibration_dataset(600, seed=4)
    rows *= np.random.default_rng(1).uniform(0.6, 1.5, rows.shape).astype(np.float32)  # some hard cases
    writer = CaptureWriter(tmp_path / "cap", max_mb=10, low_confidence=0.7)
    expected = []
    try:
        for start in range(0, len(rows), 32):
            batch = rows[start : start + 32]
            scores = engine.run(batch)[engine.manifest.scores_output]
            results = engine.task.results(engine.manifest, engine.run(batch), [None] * len(batch))
            ids = list(range(start, start + len(batch)))
            writer.offer(batch, results, ids=ids, topics=[f"sensors/m{i % 3}/vibration" for i in ids])
            expected += [i for i, s in zip(ids, scores) if s.max() < 0.7]
        assert writer.wait(10)
    finally:
        writer.close()
    lines = _lines(tmp_path / "cap")
    assert 0 < len(expected) < len(rows) / 2
    assert [e["id"] for e in lines] == expected
    assert all(e["reasons"] == ["low_confidence"] and max(e["result"]["scores"]) < 0.7 for e in lines)


def test_fraction_and_drift_selection(tmp_path):
    writer = CaptureWriter(tmp_path / "cap", max_mb=10, fraction=0.25, drift=True)
    try:
        for start in range(0, 1000, 40):
            writer.offer(_rows(40), [{"value": 0.0}] * 40, ids=list(range(start, start + 40)))
        writer.offer(_rows(10), [{"value": 0.0}] * 10, ids=list(range(1000, 1010)), drift_active=True)
        assert writer.wait(10)
    finally:
        writer.close()
    lines = _lines(tmp_path / "cap")
    by_fraction = [e["id"] for e in lines if e["id"] < 1000]
    assert len(by_fraction) == 250 and by_fraction == list(range(3, 1000, 4))  # evenly spread, exactly the share
    assert [e["id"] for e in lines if "drift" in e["reasons"]] == list(range(1000, 1010))


def test_an_unwritable_directory_is_counted_not_fatal(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where a directory should be")
    writer = CaptureWriter(blocker / "captures", max_mb=1, fraction=1.0, flush_s=0.05)
    try:
        for _ in range(3):
            assert writer.offer(_rows(8), [{"value": 0.0}] * 8) == 8  # the loop is never refused or raised at
            assert writer.wait(10)
        snap = writer.snapshot()
        assert snap["write_errors"] == 24 and snap["captured"] == 0 and snap["bytes"] == 0
        # Logged once per interval (here: the first failure, when listing it at start), not once per segment.
        assert len(caplog.records) == 1 and "a-file/captures" in caplog.text
    finally:
        writer.close()

    # The directory taken away while capturing: counted, and the ring's accounting stays true.
    directory = tmp_path / "cap"
    writer = CaptureWriter(directory, max_mb=1, fraction=1.0, flush_s=0.05)
    try:
        writer.offer(_rows(8), [{"value": 0.0}] * 8)
        assert writer.wait(10) and writer.snapshot()["captured"] == 8
        for f in directory.iterdir():
            f.unlink()
        directory.rmdir()
        directory.write_text("now a file")
        writer.offer(_rows(8), [{"value": 0.0}] * 8)
        assert writer.wait(10)
        assert writer.snapshot()["write_errors"] == 8
        directory.unlink()  # and back: capture resumes
        writer.offer(_rows(8), [{"value": 0.0}] * 8)
        assert writer.wait(10)
        snap = writer.snapshot()
        assert snap["captured"] == 16 and snap["bytes"] == _on_disk(directory)
    finally:
        writer.close()


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KB tmpfs (needs root and a kernel that lets us mount one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_counted_not_fatal(full_disk):
    (full_disk / "filler").write_bytes(b"\0" * 40 * 1024)  # someone else's file takes most of the disk
    writer = CaptureWriter(full_disk / "cap", max_mb=1, fraction=1.0, flush_s=0.05)
    try:
        for i in range(20):
            writer.offer(_rows(64, seed=i), [{"value": 0.0}] * 64)
            assert writer.wait(10)
        snap = writer.snapshot()
    finally:
        writer.close()
    assert snap["write_errors"] > 0 and snap["captured"] > 0  # some fitted before the disk filled up
    assert snap["captured"] + snap["write_errors"] == 20 * 64
    assert snap["bytes"] == _on_disk(full_disk / "cap")  # no half-written file left behind and counted
    assert not list((full_disk / "cap").glob(".*.tmp"))


def test_queue_is_bounded_in_bytes(tmp_path):
    writer = CaptureWriter(tmp_path / "cap", max_mb=100, fraction=1.0, max_queue_mb=1)
    try:
        # More than the bound in one batch: refused whatever the writer is doing, counted by row.
        assert writer.offer(np.zeros((64, 8192), np.float32), [{"value": 0.0}] * 64) == 0
        assert writer.snapshot()["dropped"]["queue_full"] == 64
        # What the JSONL line will hold counts too: a huge id from a stranger does not slip past the bound.
        assert writer.offer(_rows(1), [{"value": 0.0}], ids=["x" * 2_000_000]) == 0
        assert writer.snapshot()["dropped"]["queue_full"] == 65
        big = np.zeros((64, 1024), np.float32)  # 256 KB per batch: four fit in the queue
        queued = sum(writer.offer(big, [{"value": 0.0}] * 64) for _ in range(40))
        assert writer.wait(20)
    finally:
        writer.close()
    snap = writer.snapshot()
    assert snap["dropped"]["queue_full"] - 65 + queued == 40 * 64 and snap["captured"] == queued


def test_frames_are_kept_as_received_and_a_capture_replays(tmp_path, broker, collector):
    import cv2

    from devices.scenes import draw_object

    rng = np.random.default_rng(0)
    frames = [cv2.imencode(".jpg", draw_object(rng)[0])[1].tobytes() for _ in range(6)]
    raw = np.zeros((32, 32, 3), np.uint8)
    npy = io.BytesIO()
    np.save(npy, raw)
    payloads = [*frames, npy.getvalue()]
    results = [{"label": "circle", "score": 0.4, "top": []}] * 7
    writer = CaptureWriter(tmp_path / "frames", max_mb=10, fraction=1.0)
    writer.offer(
        np.zeros((7, 3, 64, 64), np.float32),
        results,
        payloads=payloads,
        ids=[f"f{i}" for i in range(7)],
        topics=["cameras/door/frame"] * 7,
    )
    rows = _rows(5)
    tensors = CaptureWriter(tmp_path / "rows", max_mb=10, fraction=1.0)
    tensors.offer(rows, [{"value": 1.0}] * 5, ids=list(range(5)))
    assert writer.wait(10) and tensors.wait(10)
    writer.close()
    tensors.close()

    jpgs = sorted((tmp_path / "frames").glob("*.jpg"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    assert [p.read_bytes() for p in jpgs[:6]] == frames  # stored as they arrived, not re-encoded
    assert cv2.imdecode(np.frombuffer(jpgs[6].read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape == (32, 32, 3)
    entries = read_capture(tmp_path / "frames")
    assert [e["payload"] for e in entries[:6]] == frames and entries[0]["user_properties"] == [["id", "f0"]]
    with pytest.raises(ValueError, match="no topic"):
        read_capture(tmp_path / "rows")

    sink = collector("replayed/#")
    cli = [sys.executable, "-m", "edge_runtime", "simulate", "replay", "--broker", broker.url, "--speed", "100"]
    done = subprocess.run([*cli, str(tmp_path / "rows"), "--topic", "replayed/rows"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = [orjson.loads(m.payload) for m in sink.take(5)]
    assert [g["id"] for g in got] == list(range(5))
    assert np.allclose([g["values"] for g in got], rows)


def test_confidence_of_results():
    assert confidence({"label": "a", "scores": [0.1, 0.7, 0.2]}) == 0.7
    assert confidence({"label": "a", "score": 0.55, "top": []}) == 0.55
    assert confidence({"detections": [{"score": 0.3}, {"score": 0.8}]}) == 0.8
    assert confidence({"detections": []}) is None
    assert confidence({"anomaly": True, "score": -0.3}) is None and confidence({"value": 3.0}) is None
    with pytest.raises(ValueError, match="nothing would be captured"):
        CaptureWriter("/tmp/x", max_mb=1)
