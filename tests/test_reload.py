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


def test_a_reload_of_an_unchanged_bundle_is_skipped_and_says_so(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    """``{"reload": "*"}`` every few seconds used to redo everything (hash, session, warm-up) for nothing."""
    bundle = tmp_path / "b"
    _version_copy(vibration_bundle, bundle, "3")
    status = collector("edge-runtime/reload-4/status")
    results = collector("results/+/vibration")
    rt = start_runtime(route_config(broker.url, bundle, client_id="reload-4", qos=1))
    status.json_until(lambda b: b["state"] == "online")
    publisher.publish("edge-runtime/reload-4/control", orjson.dumps({"reload": "*"}), qos=1)
    body = status.json_until(lambda b: "reload" in b)
    assert body["reload"] == {"model": "m", "ok": True, "unchanged": True, "serving": "3"}
    assert rt.runtime.reloader.loads == 0
    assert _ask(publisher, results, vibration_data)["version"] == "3"


def test_a_reload_of_a_shadow_model_is_what_the_shadow_runs(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    """A reload of the shadow's bundle reported ok and changed nothing: the shadow kept its old model."""
    _version_copy(vibration_bundle, tmp_path / "s1", "1")
    shadow = tmp_path / "shadow"
    os.symlink(tmp_path / "s1", shadow)
    metrics = collector("edge-runtime/reload-5/metrics")
    status = collector("edge-runtime/reload-5/status")
    results = collector("results/+/vibration")
    config = route_config(
        broker.url, vibration_bundle, client_id="reload-5", qos=1, shadow="s", shadow_fraction=1.0
    ).replace("[[routes]]", f'[[models]]\nname = "s"\nbundle = "{shadow}"\n[metrics]\ninterval_s = 0.2\n[[routes]]')
    rt = start_runtime(config)
    status.json_until(lambda b: b["state"] == "online")
    route = "sensors/+/vibration"

    def shadow_after_asking(version: str) -> dict:
        _ask(publisher, results, vibration_data)
        shadow_of = lambda body: body["routes"][route].get("shadow") or {}  # noqa: E731
        return shadow_of(metrics.json_until(lambda b: shadow_of(b).get("version") == version and shadow_of(b)["rows"]))

    first = shadow_after_asking("1")
    assert first["model"] == "s" and first["version"] == "1" and first["agreement"] == 1.0
    runner = rt.runtime.routes[0].monitors.shadow
    before = runner._run

    _version_copy(vibration_bundle, tmp_path / "s2", "2")
    _swap_symlink(shadow, tmp_path / "s2")
    body = status.json_until(lambda b: "reload" in b)
    assert body["reload"] == {"model": "s", "ok": True, "serving": "2"}
    after = shadow_after_asking("2")  # within 20 s, or the shadow still runs version 1
    assert after["rows"] >= 1 and after["errors"] == 0 and after["agreement"] == 1.0
    assert runner._run is not before  # the runner runs the new instance, the route's own
