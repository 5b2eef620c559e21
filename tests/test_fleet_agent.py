"""The fleet agent against a real Mosquitto, without a runtime: a host of the tests' own plays the serving side.

Releases are published with ``publish_release`` (what ``edge-runtime publish`` runs); the agent downloads,
verifies, asks its host to shadow and promote or drop, and says what it did on the broker.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import orjson
import pytest
from helpers import Collector

from converters.release import publish_release
from edge_runtime.bundle import TrustedKeys, load_bundle, sign_bundle
from edge_runtime.bundle.signing import new_key_pair
from edge_runtime.config import BrokerConfig
from edge_runtime.errors import BundleError, EdgeRuntimeError
from edge_runtime.fleet.agent import FleetAgent, live_bundles
from edge_runtime.fleet.archive import pack_bundle
from edge_runtime.fleet.config import FleetConfig
from edge_runtime.fleet.host import ShadowReport
from edge_runtime.fleet.judge import is_canary
from edge_runtime.fleet.record import (
    Plan,
    canonical,
    chunk_message,
    chunk_topic,
    models_topic,
    release_topic,
    verdict_topic,
)
from edge_runtime.mqtt.client import connect_client

pytestmark = pytest.mark.broker

PLAN = dict(canary=1.0, window_rows=50, min_rows=10, min_agreement=0.9, window_s=30)


class TestHost:
    """The serving side as the agent sees it: versions, a shadow whose report the test sets, promotions."""

    __test__ = False

    def __init__(self, trusted: TrustedKeys, version: str = "3"):
        self.trusted = trusted
        self.version = version
        self.report: ShadowReport | None = None
        self.shadowing: str | None = None
        self.events: list[str] = []
        self.lock = threading.Lock()

    def live_version(self, model):
        return self.version

    def load(self, model, bundle):
        try:
            return load_bundle(bundle, trusted_keys=self.trusted).manifest
        except BundleError as err:
            raise BundleError(str(err), bundle=str(bundle)) from None

    def start_shadow(self, model, candidate, *, fraction):
        self.shadowing = candidate.version
        self.events.append(f"shadow {candidate.version}")

    def shadow_report(self, model):
        return self.report if self.shadowing else None

    def stop_shadow(self, model):
        self.events.append(f"stop {self.shadowing}")
        self.shadowing = None

    def promote(self, model, candidate, bundle):
        self.events.append(f"promote {candidate.version}")
        self.version, self.shadowing = candidate.version, None


@pytest.fixture(scope="module")
def key_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def keys(key_folder):
    return new_key_pair(key_folder / "r.key", key_folder / "r.pub")


@pytest.fixture(scope="module")
def versions(vibration_bundle, keys, tmp_path_factory):
    """The vibration bundle as versions 3 (what devices start with), 4 and 5, signed."""
    root = tmp_path_factory.mktemp("versions")
    out = {}
    for version in ("3", "4", "5"):
        path = root / f"v{version}"
        shutil.copytree(vibration_bundle, path)
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["version"] = version
        (path / "manifest.json").write_text(json.dumps(manifest))
        sign_bundle(path, private_key=keys)
        out[version] = path
    return out


class Device:
    def __init__(self, broker, keys, versions, tmp_path, *, group, name=None, **fleet):
        name = name or f"{group[:40]}-device"  # retained state of another test's device is not this one's
        self.trusted = TrustedKeys([keys.public_raw])
        self.host = TestHost(self.trusted)
        self.config = FleetConfig(group=group, dir=tmp_path / name, max_download_kb_s=100_000, **fleet)
        self.agent = FleetAgent(
            self.config,
            device=name,
            broker=BrokerConfig(url=broker.url, client_id=name),
            trusted=self.trusted,
            host=self.host,
            models={"m": versions["3"]},
        )
        self.states = Collector(broker.url, models_topic(name))
        self.agent.start()

    def wait_phase(self, phase: str, timeout: float = 20.0) -> dict:
        return self.states.json_until(lambda b: b["models"]["m"]["phase"] == phase, timeout=timeout)["models"]["m"]

    def stop(self):
        self.agent.stop()
        self.states.close()


@pytest.fixture
def device(broker, keys, versions, tmp_path, request):
    made: list[Device] = []

    def make(**kw):
        kw.setdefault("group", request.node.name.removeprefix("test_")[:60])
        d = Device(broker, keys, versions, tmp_path, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def _publish(broker, keys, bundle, group, downgrade=False, **plan):
    plan = Plan(**{**PLAN, **plan})
    return publish_release(
        bundle, broker=broker.url, group=group, key=keys, model="m", plan=plan, chunk_kb=16, downgrade=downgrade
    )


def _retained(broker, topic: str) -> bytes | None:
    got = Collector(broker.url, topic)
    try:
        return got.take(1, timeout=2)[0].payload
    except AssertionError:
        return None
    finally:
        got.close()


def test_a_canary_promotes_a_release_that_agrees_and_says_so(broker, keys, versions, device):
    d = device()
    d.host.report = ShadowReport(rows=60, agreed=59, errors=0, live_p95_ms=1.0, shadow_p95_ms=1.1, drift_alerts=0)
    group = d.config.group
    record = _publish(broker, keys, versions["4"], group).record
    state = d.wait_phase("promoted")
    assert state["actual"] == "4" and state["previous"] == "3" and d.host.events == ["shadow 4", "promote 4"]
    verdict = orjson.loads(_retained(broker, verdict_topic(group, "m", record.release, d.agent.device)))
    assert verdict["verdict"] == "promoted" and verdict["canary"] and verdict["agreement"] > 0.9
    kept = d.agent.store.load_state().models["m"]
    assert kept.live.version == "4" and Path(kept.live.path).is_dir()
    # what a restart serves: the promoted version, verified again
    assert live_bundles(d.config, {"m": versions["3"]}, d.trusted) == {"m": Path(kept.live.path)}


def test_a_canary_rolls_back_a_release_that_disagrees(broker, keys, versions, device):
    d = device()
    d.host.report = ShadowReport(rows=30, agreed=3, errors=0, live_p95_ms=1.0, shadow_p95_ms=1.0, drift_alerts=0)
    record = _publish(broker, keys, versions["4"], d.config.group).record
    state = d.wait_phase("rolled_back")
    assert state["actual"] == "3" and d.host.events == ["shadow 4", "stop 4"]
    verdict = orjson.loads(_retained(broker, verdict_topic(d.config.group, "m", record.release, d.agent.device)))
    assert verdict["verdict"] == "rolled_back" and "disagreed" in verdict["reason"]
    assert not list((d.config.dir / "versions" / "m").iterdir())  # nothing of it left on disk


def test_the_rest_wait_for_the_canaries_then_install(broker, keys, versions, device):
    name = next(f"rest-{i}" for i in range(100) if not is_canary(f"rest-{i}", 0.5))
    d = device(name=name)
    group = d.config.group
    record = _publish(broker, keys, versions["4"], group, canary=0.5, rest="direct").record
    assert d.wait_phase("waiting")["desired"] == "4"
    time.sleep(0.5)
    assert d.host.events == []  # nothing downloaded or tried before a canary says so
    canary = connect_client(broker.url)
    verdict = {"device": "c1", "release": record.release, "version": "4", "verdict": "promoted", "canary": True}
    canary.publish(verdict_topic(group, "m", record.release, "c1"), orjson.dumps(verdict), qos=1, retain=True)
    canary.disconnect()
    canary.loop_stop()
    assert d.wait_phase("promoted")["actual"] == "4"
    assert d.host.events == ["promote 4"]  # directly, as the plan says


def test_a_release_rolled_back_by_a_canary_is_never_installed_by_the_rest(broker, keys, versions, device):
    name = next(f"rest-{i}" for i in range(100) if not is_canary(f"rest-{i}", 0.5))
    d = device(name=name)
    group = d.config.group
    record = _publish(broker, keys, versions["4"], group, canary=0.5).record
    d.wait_phase("waiting")
    bad = {"device": "c1", "release": record.release, "version": "4", "verdict": "rolled_back", "canary": True}
    client = connect_client(broker.url)
    client.publish(verdict_topic(group, "m", record.release, "c1"), orjson.dumps(bad), qos=1, retain=True)
    client.disconnect()
    client.loop_stop()
    assert d.wait_phase("skipped")["actual"] == "3" and d.host.events == []


def test_replayed_older_and_tampered_records_are_refused(broker, keys, versions, device, tmp_path):
    d = device()
    d.host.report = ShadowReport(rows=60, agreed=60, errors=0, live_p95_ms=1.0, shadow_p95_ms=1.0, drift_alerts=0)
    group = d.config.group
    _publish(broker, keys, versions["4"], group)
    old = _retained(broker, release_topic(group, "m"))
    d.wait_phase("promoted")
    _publish(broker, keys, versions["5"], group)
    d.wait_phase("promoted", timeout=20)
    assert d.host.version == "5"
    alerts = Collector(broker.url, f"edge-runtime/{d.agent.device}/alerts")
    client = connect_client(broker.url)
    other = new_key_pair(tmp_path / "x.key", tmp_path / "x.pub")
    changed, stranger = orjson.loads(old), orjson.loads(old)
    changed["record"]["version"] = "6"
    stranger["record"]["issued"] += 10**9
    stranger["key_id"], stranger["signature"] = other.key_id, other.sign(canonical(stranger["record"]))
    try:
        for payload, why in [
            (old, "a replay"),  # version 4's record, as it was published
            (orjson.dumps(changed), "does not match"),
            (orjson.dumps(stranger), f"unknown key {other.key_id}"),
        ]:
            client.publish(release_topic(group, "m"), payload, qos=1, retain=True)
            d.states.json_until(lambda b, why=why: why in (b["models"]["m"]["note"] or ""), timeout=10)
            alert = orjson.loads(alerts.take(1)[0].payload)
            assert alert["kind"] == "release_refused" and why in alert["reason"]
        assert d.host.version == "5" and d.host.events[-1] == "promote 5"
    finally:
        client.disconnect()
        client.loop_stop()
        alerts.close()


def test_a_tampered_chunk_is_refused_and_reported_then_fetched_again(broker, keys, versions, device):
    group = "tampered-chunk"
    record = _publish(broker, keys, versions["4"], group).record
    archive = pack_bundle(versions["4"]).archive
    good = archive[record.chunk_size : 2 * record.chunk_size]
    bad = bytearray(good)
    bad[100] ^= 0xFF
    client = connect_client(broker.url)
    topic = chunk_topic(group, "m", record.release, 1)
    client.publish(topic, chunk_message(1, bytes(bad)), qos=1, retain=True).wait_for_publish(5)
    alerts = Collector(broker.url, f"edge-runtime/{group}-device/alerts")
    d = device(group=group)
    d.host.report = ShadowReport(rows=60, agreed=60, errors=0, live_p95_ms=1.0, shadow_p95_ms=1.0, drift_alerts=0)
    try:
        alert = orjson.loads(alerts.take(1, timeout=20)[0].payload)
        assert alert["kind"] == "release_refused" and "chunk 1" in alert["reason"]
        assert "tampered" in alert["reason"]
        client.publish(topic, chunk_message(1, good), qos=1, retain=True).wait_for_publish(5)
        state = d.wait_phase("promoted", timeout=30)
        assert state["actual"] == "4"
        assert d.agent.counters["chunks_refused"] >= 1
    finally:
        client.disconnect()
        client.loop_stop()
        alerts.close()


def test_a_release_larger_than_the_disk_bound_is_refused_before_download(broker, keys, versions, device):
    d = device(max_disk_mb=0.05)
    record = _publish(broker, keys, versions["4"], d.config.group).record
    state = d.wait_phase("refused")
    assert "fleet.max_disk_mb" in state["note"] and d.host.events == []
    assert not (d.config.dir / "downloads" / record.release).exists()
    verdict = orjson.loads(_retained(broker, verdict_topic(d.config.group, "m", record.release, d.agent.device)))
    assert verdict["verdict"] == "refused"


def test_publish_and_rehearsal_mistakes_are_one_line(broker, keys, key_folder, versions, vibration_bundle):
    import subprocess
    import sys

    key_file = key_folder / "r.key"

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done
        return done.stderr

    publish = ["publish", "--fleet", "cli-mistakes", "--key", str(key_file), "--broker", broker.url]
    assert "--canary:" in cli(*publish, str(versions["4"]), "--canary", "2")
    assert "not signed with a key" in cli(*publish, str(vibration_bundle))
    publish_release(versions["5"], broker=broker.url, group="cli-mistakes", key=keys, chunk_kb=16)
    assert "is not newer (publish it with --downgrade" in cli(*publish, str(versions["4"]))
    assert "--runtimes needs --bundle" in cli("simulate", "fleet", "--runtimes", "2")


def test_a_downgrade_must_say_so_and_comes_from_the_version_kept(broker, keys, versions, device):
    d = device()
    d.host.report = ShadowReport(rows=60, agreed=60, errors=0, live_p95_ms=1.0, shadow_p95_ms=1.0, drift_alerts=0)
    group = d.config.group
    _publish(broker, keys, versions["4"], group)
    d.wait_phase("promoted")
    _publish(broker, keys, versions["5"], group)
    d.states.json_until(lambda b: b["models"]["m"]["actual"] == "5", timeout=20)
    fetched = d.agent.counters["chunks_fetched"]
    with pytest.raises(EdgeRuntimeError, match="--downgrade"):  # the publisher refuses it first
        _publish(broker, keys, versions["4"], group)
    _publish(broker, keys, versions["4"], group, downgrade=True)
    state = d.states.json_until(lambda b: b["models"]["m"]["actual"] == "4", timeout=20)["models"]["m"]
    assert state["phase"] == "promoted" and state["previous"] == "5"
    assert d.agent.counters["chunks_fetched"] == fetched  # version 4 was kept on disk: nothing downloaded


def test_two_releases_racing_are_resolved_by_version_order(broker, keys, versions, device):
    from edge_runtime.fleet.record import sign_record

    d = device()
    group = d.config.group
    four = _publish(broker, keys, versions["4"], group).record
    d.wait_phase("shadowing")  # judged on nothing yet: the host reports no rows
    _publish(broker, keys, versions["5"], group)  # a newer one while 4 is being tried: 4 is dropped for it
    d.states.json_until(lambda b: b["models"]["m"]["desired"] == "5", timeout=20)
    d.host.report = ShadowReport(rows=60, agreed=60, errors=0, live_p95_ms=1.0, shadow_p95_ms=1.0, drift_alerts=0)
    d.wait_phase("promoted")
    # 4's record again, issued after 5's (not a replay) but not a downgrade: it loses to the version serving
    late = four.model_copy(update={"issued": four.issued + 10**7})
    client = connect_client(broker.url)
    client.publish(release_topic(group, "m"), sign_record(late, keys), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    note = d.states.json_until(lambda b: "not newer" in (b["models"]["m"]["note"] or ""), timeout=10)["models"]["m"]
    assert note["actual"] == "5"
    assert d.host.events == ["shadow 4", "stop 4", "shadow 5", "promote 5"]
