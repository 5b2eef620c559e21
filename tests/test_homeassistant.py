"""Home Assistant discovery (#23, #24), through a real Mosquitto: every announcement valid for Home Assistant's
own discovery schemas, every template rendered against the payloads the runtime really publishes, one device
per runtime, ids that no input topic can take over, counts and occupancy at start and after a reconnect, and
announcements bounded, remembered across restarts and removed once idle.

Where ``homeassistant`` is installed (heavy, in no extra: ``pip install homeassistant``), payloads are checked
with its schemas and templates rendered by its template engine; otherwise templates are rendered by jinja2's
sandbox (what Home Assistant's engine is built on) with ``value_json`` parsed as Home Assistant parses it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import payload, route_config

from edge_runtime import __version__
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.serving.discovery import REMOVE, Discovery
from edge_runtime.serving.homeassistant import result_entity
from edge_runtime.serving.homeassistant_events import (
    line_count_discovery,
    object_events_discovery,
    zone_occupancy_discovery,
)
from edge_runtime.tracking.config import TrackingConfig

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = ROOT / "edge_runtime" / "demo_models" / "shapes-detector"
CLASSIFIER = ROOT / "edge_runtime" / "demo_models" / "shapes-classifier"
HAS_HA = importlib.util.find_spec("homeassistant") is not None
needs_ha = pytest.mark.skipif(
    not HAS_HA, reason="homeassistant not installed (pip install homeassistant: heavy, in no extra)"
)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- Home Assistant's side ------------------------------------------------------------------------------------


def ha_accepts(topic: str, config: dict, prefix: str = "homeassistant") -> dict:
    """What Home Assistant makes of a discovery message: its topic parsed by its matcher, the origin and the
    platform's discovery schema applied; every key we sent must survive (the schema drops unknown keys)."""
    from homeassistant.components.mqtt import binary_sensor, event, sensor
    from homeassistant.components.mqtt.discovery import MQTT_ORIGIN_INFO_SCHEMA, TOPIC_MATCHER

    match = TOPIC_MATCHER.match(topic.removeprefix(prefix + "/"))
    assert match is not None, topic
    schema = {"sensor": sensor, "binary_sensor": binary_sensor, "event": event}[match["component"]].DISCOVERY_SCHEMA
    MQTT_ORIGIN_INFO_SCHEMA(config["origin"])
    validated = schema(json.loads(json.dumps(config)))
    assert set(config) <= set(validated), set(config) - set(validated)
    return validated


def render(jobs: list[tuple[str, bytes]], tmp: Path) -> list[str]:
    """Each (template, MQTT payload) rendered as Home Assistant renders an MQTT value template."""
    if HAS_HA:
        return asyncio.run(_render_in_home_assistant(jobs, tmp))
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    out = []
    for template, body in jobs:
        text = body.decode()
        try:
            value_json = json.loads(text)
        except ValueError:
            value_json = None
        out.append(env.from_string(template).render(value=text, value_json=value_json))
    return out


async def _render_in_home_assistant(jobs: list[tuple[str, bytes]], tmp: Path) -> list[str]:
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.template import Template

    hass = HomeAssistant(str(tmp))
    try:
        return [Template(t, hass).async_render_with_possible_json_value(b.decode(), "<default>") for t, b in jobs]
    finally:
        await hass.async_stop(force=True)


