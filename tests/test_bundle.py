import json
import shutil
import subprocess
import sys

import joblib
import numpy as np
import pytest
from helpers import identity_model

from edge_runtime.bundle import load_bundle, sign_manifest
from edge_runtime.engines import Engine
from edge_runtime.errors import BundleError


@pytest.fixture
def bundle_copy(vibration_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(vibration_bundle, out)
    return out


def test_converted_bundle_matches_sklearn(vibration_bundle, vibration_model, vibration_data):
    _, _, Xt, _ = vibration_data
    engine = Engine(load_bundle(vibration_bundle))
    results = engine.task.results(engine.manifest, engine.run(Xt), [None] * len(Xt))
    assert [r["label"] for r in results] == list(vibration_model.predict(Xt))
    np.testing.assert_allclose([r["scores"] for r in results], vibration_model.predict_proba(Xt), atol=1e-5)


def test_tampered_model_is_refused(bundle_copy):
    with open(bundle_copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle_copy)


def test_missing_and_broken_manifest(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="no such directory"):
        load_bundle(tmp_path / "nope")
    (bundle_copy / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not readable JSON"):
        load_bundle(bundle_copy)


def test_model_file_outside_the_bundle_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["model_file"] = "../elsewhere.onnx"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy)


def test_signature_is_checked_when_a_key_is_configured(bundle_copy):
    with pytest.raises(BundleError, match="unsigned"):
        load_bundle(bundle_copy, signing_key=b"k")
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["signature"] = sign_manifest(manifest, b"k")
    path.write_text(json.dumps(manifest))
    assert load_bundle(bundle_copy, signing_key=b"k").manifest.signature
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle_copy, signing_key=b"other")
    manifest["labels"] = list(reversed(manifest["labels"]))  # tampering with the manifest breaks the signature
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle_copy, signing_key=b"k")


def test_bundles_are_signed_from_the_cli_for_runtimes_that_check(bundle_copy, vibration_model, tmp_path):
    """signing_key_env asked for a signed bundle, and the error said `edge-runtime sign`, which did not exist."""
    import os

    env = {**os.environ, "EDGE_SIGNING_KEY": "s3cret"}

    def cli(*args, env=env):
        return subprocess.run([sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, env=env)

    with pytest.raises(BundleError, match="edge-runtime sign") as refused:
        load_bundle(bundle_copy, signing_key=b"s3cret")
    assert "--key-env" in str(refused.value)
    done = cli("sign", str(bundle_copy), "--key-env", "EDGE_SIGNING_KEY")
    assert done.returncode == 0, done.stderr
    assert load_bundle(bundle_copy, signing_key=b"s3cret").manifest.signature
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle_copy, signing_key=b"other")

    missing = cli("sign", str(bundle_copy), "--key-env", "EDGE_NO_SUCH_KEY")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "EDGE_NO_SUCH_KEY" in missing.stderr

    source = tmp_path / "model.joblib"
    joblib.dump(vibration_model, source)
    converted = cli("convert", str(source), "-o", str(tmp_path / "signed"), "--signing-key-env", "EDGE_SIGNING_KEY")
    assert converted.returncode == 0, converted.stderr
    assert load_bundle(tmp_path / "signed", signing_key=b"s3cret").manifest.signature


def test_manifest_not_matching_model_is_refused(bundle_copy):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"][0]["name"] = "something_else"
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match the model"):
        Engine(load_bundle(bundle_copy))


def test_convert_cli_from_a_pickle(vibration_model, vibration_data, tmp_path):
    _, _, Xt, _ = vibration_data
    src = tmp_path / "model.joblib"
    joblib.dump(vibration_model, src)
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    engine = Engine(load_bundle(out))
    results = engine.task.results(engine.manifest, engine.run(Xt), [None] * len(Xt))
    assert [r["label"] for r in results] == list(vibration_model.predict(Xt))


