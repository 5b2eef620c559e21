import json
import shutil
import subprocess
import sys

import joblib
import numpy as np
import pytest

from edge_runtime.bundle import load_bundle, sign_manifest
from edge_runtime.engine import Engine
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
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    engine = Engine(load_bundle(out))
    results = engine.task.results(engine.manifest, engine.run(Xt), [None] * len(Xt))
    assert [r["label"] for r in results] == list(vibration_model.predict(Xt))


@pytest.mark.parametrize("content,words", [
    (b"not a pickle", "not a readable pickle"),
    (None, "no such file"),
])
def test_convert_cli_bad_source_is_one_line(tmp_path, content, words):
    src = tmp_path / "model.pkl"
    if content is not None:
        src.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and words in proc.stderr


def test_unsupported_estimator_is_one_line(tmp_path):
    from sklearn.cluster import SpectralClustering
    from sklearn.datasets import load_iris

    X, _ = load_iris(return_X_y=True)
    src = tmp_path / "spectral.pkl"
    joblib.dump(SpectralClustering(n_clusters=3).fit(X), src)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(src), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