# -- the announcements themselves -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, vibration_model, vibration_data, regressor_bundle, vibration_bundle):
    """A bundle per kind of result: classifier, yes/no classifier, regressor, anomaly detector, image classifier
    and detector (the demo ones)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.linear_model import LogisticRegression

    from converters import write_estimator_bundle

    X, y, _, _ = vibration_data
    out = tmp_path_factory.mktemp("ha")
    write_estimator_bundle(LogisticRegression(max_iter=300).fit(X, y == "normal"), out / "normal", name="normal")
    write_estimator_bundle(IsolationForest(random_state=0).fit(X), out / "iso", name="iso")
    return {
        "classifier": vibration_bundle,
        "yes/no": out / "normal",
        "regressor": regressor_bundle,
        "anomaly": out / "iso",
        "image_classifier": CLASSIFIER,
        "detector": DETECTOR,
    }


def _manifest(bundle: Path) -> Manifest:
    return Manifest.model_validate(json.loads((bundle / "manifest.json").read_text()))


def _every_announcement(bundles: dict[str, Path]) -> list[tuple[str, dict]]:
    out = []
    for kind, bundle in bundles.items():
        out += result_entity(
            prefix="homeassistant", node="edge-1", result_topic=f"results/{kind}", manifest=_manifest(bundle)
        )
    out += [
        zone_occupancy_discovery(prefix="homeassistant", node="edge-1", source="door", zone="porch", state_topic="e/z"),
        line_count_discovery(
            prefix="homeassistant", node="edge-1", source="door", line="gate", direction="in", state_topic="e/l"
        ),
        object_events_discovery(prefix="homeassistant", node="edge-1", source="door", events_topic="e/door"),
    ]
    return out


def test_each_task_gets_the_entity_its_results_call_for(bundles):
    by_topic = {c["state_topic"]: (t.split("/")[1], c) for t, c in _every_announcement(bundles)}
    assert by_topic["results/classifier"][0] == "sensor" and "state_class" not in by_topic["results/classifier"][1]
    assert by_topic["results/yes/no"][0] == "binary_sensor"
    assert by_topic["results/anomaly"][0] == "binary_sensor"
    assert by_topic["results/anomaly"][1]["device_class"] == "problem"
    assert by_topic["results/regressor"][1]["state_class"] == "measurement"
    assert by_topic["results/detector"][1]["state_class"] == "measurement"
    assert by_topic["results/image_classifier"][0] == "sensor"
    assert by_topic["e/l"][1]["state_class"] == "total_increasing"
    devices = [c["device"] for _, c in by_topic.values()]
    assert all(d == devices[0] for d in devices)  # one device: no entity overwrites its model or version
    assert devices[0] | {"model": "edge-runtime", "sw_version": __version__} == devices[0]
    assert len({c["unique_id"] for _, c in by_topic.values()}) == len(by_topic)


@needs_ha
def test_every_announcement_passes_home_assistant_s_discovery_schemas(bundles):
    for topic, config in _every_announcement(bundles):
        ha_accepts(topic, config)


def test_topics_differing_only_in_punctuation_are_three_entities_none_can_take_over_another():
    """`results/pump_1/x`, `results/pump 1/x` and `results/pump.1/x` had one config topic and unique_id: the
    last retained announcement pointed the entity at whichever topic announced last."""
    manifest = _manifest(ROOT / "edge_runtime" / "demo_models" / "shapes-classifier")
    topics = ["results/pump_1/x", "results/pump 1/x", "results/pump.1/x", "results/pump/1/x"]
    made = [result_entity(prefix="ha", node="n", result_topic=t, manifest=manifest)[0] for t in topics]
    assert len({topic for topic, _ in made}) == len({c["unique_id"] for _, c in made}) == len(topics)
    assert [c["state_topic"] for _, c in made] == topics
    assert made[0][0].startswith("ha/sensor/n/results_pump_1_x_")  # still readable


def test_event_template_carries_everything_whatever_the_label(tmp_path):
    """Pasted into a JSON string, a label with a quote or a backslash made invalid JSON (Home Assistant dropped
    the event), and entered, left, crossed and box never reached it."""
    cfg = TrackingConfig(
        track=True,
        tracker={"min_hits": 1},
        zones=[{"name": "right", "points": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]], "inertia": 1}],
        lines=[{"name": "gate", "points": [[0.5, 0], [0.5, 1]]}],
    )
    events = cfg.build("door")
    label = 'say "hi" \\ now'
    got = []
    for n in range(12):
        x = 20 + n * 20
        result = {
            "detections": [{"box": [x, 100, x + 40, 140], "label": label, "score": 0.9}],
            "frame": {"width": 320, "height": 240},
        }
        got += events.process(result, timestamp=n / 10).events
    got += events.close().events
    _, config = object_events_discovery(prefix="ha", node="n", source="door", events_topic="events/door")
    rendered = [json.loads(r) for r in render([(config["value_template"], orjson.dumps(e)) for e in got], tmp_path)]
    assert {r["event_type"] for r in rendered} == {"new", "update", "end"} <= set(config["event_types"])
    for event, r in zip(got, rendered):
        assert r["label"] == label and r["box"] == event["box"] and r["zones"] == event["zones"]
        for key in ("entered", "left", "crossed"):
            assert r[key] == event.get(key, [])
        assert {k: v for k, v in r.items() if k not in ("event_type", "entered", "left", "crossed")} == {
            k: v for k, v in event.items() if k not in ("event", "entered", "left", "crossed")
        }
    assert any(r["crossed"] == [{"line": "gate", "direction": "out"}] for r in rendered)
    assert any(r["entered"] == ["right"] for r in rendered)


# -- a runtime's real announcements and payloads --------------------------------------------------------------


@pytest.fixture(scope="module")
def served(broker, tmp_path_factory, bundles, vibration_data):
    """Everything a runtime with one route per kind of result (and a tracked camera) published: (configs by
    topic, payloads by topic in order)."""
    pytest.importorskip("cv2")
    from helpers import Collector, RunningRuntime

    from devices.moving import MovingScene, write_video
    from edge_runtime.mqtt.client import connect_client

    _, _, Xt, _ = vibration_data
    tmp = tmp_path_factory.mktemp("ha-run")
    write_video(MovingScene.crossing(fps=10, objects=2, seed=1), tmp / "door.mp4")
    routes = [
        ("classifier", "sensors/+/vibration", "results/{1}/vibration"),
        ("yes/no", "faults/+/vibration", "faults-out/{1}"),
        ("regressor", "meters/+/x", "values/{1}"),
        ("anomaly", "iso/+/vibration", "anomalies/{1}"),
    ]
    text = f'[broker]\nurl = "{broker.url}"\nclient_id = "t-ha"\n[homeassistant]\ndiscovery = true\n'
    for i, (kind, _, _) in enumerate(routes):
        text += f'[[models]]\nname = "m{i}"\nbundle = "{bundles[kind]}"\n'
    text += f'[[models]]\nname = "shapes"\nbundle = "{DETECTOR}"\n'
    for i, (_, subscribe, publish) in enumerate(routes):
        text += f'[[routes]]\nmodel = "m{i}"\nsubscribe = "{subscribe}"\npublish = "{publish}"\nmax_delay_ms = 0\n'
    text += (
        f'[[routes]]\nmodel = "shapes"\nsource = "{tmp / "door.mp4"}"\nfps = 10\nrealtime = false\n'
        'publish = "detections/{1}"\nmax_batch = 1\ntrack = true\nevents = "events/{1}"\n'
        "[routes.tracker]\nmin_hits = 2\nend_after_s = 1.0\n"
        '[[routes.zones]]\nname = "right"\npoints = [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]\n'
        '[[routes.lines]]\nname = "gate"\npoints = [[0.5, 0], [0.5, 1]]\n'
    )
    everything = Collector(
        broker.url,
        "homeassistant/#",
        "results/#",
        "faults-out/#",
        "values/#",
        "anomalies/#",
        "detections/#",
        "events/#",
    )
    rt = RunningRuntime(text)
    client = connect_client(broker.url)
    try:
        for i in range(3):
            client.publish("sensors/pump/vibration", payload(Xt[i], id=i), qos=1)
            client.publish("faults/pump/vibration", payload(Xt[i], id=i), qos=1)
            client.publish("meters/pump/x", payload(np.linspace(-0.05, 0.05, 10) * (i + 1), id=i), qos=1)
            client.publish("iso/pump/vibration", payload(Xt[i] * (10 if i == 2 else 1), id=i), qos=1)
        stats = rt.runtime.stats
        _wait(lambda: stats()["routes"]["source:door"]["source"]["state"] == "ended", timeout=60)
        _wait(lambda: all(stats()["routes"][s]["results"] == 3 for _, s, _ in routes))
        time.sleep(1.5)  # past end_after_s: the tracks end
    finally:
        client.disconnect()
        client.loop_stop()
        rt.stop()
    time.sleep(0.3)
    messages = list(everything.messages.queue)
    everything.close()
    messages = [m for m in messages if not m.retain]  # retained ones are other tests' (one broker for all)
    cleaner = connect_client(broker.url)  # and leave none of ours behind
    for topic in {m.topic for m in messages if m.topic.startswith(("homeassistant/", "events/"))}:
        cleaner.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    cleaner.disconnect()
    cleaner.loop_stop()
    configs = {m.topic: orjson.loads(m.payload) for m in messages if m.topic.startswith("homeassistant/") and m.payload}
    payloads: dict[str, list[bytes]] = {}
    for m in messages:
        if not m.topic.startswith("homeassistant/"):
            payloads.setdefault(m.topic, []).append(m.payload)
    return configs, payloads


@needs_ha
def test_what_a_runtime_announces_is_valid_for_home_assistant(served):
    configs, _ = served
    assert len(configs) == 5 + 4  # a result entity per route; the camera's events, zone and two line directions
    for topic, config in configs.items():
        ha_accepts(topic, config)


def test_templates_render_what_the_runtime_publishes(served, tmp_path):
    configs, payloads = served
    jobs, checks = [], []

    def check(template: str, body: bytes, expect) -> None:
        jobs.append((template, body))
        checks.append(expect)

    for config in configs.values():
        bodies = payloads[config["state_topic"]]
        for body in bodies if "event_types" in config else bodies[-1:]:
            message = orjson.loads(body)
            check(config["value_template"], body, (config, message))
            if "json_attributes_template" in config:
                check(config["json_attributes_template"], body, ("attributes", message))
    rendered = render(jobs, tmp_path)
    for text, (config, message) in zip(rendered, checks):
        if config == "attributes":
            assert json.loads(text) == message["labels"]
            continue
        if "event_types" in config:
            event = json.loads(text)
            assert event["event_type"] == message["event"] and event["event_type"] in config["event_types"]
            assert event | {"box": message["box"], "zones": message["zones"], "id": message["id"]} == event
        elif config["state_topic"].startswith("events/door/zones/"):
            assert int(text) == message["count"]
        elif config["state_topic"].startswith("events/door/lines/"):
            assert int(text) == message[config["name"].split(" ")[-1]]
        elif "payload_on" in config or config["value_template"].startswith("{{ 'ON'"):
            assert text in ("ON", "OFF")
            truth = message["anomaly"] if "anomaly" in message else bool(message["label"])
            assert (text == "ON") == truth
        elif config.get("state_class") == "measurement" and "value" in message:
            assert float(text) == pytest.approx(message["value"])
        elif "detections" in message:
            assert int(text) == len(message["detections"])
        else:
            assert text == str(message["label"])
        if config.get("state_class"):
            float(text)  # Home Assistant refuses a non-numeric state for a sensor with a state class
        if config.get("json_attributes_topic", "").startswith(("results/", "faults-out/", "values/", "anomalies/")):
            assert message["model"] and message["version"]  # the model and its version, as attributes
    events = [json.loads(t) for t, (c, _) in zip(rendered, checks) if c != "attributes" and "event_types" in c]
    assert any(e["crossed"] for e in events) and any(e["entered"] == ["right"] for e in events)


def test_line_counts_are_published_before_any_crossing(served):
    """Published only on a crossing, a counter was `unknown` in Home Assistant until then, and showed the last
    run's total after a restart."""
    _, payloads = served
    lines = [orjson.loads(b) for b in payloads["events/door/lines/gate"]]
    assert lines[0] | {"in": 0, "out": 0} == lines[0]
    assert lines[-1]["out"] >= 1


