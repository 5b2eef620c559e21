"""A bundle's files cannot block, fill memory or lead outside it: each is opened without following symlinks,
without blocking, checked to be a regular file and size-capped before it is read (the manifest first).

``load_bundle`` runs in a child process with a memory limit and a timeout: a runtime that read these files
as before would hang on the FIFO or grow on ``/dev/zero`` until the limit, and the test says so."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import identity_model

from edge_runtime.bundle import _files as files_module
from edge_runtime.bundle import load_bundle, write_bundle
from edge_runtime.errors import BundleError
from edge_runtime.serving.models import LoadedModel
from edge_runtime.serving.reload import Reloader, fingerprint

MANIFEST = {
    "name": "m",
    "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
}
_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from edge_runtime.bundle import load_bundle
from edge_runtime.errors import BundleError
try:
    load_bundle(sys.argv[1])
except BundleError as err:
    print("refused:", err)
else:
    print("loaded")
"""


@pytest.fixture
def bundle(tmp_path) -> Path:
    return write_bundle(tmp_path / "b", identity_model(), MANIFEST, extra_files={"report.json": b"{}"}).path


def _load_in_child(path: Path) -> str:
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("load_bundle blocked for 60 s")
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def _replace(path: Path, how: str, tmp_path: Path) -> None:
    path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "link-inside":  # even a link to a good copy in the bundle: files are the bundle's own
        (path.parent / "copy").write_bytes(identity_model())
        path.symlink_to(path.parent / "copy")
    elif how == "huge":  # sparse: 2 GiB on disk costs nothing, read it would
        with open(path, "wb") as f:
            f.truncate(files_module.MAX_FILE_BYTES + 1)


@pytest.mark.parametrize(
    ("name", "how", "words"),
    [
        ("manifest.json", "fifo", "manifest.json is not a regular file (a FIFO)"),
        ("manifest.json", "dev-zero", "manifest.json is a symlink"),
        ("model.onnx", "fifo", "model.onnx is not a regular file (a FIFO)"),
        ("model.onnx", "dev-zero", "model.onnx is a symlink"),
        ("model.onnx", "link-inside", "model.onnx is a symlink"),
        ("model.onnx", "huge", "more than the 2147483647"),
        ("report.json", "fifo", "report.json is not a regular file"),
        ("report.json", "dev-zero", "report.json is a symlink"),
    ],
)
def test_a_file_that_is_not_a_regular_file_of_the_bundle_is_refused_unread(bundle, tmp_path, name, how, words):
    _replace(bundle / name, how, tmp_path)
    said = _load_in_child(bundle)
    assert said.startswith("refused:") and words in said, said


def test_a_directory_inside_the_bundle_reached_through_a_symlink_is_refused(tmp_path):
    """External weights in ``weights/w.bin`` where ``weights`` is a symlink (here to another directory of the
    bundle: one that leads outside is refused as such)."""
    model = identity_model(external="weights/w.bin")
    weights = np.eye(4, dtype="<f4").tobytes()
    path = write_bundle(tmp_path / "b", model, MANIFEST, extra_files={"weights/w.bin": weights}).path
    assert load_bundle(path).manifest.name == "m"
    (path / "weights").rename(path / "real")
    (path / "weights").symlink_to(path / "real")
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(path)


def test_the_bundle_directory_itself_may_be_a_symlink(bundle, tmp_path):
    """How deploys swap bundles: a symlink renamed over the old one. That link is followed; files inside are not."""
    link = tmp_path / "current"
    link.symlink_to(bundle)
    loaded = load_bundle(link)
    assert loaded.manifest.name == "m" and loaded.fingerprint == fingerprint(link)


def _unblock(fifo: Path) -> None:
    """Release a reader blocked opening ``fifo`` (what the old code did): open it for writing, then close."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader is blocked on it
    os.close(fd)


def test_the_reload_thread_is_not_blocked_by_a_fifo_manifest(bundle):
    from edge_runtime.engines import Engine

    reloader = Reloader(
        {"m": bundle}, lambda _n: LoadedModel(Engine(load_bundle(bundle))), watched={"m"}, poll_s=0.05, min_interval_s=0
    )
    manifest = bundle / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    reloader.start()
    try:
        assert fingerprint(bundle) is None
        reloader.request("m")
        try:
            outcome = reloader.outcomes.get(timeout=10)
        except queue.Empty:
            pytest.fail("the reload thread is blocked on the FIFO")
        assert outcome.engine is None and "not a regular file" in (outcome.reason or "")
    finally:
        stopper = threading.Thread(target=reloader.close)
        stopper.start()
        stopper.join(3)
        while stopper.is_alive():
            _unblock(manifest)
            stopper.join(0.2)
