"""Hot reload against a real broker: a swapped bundle is served after its checks; a bad one never is."""

from __future__ import annotations

import json
import os
import shutil

import orjson
from helpers import payload, route_config


def _ask(publisher, collector_results, vibration_data, topic="sensors/a/vibration") -> dict:
    _, _, Xt, _ = vibration_data
    publisher.publish(topic, payload(Xt[0], id="q"), qos=1).wait_for_publish(5)
    return collector_results.json(1)[0][1]


def _version_copy(src, dst, version: str):
    shutil.copytree(src, dst)
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = version
    path.write_text(json.dumps(manifest))


def _swap_symlink(link, target):
    """How a deploy swaps a bundle atomically: a new symlink renamed over the old one."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def test_swapped_bundle_is_served_and_a_corrupt_one_is_not(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    _version_copy(vibration_bundle, tmp_path / "v3", "3")
    current = tmp_path / "current"
    os.symlink(tmp_path / "v3", current)
    status = collector("edge-runtime/reload-1/status")
    results = collector("results/+/vibration")
    rt = start_runtime(route_config(broker.url, current, client_id="reload-1", qos=1))
    status.json_until(lambda b: b["state"] == "online")
    assert _ask(publisher, results, vibration_data)["version"] == "3"

    _version_copy(vibration_bundle, tmp_path / "v4", "4")
    _swap_symlink(current, tmp_path / "v4")
    body = status.json_until(lambda b: "reload" in b)
    assert body["reload"] == {"model": "m", "ok": True, "serving": "4"} and body["models"] == {"m": "4"}
    assert _ask(publisher, results, vibration_data)["version"] == "4"

    _version_copy(vibration_bundle, tmp_path / "v5", "5")
    model = tmp_path / "v5" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # a copy cut short
    _swap_symlink(current, tmp_path / "v5")
    body = status.json_until(lambda b: b.get("reload", {}).get("ok") is False)
    assert body["reload"]["serving"] == "4" and "checksum mismatch" in body["reload"]["reason"]
    assert _ask(publisher, results, vibration_data)["version"] == "4"  # the old model goes on serving
    assert rt.runtime.stats()["routes"]["sensors/+/vibration"]["errors"] == {}


def test_reload_on_the_control_topic(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    bundle = tmp_path / "b"
    _version_copy(vibration_bundle, bundle, "3")
    status = collector("edge-runtime/reload-2/status")
    results = collector("results/+/vibration")
    config = route_config(broker.url, bundle, client_id="reload-2", qos=1).replace(
        'name = "m"\n', 'name = "m"\nwatch = false\n'
    )
    start_runtime(config)
    status.json_until(lambda b: b["state"] == "online")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = "7"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert _ask(publisher, results, vibration_data)["version"] == "3"  # not watched: nothing happens by itself

    publisher.publish("edge-runtime/reload-2/control", b"not json", qos=1)  # ignored, and the runtime goes on
    publisher.publish("edge-runtime/reload-2/control", orjson.dumps({"reload": "m"}), qos=1)
    body = status.json_until(lambda b: "reload" in b)
    assert body["reload"] == {"model": "m", "ok": True, "serving": "7"}
    assert _ask(publisher, results, vibration_data)["version"] == "7"


def test_a_bundle_the_routes_cannot_use_leaves_the_old_model_serving(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    """The bundle verifies, but a route cannot use it (a drift reference of another format): the swap used to
    raise on the loop thread, after the engine had been replaced, and end the runtime."""
    _version_copy(vibration_bundle, tmp_path / "v1", "1")
    current = tmp_path / "current"
    os.symlink(tmp_path / "v1", current)
    status = collector("edge-runtime/reload-3/status")
    results = collector("results/+/vibration")
    rt = start_runtime(route_config(broker.url, current, client_id="reload-3", qos=1))
    status.json_until(lambda b: b["state"] == "online")
    _version_copy(vibration_bundle, tmp_path / "v2", "2")
    manifest = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    manifest["reference"] = {"format": 999}
    (tmp_path / "v2" / "manifest.json").write_text(json.dumps(manifest))
    _swap_symlink(current, tmp_path / "v2")
    body = status.json_until(lambda b: b.get("reload", {}).get("ok") is False)
    assert body["reload"]["serving"] == "1" and "cannot serve this config" in body["reload"]["reason"]
    assert _ask(publisher, results, vibration_data)["version"] == "1"
    assert rt.thread.is_alive() and rt.runtime.engines["m"].manifest.version == "1"