# -- counts and occupancy after a reconnection --------------------------------------------------------------


def test_counts_and_occupancy_are_published_at_start_and_again_after_a_reconnection(tmp_path):
    """A broker restarted without persistence loses retained messages: the runtime publishes them again once
    it is back, so Home Assistant's counters are never `unknown`."""
    pytest.importorskip("cv2")
    from helpers import Collector, RunningRuntime

    from edge_runtime.devtools.broker import free_port, start_broker

    port = free_port()
    brokers = [start_broker(port, kind="mosquitto", workdir=tmp_path / "b1")]
    text = (
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\nclient_id = "t-recount"\n'
        f'[[models]]\nname = "shapes"\nbundle = "{DETECTOR}"\n'
        f'[[routes]]\nmodel = "shapes"\nsource = "{tmp_path / "never.mp4"}"\nsource_name = "door"\n'
        'publish = "detections/{1}"\ntrack = true\nevents = "events/{1}"\n'
        '[[routes.zones]]\nname = "porch"\npoints = [[0, 0], [1, 0], [1, 1]]\n'
        '[[routes.lines]]\nname = "gate"\npoints = [[0.5, 0], [0.5, 1]]\n'
    )
    rt = None
    try:
        rt = RunningRuntime(text)

        def retained() -> dict[str, dict]:
            c = Collector(f"mqtt://127.0.0.1:{port}", "events/door/#")
            time.sleep(0.5)
            got = {m.topic: orjson.loads(m.payload) for m in list(c.messages.queue) if m.retain}
            c.close()
            return got

        expected = {
            "events/door/zones/porch": {"zone": "porch", "source": "door", "count": 0, "labels": {}},
            "events/door/lines/gate": {"line": "gate", "source": "door", "in": 0, "out": 0, "labels": {}},
        }
        _wait(lambda: retained() == expected)  # at start: the camera never sent a frame
        brokers[-1].stop()
        brokers.append(start_broker(port, kind="mosquitto", workdir=tmp_path / "b2"))
        _wait(lambda: retained() == expected)
        assert rt.runtime.link.reconnects >= 1
    finally:
        if rt is not None:
            rt.stop()
        brokers[-1].stop()


