"""Bad input on the command line is one line (`edge-runtime: error: ...`, exit status 2), never a traceback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import route_config

import edge_runtime

DEMO_MODELS = Path(edge_runtime.__file__).parent / "demo_models"
CLASSIFIER = DEMO_MODELS / "shapes-classifier"
DETECTOR = DEMO_MODELS / "shapes-detector"
# Runs the CLI with OpenCV unimportable, as on a device installed without the [camera] extra.
NO_OPENCV = "import sys; sys.modules['cv2'] = None; from edge_runtime.cli import main; sys.exit(main(sys.argv[1:]))"


def cli(*args: str, without_opencv: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    head = ["-c", NO_OPENCV] if without_opencv else ["-m", "edge_runtime"]
    return subprocess.run(
        [sys.executable, *head, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.startswith("edge-runtime: error: ") and out.stderr.count("\n") == 1, out.stderr
    for w in words:
        assert w in out.stderr, out.stderr


def usage_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    """argparse's own errors (a value of the wrong form): usage and one error line, status 2."""
    assert "Traceback" not in out.stderr and out.returncode == 2, out.stderr
    for w in words:
        assert w in out.stderr, out.stderr


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


# -- an image bundle on an install without OpenCV --------------------------------------------------------

CAMERA_HINT = "pip install 'edge-runtime[camera]'"


def test_image_bundle_without_opencv(tmp_path):
    config = _config(
        tmp_path,
        f'[broker]\nurl = "mqtt://127.0.0.1:1"\nclient_id = "nocv"\n[[models]]\nname = "d"\nbundle = "{DETECTOR}"\n'
        '[[routes]]\nsubscribe = "cameras/+/frames"\nmodel = "d"\npublish = "det/{1}"\n',
    )
    one_line_error(cli("run", config, "--validate-config", without_opencv=True), CAMERA_HINT)
    one_line_error(cli("run", config, "--duration", "1", without_opencv=True), CAMERA_HINT)
    one_line_error(cli("bench", "model", CLASSIFIER, "--duration", "0.1", without_opencv=True), CAMERA_HINT)
    one_line_error(cli("simulate", "camera", "--duration", "1", without_opencv=True), CAMERA_HINT)
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.png").write_bytes(base64.b64decode(_PNG))
    out = cli(
        "convert", DETECTOR / "model.onnx", "-o", tmp_path / "out", "--quantize", "static", "--calibration", frames,
        without_opencv=True,
    )  # fmt: skip
    one_line_error(out, CAMERA_HINT)


# a 1x1 PNG
_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_bench_model_serves_image_bundles(tmp_path):
    """It fed image models JSON rows and no frame metadata, and died with AttributeError."""
    out = cli("bench", "model", DETECTOR, "--duration", "0.3", "--batch-sizes", "1,2", "--json", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert [b["batch"] for b in json.loads((tmp_path / "r.json").read_text())["batches"]] == [1, 2]


# -- a bad --broker URL, for every command that takes one --------------------------------------------------

BROKER_COMMANDS = [
    ["status"],
    ["simulate", "sensors"],
    ["simulate", "camera"],
    ["simulate", "fleet"],
    ["simulate", "record", "--topic", "a", "-o", "{tmp}/r.jsonl", "--count", "1"],
    ["simulate", "replay", "{tmp}/missing.jsonl"],
]


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(
    ("url", "words"),
    [("http://127.0.0.1:1883", "use mqtt://"), ("mqtt://127.0.0.1:99999", "bad port"), ("mqtt://:1883", "no host")],
)
def test_bad_broker_url_is_one_line(tmp_path, command, url, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    one_line_error(cli(*args, "--broker", url), "--broker: ", words)


# -- TLS files the runtime cannot use ----------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "not PEM"])
def test_run_with_bad_tls_files_is_one_line(tmp_path, vibration_bundle, content):
    ca = tmp_path / "ca.crt"
    if content is not None:
        ca.write_bytes(content)
    text = route_config("mqtts://127.0.0.1:1", vibration_bundle, client_id="tls-bad").replace(
        'client_id = "tls-bad"\n', f'client_id = "tls-bad"\nca_file = "{ca}"\n'
    )
    one_line_error(cli("run", _config(tmp_path, text), "--duration", "1"), "broker.ca_file")


# -- output paths that cannot be written -----------------------------------------------------------------


def test_unwritable_outputs_are_one_line_before_any_work(tmp_path, vibration_bundle):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    nowhere = blocker / "out"  # under a regular file: no user, root included, can write there
    config = _config(tmp_path, route_config("mqtt://127.0.0.1:1", vibration_bundle, client_id="unwritable"))
    cases = [
        (["convert", CLASSIFIER / "model.onnx", "-o", nowhere], "-o/--output"),
        (["convert", CLASSIFIER / "model.onnx", "-o", blocker], "-o/--output"),
        (["simulate", "record", "--topic", "a", "-o", nowhere, "--count", "1", "--broker", "mqtt://127.0.0.1:1"], "-o"),
        (["run", config, "--stats-json", nowhere, "--duration", "1"], "--stats-json"),
        (["run", config, "--stats-json", tmp_path, "--duration", "1"], "--stats-json"),
        (["bench", "model", CLASSIFIER, "--json", nowhere], "--json"),
        (["bench", "e2e", "--config", config, "--json", nowhere], "--json"),
        (["deploy", "systemd", config, "-o", nowhere], "-o/--output"),
    ]
    for args, option in cases:
        start = time.monotonic()
        out = cli(*args)
        one_line_error(out, option)
        assert time.monotonic() - start < 60


# -- simulate fleet, record and replay -------------------------------------------------------------------


def test_more_faults_than_devices_is_one_line():
    out = cli(
        "simulate", "fleet", "--devices", "2", "--faults", "silent,garbage,burst", "--broker", "mqtt://127.0.0.1:1"
    )
    one_line_error(out, "--faults lists 3", "has 2")


def test_a_bad_record_filter_or_replay_topic_is_one_line(tmp_path):
    out = cli("simulate", "record", "--topic", "a/#/b", "-o", tmp_path / "r.jsonl", "--count", "1")
    one_line_error(out, "--topic 'a/#/b'", "last one")
    (tmp_path / "ok.jsonl").write_text('{"t": 0, "topic": "a", "payload": ""}\n')
    one_line_error(cli("simulate", "replay", tmp_path / "ok.jsonl", "--topic", "a/#"), "--topic 'a/#'")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b'{"t": 0, "topic": "a/#", "payload": ""}', "topic: a topic to publish on cannot contain"),
        (b'{"t": "soon", "topic": "a", "payload": ""}', "t: "),
        (b'{"t": 1e308, "topic": "a", "payload": ""}', "t: "),
        (b'{"t": 0, "topic": "", "payload": ""}', "topic: "),
        (b'{"t": 0, "topic": "a", "payload": "", "qos": 7}', "qos: "),
        (b'{"t": 0, "topic": "a", "payload": "***"}', "base64"),
        (b'{"t": 0, "topic": "a", "payload": "", "user_properties": [[1, 2, 3]]}', "user_properties"),
        (b"\xff\xfe", "Invalid JSON"),
        (b"[1, 2]", "object"),
    ],
)
def test_a_bad_recording_is_one_line_naming_file_and_line(tmp_path, line, words):
    good = json.dumps({"t": 0, "topic": "a", "payload": ""}).encode()
    path = tmp_path / "rec.jsonl"
    path.write_bytes(good + b"\n" + line + b"\n")
    one_line_error(cli("simulate", "replay", path, "--broker", "mqtt://127.0.0.1:1"), f"{path}:2:", words)


