"""Bundles replaced atomically: readers see the old bundle or the new one, never a mix, a failure or nothing.

Each version's model adds its own version number to the input, so what a reader loaded can be checked
against what its manifest says, down to the numbers the model computes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import subprocess
import sys
import threading
import time

import joblib
import numpy as np
import pytest

from edge_runtime.bundle import load_bundle, write_bundle
from edge_runtime.bundle import verify as verify_module
from edge_runtime.bundle import write as write_module
from edge_runtime.bundle._swap import exchange_supported
from edge_runtime.engines import Engine
from edge_runtime.errors import BundleError
from edge_runtime.serving.models import LoadedModel
from edge_runtime.serving.reload import Reloader

READERS = 4
VERSIONS = 30
PAD = {"pad.bin": bytes(range(256)) * 1024}  # 256 KiB more to read and hash: a wider window for a swap to hit


def _model(v: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(np.full(4, v, np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


MODELS = {v: _model(v) for v in range(VERSIONS + 1)}
SHAS = {v: hashlib.sha256(m).hexdigest() for v, m in MODELS.items()}


def _manifest(v: int, input_name: str = "x") -> dict:
    return {
        "name": "m",
        "version": str(v),
        "inputs": [{"name": input_name, "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
    }


def _write(out, v: int, **options):
    return write_bundle(out, MODELS[v], _manifest(v), extra_files=PAD, **options)


def _layout(tmp_path, layout: str):
    """The bundle path a runtime is configured with, holding version 0: a directory, or a symlink to one."""
    if layout == "symlink":
        _write(tmp_path / "v0", 0)  # made by hand (by a deploy script): never removed by write_bundle
        os.symlink("v0", tmp_path / "current")
        return tmp_path / "current"
    _write(tmp_path / "b", 0)
    return tmp_path / "b"


def _served(engine: Engine) -> int:
    return int(engine.run(np.zeros((1, 4), np.float32))["y"][0, 0])


def _leftovers(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch):
    """The atomic exchange, and the documented fallback where renameat2 is missing."""
    if request.param == "exchange" and not exchange_supported():
        pytest.skip("no renameat2 in this C library")
    if request.param == "two renames":
        monkeypatch.setattr(write_module, "exchange", lambda a, b: False)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["directory", "symlink"])
def test_concurrent_readers_never_see_a_failure_or_a_mix(tmp_path, layout, swap):
    out = _layout(tmp_path, layout)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0] * READERS

    def reader(i: int) -> None:
        last = 0
        while not stop.is_set():
            try:
                b = load_bundle(out)
                v = int(b.manifest.version)
                assert b.manifest.sha256 == SHAS[v], f"manifest v{v} names another model"
                # What is read again by path afterwards (as ONNX Runtime does) is the verified version too.
                v2, data = verify_module.use_bundle(out, lambda b: (int(b.manifest.version), b.model_path.read_bytes()))
                assert hashlib.sha256(data).hexdigest() == SHAS[v2], f"v{v2}'s manifest with another model"
                assert last <= v <= v2, f"went back from v{last} to v{v}"  # old or new, never older
                last = v2
                reads[i] += 1
            except BaseException as err:  # noqa: BLE001 - reported by the test below
                errors.append(f"reader {i}: {type(err).__name__}: {err}")
                return

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    try:
        for v in range(1, VERSIONS + 1):
            _write(out, v)
            time.sleep(0.005)  # let readers in between writes as well as during them
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert min(reads) > 0, reads
    assert load_bundle(out).manifest.version == str(VERSIONS)
    assert _leftovers(tmp_path) == []
    if layout == "symlink":  # one version left beside the link (ours), plus the one made by hand
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names[0] == "current" and names[1].startswith(f"current-v{VERSIONS}-") and names[2:] == ["v0"]
        assert not os.path.isabs(os.readlink(out))  # a relative link stays relative
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("layout", ["directory", "symlink"])
def test_the_reloader_sees_each_new_version(tmp_path, layout, swap):
    out = _layout(tmp_path, layout)
    reloader = Reloader(
        {"m": out},
        lambda _name: LoadedModel(verify_module.use_bundle(out, Engine)),
        watched={"m"},
        poll_s=0.02,
        min_interval_s=0.0,
    )
    reloader.start()
    try:
        for v in range(1, 6):
            _write(out, v)
            outcome = reloader.outcomes.get(timeout=10)
            assert outcome.engine is not None, outcome.reason
            assert outcome.engine.manifest.version == str(v) and _served(outcome.engine) == v
            time.sleep(0.1)  # several polls: one swap is one reload, nothing in between
            assert reloader.outcomes.empty()
    finally:
        reloader.close()


def _snapshot(path) -> dict[str, str]:
    real = os.path.realpath(path)
    return {name: hashlib.sha256(open(os.path.join(real, name), "rb").read()).hexdigest() for name in os.listdir(real)}


@pytest.mark.parametrize("layout", ["directory", "symlink"])
@pytest.mark.parametrize("fault", ["manifest refuses the model", "check refuses", "disk full", "interrupted"])
def test_a_write_that_fails_leaves_the_old_bundle(tmp_path, layout, fault, monkeypatch):
    out = _layout(tmp_path, layout)
    before, target = _snapshot(out), os.readlink(out) if layout == "symlink" else None
    names = sorted(p.name for p in tmp_path.iterdir())

    def refuse(_bundle):
        raise BundleError("not today", bundle="x")

    calls = []

    def full_disk(fd):  # fault injection: the second file's data cannot reach the disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    def interrupt(a, b):
        raise KeyboardInterrupt

    with pytest.raises((BundleError, KeyboardInterrupt)) as err:
        if fault == "manifest refuses the model":
            write_bundle(out, MODELS[1], _manifest(1, input_name="z"), extra_files=PAD)
        elif fault == "check refuses":
            _write(out, 1, check=refuse)
        elif fault == "disk full":
            monkeypatch.setattr(write_module.os, "fsync", full_disk)
            _write(out, 1)
        else:
            monkeypatch.setattr(write_module, "exchange", interrupt)
            monkeypatch.setattr(write_module.os, "replace", interrupt)
            _write(out, 1)
    if err.type is BundleError:
        assert str(out) in str(err.value) and ".tmp-" not in str(err.value)  # names the bundle asked for
    assert load_bundle(out).manifest.version == "0"
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # nothing added, nothing removed
    if target is not None:
        assert os.readlink(out) == target


def test_a_directory_that_is_not_a_bundle_is_not_replaced(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        _write(out, 1)
    assert (out / "notes.txt").read_text() == "mine" and _leftovers(tmp_path) == []


def test_an_empty_directory_is_filled(tmp_path):
    (tmp_path / "b").mkdir()
    assert _write(tmp_path / "b", 3).manifest.version == "3" and _leftovers(tmp_path) == []


def test_a_hand_made_target_is_kept_and_ours_are_removed(tmp_path):
    out = _layout(tmp_path, "symlink")
    _write(out, 1)
    first = os.readlink(out)
    assert (tmp_path / "v0").is_dir() and first.startswith("current-v1-")
    _write(out, 2)
    assert not (tmp_path / first).exists() and os.readlink(out).startswith("current-v2-")


def test_missing_directory_is_reported_after_a_short_look_again(tmp_path):
    """load_bundle looks again for a moment (the two-rename fallback's gap), then says what is wrong."""
    with pytest.raises(BundleError, match="no such directory"):
        load_bundle(tmp_path / "nope")


def test_convert_over_a_symlinked_bundle_swaps_it(vibration_model, tmp_path):
    from converters import write_estimator_bundle

    src = tmp_path / "model.joblib"
    joblib.dump(vibration_model, src)
    write_estimator_bundle(vibration_model, tmp_path / "v1", name="vib", version="1")
    os.symlink(tmp_path / "v1", tmp_path / "current")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "convert",
            str(src),
            "-o",
            str(tmp_path / "current"),
            "--model-version",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(tmp_path / "current").manifest.version == "2"
    assert os.path.isabs(os.readlink(tmp_path / "current"))  # an absolute link stays absolute
    assert load_bundle(tmp_path / "v1").manifest.version == "1" and _leftovers(tmp_path) == []


def test_convert_needs_a_writable_parent_one_line(vibration_model, tmp_path):
    src = tmp_path / "model.joblib"
    joblib.dump(vibration_model, src)
    out = "/proc/self/edge-bundle"  # not writable, even for root
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "must be writable" in proc.stderr


def test_readers_in_other_processes_see_no_mix(tmp_path):
    """The same from separate processes (no shared GIL, real parallelism on two cores), bounded in count."""
    out = _layout(tmp_path, "directory")
    script = (
        "import hashlib, sys\n"
        "from edge_runtime.bundle import load_bundle\n"
        "from edge_runtime.bundle.verify import use_bundle\n"
        "n = 0\n"
        "while n < 300:\n"
        "    v, data = use_bundle(sys.argv[1], lambda b: (b.manifest.version, b.model_path.read_bytes()))\n"
        "    print(v, hashlib.sha256(data).hexdigest(), flush=True)\n"
        "    n += 1\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    done: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
    for p in procs:
        threading.Thread(target=lambda p=p: done.put(p.communicate(timeout=120)), daemon=True).start()
    try:
        v = 0
        while any(p.poll() is None for p in procs) and v < 5000:  # until both readers are done
            v += 1
            _write(out, v % (VERSIONS + 1))
            # Paced: back to back on a loaded machine, swaps could outrun a reader's bounded retries
            # ("replaced 7 times while it was being read"), which is the documented answer, not a mix.
            time.sleep(0.002)
        outputs = [done.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (stdout, stderr), p in zip(outputs, procs):
        assert p.returncode == 0, stderr.decode()[-2000:]
        lines = stdout.decode().split()
        pairs = list(zip(lines[::2], lines[1::2]))
        assert len(pairs) == 300
        assert all(SHAS[int(version)] == sha for version, sha in pairs)