# -- what was announced: bounded, remembered, removed once idle ---------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _discovery(published: list, clock: _Clock, wall: _Clock, **options) -> Discovery:
    options = {"remove_after_s": 60.0, **options}
    return Discovery(
        prefix="ha",
        node="n",
        publish=lambda topic, body, qos, retain: published.append((topic, body, qos, retain)),
        clock=clock,
        wall_clock=wall,
        **options,
    )


def _config_of(subject: str) -> list[tuple[str, dict]]:
    return [(f"ha/sensor/n/{subject}/config", {"state_topic": subject})]


def test_idle_subjects_are_removed_and_a_restart_still_removes_them(tmp_path):
    published: list = []
    clock, wall = _Clock(), _Clock()
    state = tmp_path / "state" / "homeassistant-n.json"
    d = _discovery(published, clock, wall, state_file=state)
    d.active("a", lambda: _config_of("a"))
    d.active("b", lambda: _config_of("b"))
    assert [(t, q, r) for t, _, q, r in published] == [
        ("ha/sensor/n/a/config", 1, True),
        ("ha/sensor/n/b/config", 1, True),
    ]
    d.active("a", lambda: pytest.fail("announced once per run"))
    clock.t += 40
    wall.t += 40
    d.active("a", lambda: [])
    d.tick()
    clock.t += 30
    wall.t += 30
    d.tick()
    assert published[-1] == ("ha/sensor/n/b/config", REMOVE, 1, True) and "b" not in d and len(d) == 1
    d.close()
    # A restart: the file says "a" was announced, last active 30 s ago; it stays idle and is removed.
    published.clear()
    clock = _Clock()
    again = _discovery(published, clock, wall, state_file=state)
    assert len(again) == 1 and published == []
    clock.t += 10
    again.tick()
    assert published == []
    wall.t += 31
    clock.t += 10
    again.tick()
    assert published == [("ha/sensor/n/a/config", REMOVE, 1, True)]