@pytest.mark.parametrize(
    "content,words",
    [
        (b"not a pickle", "not a readable pickle"),
        (None, "no such file"),
    ],
)
def test_convert_cli_bad_source_is_one_line(tmp_path, content, words):
    src = tmp_path / "model.pkl"
    if content is not None:
        src.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and words in proc.stderr


def test_unsupported_estimator_is_one_line(tmp_path):
    from sklearn.cluster import SpectralClustering
    from sklearn.datasets import load_iris

    X, _ = load_iris(return_X_y=True)
    src = tmp_path / "spectral.pkl"
    joblib.dump(SpectralClustering(n_clusters=3).fit(X), src)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


# -- the model is checked before any ONNX Runtime session exists ------------------------------------


def _rewrite_model(bundle, data: bytes) -> None:
    """Replace the model and fix its checksum, as a careless (or hostile) bundle builder would."""
    import hashlib

    (bundle / "model.onnx").write_bytes(data)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_model_is_refused_before_a_session(bundle_copy, damage, monkeypatch):
    import onnxruntime

    data = (bundle_copy / "model.onnx").read_bytes()
    _rewrite_model(
        bundle_copy, {"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage]
    )

    def no_session(*a, **k):  # fault injection: prove the check comes first
        raise AssertionError("a session was created for a corrupt model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    with pytest.raises(BundleError, match="not a valid ONNX model"):
        load_bundle(bundle_copy)


def test_manifest_shape_not_matching_model_is_refused(bundle_copy):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"][0]["shape"] = [None, 15]
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(bundle_copy)


def _model_with_external_weights(tmp_path, location: str) -> bytes:
    """A real ONNX model (y = x @ W) whose W lives in an external file named ``location``."""
    return identity_model(external=location)


def _external_bundle(tmp_path, location: str, extra_files=None):
    from edge_runtime.bundle import write_bundle

    manifest = {
        "name": "ext",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
    }
    return write_bundle(
        tmp_path / "bundle", _model_with_external_weights(tmp_path, location), manifest, extra_files=extra_files
    )


def test_external_data_inside_the_bundle_is_served_and_checksummed(tmp_path):
    weights = (np.eye(4, dtype=np.float32) * 2).tobytes()
    bundle = _external_bundle(tmp_path, "weights.bin", {"weights.bin": weights})
    np.testing.assert_allclose(Engine(bundle).run(np.ones((1, 4), np.float32))["y"], [[2, 2, 2, 2]])
    (bundle.path / "weights.bin").write_bytes((np.eye(4, dtype=np.float32) * 3).tobytes())  # weights swapped
    with pytest.raises(BundleError, match=r"checksum mismatch: weights\.bin"):
        load_bundle(bundle.path)


def _hand_made_bundle(tmp_path, location: str):
    """A bundle directory put together by hand (not by write_bundle): the model and a manifest, no files listed."""
    import hashlib

    root = tmp_path / "bundle"
    root.mkdir(exist_ok=True)
    model = _model_with_external_weights(tmp_path, location)
    (root / "model.onnx").write_bytes(model)
    manifest = {
        "name": "ext",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
        "sha256": hashlib.sha256(model).hexdigest(),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(root)


def test_external_data_without_a_checksum_is_refused(tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "weights.bin").write_bytes(np.eye(4, dtype=np.float32).tobytes())
    with pytest.raises(BundleError, match="no checksum"):
        _hand_made_bundle(tmp_path, "weights.bin")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "missing"])
def test_external_data_reaching_outside_is_refused(tmp_path, how):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.eye(4, dtype=np.float32).tobytes())
    (tmp_path / "bundle").mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(outside), "symlink": "weights.bin", "missing": "gone.bin"}[
        how
    ]
    if how == "symlink":  # write_bundle writes no symlinks: a bundle put together by hand
        (tmp_path / "bundle" / "weights.bin").symlink_to(outside)
    with pytest.raises(BundleError, match="external data") as err:
        (_hand_made_bundle if how == "symlink" else _external_bundle)(tmp_path, location)
    assert "self-contained" in str(err.value)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]  # no temporary left