def test_simulators_stop_on_time_at_a_rate_they_cannot_keep(broker):
    for command in (["simulate", "fleet", "--devices", "2"], ["simulate", "sensors", "--devices", "1"]):
        start = time.monotonic()
        out = cli(*command, "--rate", "1000000", "--duration", "1", "--broker", broker.url, timeout=60)
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - start < 30  # it used to send the whole schedule, minutes late


# -- numbers out of range --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["broker", "--port", "70000"], "a port is 1 to 65535"),
        (["bench", "model", str(CLASSIFIER), "--threads", "100000"], "at most 64 threads"),
        (["simulate", "sensors", "--rate", "1e-300"], "a rate is"),
        (["simulate", "fleet", "--rate", "1e300"], "a rate is"),
        (["simulate", "camera", "--mjpeg", "70000"], "a port is 1 to 65535"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(args, words):
    usage_error(cli(*args, timeout=60), words)


def test_bench_e2e_data_that_does_not_fit_the_model_is_one_line(tmp_path, vibration_bundle):
    config = _config(tmp_path, route_config("mqtt://127.0.0.1:1", vibration_bundle, client_id="e2e-data"))
    np.save(tmp_path / "wrong.npy", np.zeros((5, 3), np.float32))
    (tmp_path / "text.npy").write_text("hello")
    for data, words in (("wrong.npy", "the model takes"), ("text.npy", "not a readable .npy array")):
        out = cli("bench", "e2e", "--config", config, "--data", tmp_path / data, "--duration", "1")
        one_line_error(out, f"--data {tmp_path / data}", words)


# -- bench camera --baseline-model ----------------------------------------------------------------------


def test_camera_bench_baseline_model_is_checked_before_anything_runs(tmp_path, vibration_bundle):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    one_line_error(cli("bench", "camera", "--baseline-model", junk), "ONNX Runtime cannot load it")
    other = vibration_bundle / json.loads((vibration_bundle / "manifest.json").read_text())["model_file"]
    one_line_error(cli("bench", "camera", "--baseline-model", other), "does not take this bundle's frames")
    one_line_error(
        cli("bench", "camera", "--source", "synthetic", "--baseline-model", DETECTOR / "model.onnx"),
        "drop --source and --no-stages",
    )


def test_camera_bench_runs_bare_onnx_runtime_on_the_baseline_model():
    pytest.importorskip("cv2")
    from edge_runtime.bench.camera import measure_stages

    model = DETECTOR / json.loads((DETECTOR / "manifest.json").read_text())["model_file"]
    out, bare = measure_stages(DETECTOR, width=160, height=120, threads=1, duration=0.2, frames=2, baseline_model=model)
    assert out["baseline_model"] == str(model)
    bare["onnxruntime_all_cores"]()


@pytest.mark.parametrize("kind", ["e2e", "suite"])
def test_bench_without_its_config_file_is_one_line(tmp_path, kind):
    one_line_error(cli("bench", kind, "--config", tmp_path / "missing.toml"), "no config file at", "--config PATH")