def test_a_subject_announced_differently_by_the_next_run_removes_what_it_no_longer_has(tmp_path):
    """A model whose results became yes/no: its sensor config is removed, not left beside the binary_sensor."""
    published: list = []
    d = _discovery(published, _Clock(), _Clock(), state_file=tmp_path / "s.json")
    d.active("x", lambda: [("ha/sensor/n/x/config", {}), ("ha/sensor/n/x2/config", {})])
    d.close()
    d2 = _discovery(published, _Clock(), _Clock(), state_file=tmp_path / "s.json")
    d2.active("x", lambda: [("ha/binary_sensor/n/x/config", {})])
    assert published[-3:] == [
        ("ha/binary_sensor/n/x/config", b"{}", 1, True),
        ("ha/sensor/n/x/config", REMOVE, 1, True),
        ("ha/sensor/n/x2/config", REMOVE, 1, True),
    ]


def test_the_announced_set_is_bounded_in_bytes_and_strangers_cannot_push_out_what_is_there():
    published: list = []
    d = _discovery(published, _Clock(), _Clock(), max_bytes=20_000)
    d.active("mine", lambda: _config_of("mine"))
    for i in range(1000):
        d.active(f"flood/{i}", lambda i=i: _config_of(f"flood_{i}"))
    assert d.bytes <= 20_000 and d.refused > 900 and "mine" in d
    announced = {t for t, body, _, _ in published if body}
    assert len(announced) == len(d) < 100


@pytest.mark.parametrize("kind", ["garbage", "symlink", "fifo", "wrong shape"])
def test_a_state_file_that_is_not_ours_is_ignored(tmp_path, kind, caplog):
    state = tmp_path / "homeassistant-n.json"
    if kind == "garbage":
        state.write_bytes(b"\x00{not json")
    elif kind == "symlink":
        state.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(state)
    else:
        state.write_bytes(orjson.dumps({"format": 1, "subjects": [["a", 1.0, "not a list"], ["b", "x", []]]}))
    d = _discovery([], _Clock(), _Clock(), state_file=state)  # returns: a FIFO does not block, /dev/zero is not read
    assert len(d) == 0


def test_a_state_file_that_cannot_be_written_is_said_once(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")
    clock = _Clock()
    d = _discovery([], clock, _Clock(), state_file=blocked / "sub" / "state.json")
    for i in range(3):
        d.active(f"s{i}", lambda: [])
        clock.t += 20
        d.tick()
    assert sum("cannot write" in r.message for r in caplog.records) == 1


def test_a_restarted_runtime_removes_what_the_last_run_announced_once_idle(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    """Every new input topic added a retained discovery config, kept on the broker forever."""
    _, _, Xt, _ = vibration_data
    base = route_config(broker.url, vibration_bundle, client_id="t-ha-idle", qos=1)
    configs = collector("homeassistant/+/t-ha-idle/#")
    results = collector("results/#")
    state = f'[device]\nstate_dir = "{tmp_path}"\n'
    first = start_runtime(base + state + "[homeassistant]\ndiscovery = true\n")
    publisher.publish("sensors/gone/vibration", payload(Xt[0], id=1), qos=1)
    results.take(1)
    ((topic, config),) = configs.json(1)
    assert config["state_topic"] == "results/gone/vibration"
    first.stop()  # the state file says what was announced
    assert (tmp_path / "homeassistant-t-ha-idle.json").is_file()
    start_runtime(base + state + "[homeassistant]\ndiscovery = true\nremove_after_s = 1\n")
    (removal,) = configs.take(1, timeout=15)
    assert (removal.topic, removal.payload) == (topic, b"")
    late = collector("homeassistant/+/t-ha-idle/#")
    time.sleep(0.5)
    assert late.messages.empty()  # nothing retained any more


def test_the_state_is_kept_where_systemd_gives_the_service_a_directory_of_its_own(tmp_path, vibration_bundle):
    """What was announced (and the session's filters) outlive a restart: in systemd's StateDirectory by default,
    or in [device] state_dir, which the unit then makes writable."""
    config = tmp_path / "edge.toml"
    text = route_config("mqtt://127.0.0.1:1883", vibration_bundle, client_id="svc")
    text += "[homeassistant]\ndiscovery = true\n"

    def unit() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edge_runtime", "deploy", "systemd", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    config.write_text(text)
    assert "StateDirectory=edge-runtime" in unit()
    config.write_text(text + '[device]\nstate_dir = "state"\n')
    assert f"ReadWritePaths={(tmp_path / 'state').resolve()}" in unit()
