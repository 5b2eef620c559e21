"""Fault tests against real processes, bounded in count and time: nothing accepted is lost.

The test clients must be lossless first (see the field notes): QoS 1 with persistent sessions, a
publisher that leaves to paho what it published while disconnected (paho sends it on connect), and a
collector that drops duplicates by id (duplicates are allowed after a fault and counted).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
from helpers import payload, route_config
from lossless import Results, broker_processes, persistent_client, publish_stream, start_runtime_process, wait_online
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.devtools.broker import find_mosquitto, free_port, start_broker

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto: apt-get install mosquitto"),
]


def test_broker_restart_mid_stream_loses_nothing(own_broker, vibration_bundle, vibration_data, tmp_path):
    port, restart = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    config.write_text(route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-restart", qos=1))
    log = open(tmp_path / "runtime.log", "wb")
    runtime = start_runtime_process(config, log)
    results = None
    try:
        wait_online(port, "t-restart")
        results = Results(port)
        count = 2000
        restarter = threading.Timer(0.8, restart)  # in the middle of a 2 s stream at 1,000 msg/s
        restarter.start()
        publish_stream(port, Xt, count=count, rate=1000)
        restarter.join()
        results.wait_for(count, timeout=40)
        missing = set(range(count)) - results.ids
        assert not missing, f"{len(missing)} inputs never answered, e.g. {sorted(missing)[:10]}"
    finally:
        if results:
            results.close()
        runtime.send_signal(signal.SIGTERM)
        runtime.wait(20)


def test_runtime_sigkill_and_restart_loses_nothing(own_broker, vibration_bundle, vibration_data, tmp_path):
    port, _ = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    config.write_text(
        route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-kill", qos=1, max_delay_ms=5)
    )
    log = open(tmp_path / "runtime.log", "wb")
    procs = [start_runtime_process(config, log)]
    results = None
    try:
        wait_online(port, "t-kill")
        results = Results(port)
        count = 2000

        def kill_and_restart(i):
            if i == 700:
                procs[-1].send_signal(signal.SIGKILL)
                procs[-1].wait(10)
                procs.append(start_runtime_process(config, log))

        publish_stream(port, Xt, count=count, rate=1000, on_tick=kill_and_restart)
        results.wait_for(count, timeout=60)
        missing = set(range(count)) - results.ids
        assert not missing, f"{len(missing)} inputs never answered, e.g. {sorted(missing)[:10]}"
        print(f"duplicates after SIGKILL: {results.duplicates}")
    finally:
        if results:
            results.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)


# -- #13: a backlog served while the runtime is killed, a broker that stops reading, sessions -----------------


def _queue_backlog(port: int, rows, count: int, *, client_id: str, config, log, publish=None) -> None:
    """Start the runtime once (its session now subscribes), stop it cleanly, then queue ``count`` QoS 1 inputs
    for its persistent session while it is away (sensor rows, or what ``publish(port, count)`` sends)."""
    proc = start_runtime_process(config, log)
    try:
        wait_online(port, client_id)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    if publish is not None:
        publish(port, count)
    else:
        publish_stream(port, rows, count=count, rate=20_000)


def _kill_mid_backlog_then_restart(port: int, config, log, ids: set, answered_before_kill: int) -> Results:
    """Serve the queued backlog, SIGKILL the runtime once ``answered_before_kill`` results are seen, start it
    again, and check that every one of ``ids`` is answered. The results, for more checks."""
    results = Results(port)
    procs = [start_runtime_process(config, log)]
    try:
        seen = _kill_when(results, procs[0], answered_before_kill)
        assert seen < len(ids), "the backlog was served before the kill: the test proves nothing"
        procs.append(start_runtime_process(config, log))
        results.wait_for(len(ids), timeout=60)
        missing = ids - results.ids
        assert not missing, f"{len(missing)} inputs never answered (killed after {seen}), e.g. {sorted(missing)[:10]}"
        return results
    finally:
        results.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)


def _kill_when(results: Results, proc: subprocess.Popen, answered: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while len(results.ids) < answered and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return len(results.ids)


def _publish_frames(port: int, count: int) -> None:
    """``count`` small camera frames at QoS 1, ids "0".. in a user property, all acknowledged by the broker."""
    import numpy as np

    from devices.cameras import encode_frame
    from devices.scenes import draw_scene

    rng = np.random.default_rng(2)
    frames = [encode_frame(draw_scene(rng, 160, 120)[0]) for _ in range(4)]
    client = persistent_client(port, f"camera-{uuid.uuid4().hex[:8]}")
    try:
        for i in range(count):
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("id", str(i))]
            client.publish(f"cameras/c{i % 2}/frames", frames[i % 4], qos=1, properties=props)
        deadline = time.monotonic() + 20
        while (client._out_messages or not client.is_connected()) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_camera_route_killed_while_serving_a_backlog_loses_no_frame(own_broker, tmp_path):
    """Image routes run their model on a thread while the loop reads the socket (prefetch.ModelThread): a
    frame read meanwhile must not be acknowledged before its result is, whenever the process dies."""
    from edge_runtime.bench.camera import DEFAULT_DETECTOR

    port, _ = own_broker
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\nclient_id = "t-cam-kill"\n'
        f'[[models]]\nname = "m"\nbundle = "{DEFAULT_DETECTOR}"\n'
        '[[routes]]\nmodel = "m"\nsubscribe = "cameras/+/frames"\npublish = "results/{1}"\nqos = 1\n'
        "max_batch = 4\nmax_delay_ms = 0\nmax_queue = 2000\n"
    )
    count = 800
    with open(tmp_path / "runtime.log", "wb") as log:
        _queue_backlog(port, None, count, client_id="t-cam-kill", config=config, log=log, publish=_publish_frames)
        _kill_mid_backlog_then_restart(port, config, log, {str(i) for i in range(count)}, 150)


@pytest.mark.parametrize("answered_before_kill", [1, 300, 1700])
def test_runtime_killed_while_serving_a_backlog_loses_nothing(
    own_broker, vibration_bundle, vibration_data, tmp_path, answered_before_kill
):
    port, _ = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    config.write_text(route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-backlog", qos=1))
    count = 2000
    with open(tmp_path / "runtime.log", "wb") as log:
        _queue_backlog(port, Xt, count, client_id="t-backlog", config=config, log=log)
        results = _kill_mid_backlog_then_restart(port, config, log, set(range(count)), answered_before_kill)
    # Repeats are stated: redelivered inputs are answered with "repeat": true.
    if results.duplicates:
        assert results.repeat_ids & results.duplicate_ids, "repeats came without the repeat flag"


def test_broker_restarted_while_a_backlog_is_served_loses_nothing(
    own_broker, vibration_bundle, vibration_data, tmp_path
):
    port, restart = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    config.write_text(route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-bbacklog", qos=1))
    count = 2000
    with open(tmp_path / "runtime.log", "wb") as log:
        _queue_backlog(port, Xt, count, client_id="t-bbacklog", config=config, log=log)
        results = Results(port)
        proc = start_runtime_process(config, log)
        try:
            deadline = time.monotonic() + 30
            while len(results.ids) < 200 and time.monotonic() < deadline:
                time.sleep(0.001)
            restart()
            results.wait_for(count, timeout=60)
            missing = set(range(count)) - results.ids
            assert not missing, f"{len(missing)} inputs never answered, e.g. {sorted(missing)[:10]}"
        finally:
            results.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


@pytest.mark.parametrize("then", ["resume", "kill the runtime"])
def test_a_broker_that_stops_reading_gets_no_early_acks(own_broker, vibration_bundle, vibration_data, tmp_path, then):
    """SIGSTOP the broker mid-backlog with a small outgoing queue: results pile up and cannot leave. No input
    may be acknowledged before the broker has its result: after SIGCONT (and, if the runtime was killed in
    the meantime, a restart) every input is answered."""
    port, _ = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    text = route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-stop", qos=1)
    config.write_text(text.replace('client_id = "t-stop"\n', 'client_id = "t-stop"\nmax_outgoing = 50\n'))
    count = 2000
    broker = None
    with open(tmp_path / "runtime.log", "wb") as log:
        _queue_backlog(port, Xt, count, client_id="t-stop", config=config, log=log)
        results = Results(port)
        procs = [start_runtime_process(config, log)]
        try:
            deadline = time.monotonic() + 30
            while len(results.ids) < 100 and time.monotonic() < deadline:
                time.sleep(0.001)
            broker = next(p for p in broker_processes(port))
            broker.send_signal(signal.SIGSTOP)
            time.sleep(2)  # the runtime keeps serving what it had read; nothing can be acknowledged
            if then == "kill the runtime":
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
            broker.send_signal(signal.SIGCONT)
            broker = None
            if then == "kill the runtime":
                procs.append(start_runtime_process(config, log))
            results.wait_for(count, timeout=60)
            missing = set(range(count)) - results.ids
            assert not missing, f"{len(missing)} inputs never answered, e.g. {sorted(missing)[:10]}"
        finally:
            if broker is not None:
                broker.send_signal(signal.SIGCONT)
            results.close()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(20)


def test_a_route_added_while_away_is_subscribed(own_broker, vibration_bundle, vibration_data, tmp_path):
    """The broker resumes the old session with its old subscriptions; the new route must be subscribed anyway."""
    port, _ = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    url = f"mqtt://127.0.0.1:{port}"
    config.write_text(route_config(url, vibration_bundle, client_id="t-added", qos=1))
    with open(tmp_path / "runtime.log", "wb") as log:
        proc = start_runtime_process(config, log)
        wait_online(port, "t-added")
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        extra = '[[routes]]\nmodel = "m"\nsubscribe = "other/+/vibration"\npublish = "results/other/{1}"\nqos = 1\n'
        config.write_text(route_config(url, vibration_bundle, client_id="t-added", qos=1, extra_route=extra))
        proc = start_runtime_process(config, log)
        results = Results(port)
        try:
            wait_online(port, "t-added")
            client = persistent_client(port, f"sensor-{uuid.uuid4().hex[:8]}")
            try:
                time.sleep(0.5)
                client.publish("other/x/vibration", payload(Xt[0], id=7), qos=1).wait_for_publish(10)
            finally:
                client.disconnect()
                client.loop_stop()
            results.wait_for(1, timeout=20)
            assert results.ids == {7}
        finally:
            results.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_a_slow_model_with_a_backlog_keeps_the_connection_and_stops_at_once(
    broker, start_runtime, publisher, vibration_bundle, vibration_data
):
    """500 queued inputs on a model that takes 50 ms per batch is 25 s of work: the loop must keep servicing
    the socket between batches (keep-alive 5 s: the broker drops a silent client after 7.5 s), and stop()
    must take effect within a second, not after the backlog."""
    _, _, Xt, _ = vibration_data
    text = route_config(broker.url, vibration_bundle, client_id="t-slow", qos=1, max_batch=1, max_delay_ms=0)
    rt = start_runtime(text.replace('client_id = "t-slow"\n', 'client_id = "t-slow"\nkeepalive_s = 5\n'))
    engine = rt.runtime.engines["m"]
    fast = engine.run

    def slow(batch):  # fault injection: the model is slow, not wrong
        time.sleep(0.05)
        return fast(batch)

    engine.run = slow
    for i in range(500):
        publisher.publish("sensors/slow/vibration", payload(Xt[i % len(Xt)], id=i), qos=1)
    time.sleep(9)
    link = rt.runtime.link
    assert link.connected and link.counters["reconnects"] == 0, "the broker dropped us for missed keep-alives"
    served = rt.runtime.stats()["routes"]["sensors/+/vibration"]["results"]
    assert 20 < served < 500
    started = time.monotonic()
    rt.runtime.stop()
    rt.thread.join(5)
    assert not rt.thread.is_alive() and time.monotonic() - started < 1.0


def test_a_flooded_route_does_not_starve_another(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    """Routes are served one batch each per round: inputs of a quiet route are answered while a flooded
    route's backlog is still being worked through."""
    _, _, Xt, _ = vibration_data
    extra = (
        '[[routes]]\nmodel = "m"\nsubscribe = "flood/+/vibration"\npublish = "flooded/{1}"\n'
        "max_batch = 4\nmax_delay_ms = 0\nmax_queue = 5000\n"
    )
    rt = start_runtime(
        route_config(broker.url, vibration_bundle, client_id="t-fair", max_batch=4, max_delay_ms=0, extra_route=extra)
    )
    engine = rt.runtime.engines["m"]
    fast = engine.run

    def slow(batch):  # fault injection: a model slow enough for a flood to build a backlog
        time.sleep(0.01)
        return fast(batch)

    engine.run = slow
    quiet = collector("results/#")
    for i in range(2000):
        publisher.publish("flood/x/vibration", payload(Xt[i % len(Xt)], id=i))
    time.sleep(0.3)  # the flood is queued in the runtime
    for i in range(8):
        publisher.publish("sensors/q/vibration", payload(Xt[i], id=f"q{i}"))
    assert sorted(b["id"] for _, b in quiet.json(8, timeout=20)) == [f"q{i}" for i in range(8)]
    flooded = rt.runtime.stats()["routes"]["flood/+/vibration"]
    assert flooded["queue"]["depth"] > 1000, "the flood had drained: the test proves nothing"


def test_held_inputs_are_never_acknowledged_into_a_new_session(
    vibration_bundle, vibration_data, tmp_path, start_runtime
):
    """The broker restarts without persistence while the runtime holds QoS 1 inputs: their packet ids mean
    nothing in the new session, so they are answered but never acknowledged."""
    _, _, Xt, _ = vibration_data
    port = free_port()
    brokers = [start_broker(port, kind="mosquitto", workdir=tmp_path / "b1")]
    try:
        rt = start_runtime(
            route_config(
                f"mqtt://127.0.0.1:{port}",
                vibration_bundle,
                client_id="t-newsession",
                qos=1,
                max_batch=100,
                max_delay_ms=4000,
            )
        )
        client = persistent_client(port, f"sensor-{uuid.uuid4().hex[:8]}")
        try:
            deadline = time.monotonic() + 10
            while not client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.02)
            for i in range(5):
                client.publish("sensors/h/vibration", payload(Xt[i], id=i), qos=1).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()
        time.sleep(0.3)  # held in the batcher, waiting for the 4 s window
        brokers[0].stop()  # no persistence: the session and its packet ids are gone
        brokers.append(start_broker(port, kind="mosquitto", workdir=tmp_path / "b2"))
        link = rt.runtime.link

        def settled() -> bool:  # served (maybe while away), then skipped once the new session is there
            served = rt.runtime.stats()["routes"]["sensors/+/vibration"]["results"]
            return served >= 5 and link.counters["acks_skipped_new_session"] >= 5 and link.connected

        deadline = time.monotonic() + 20
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rt.runtime.stats()["routes"]["sensors/+/vibration"]["results"] == 5
        assert link.counters["acks_skipped_new_session"] == 5 and link.connected
    finally:
        for b in brokers:
            b.stop()


class _V311OnlyProxy:
    """A broker that refuses MQTT v5 as such (CONNACK 0x84) and serves v3.1.1: a proxy in front of a real
    Mosquitto that answers v5 CONNECTs itself and pipes everything else through."""

    def __init__(self, broker_port: int):
        self.broker_port = broker_port
        self.v5_refused = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            head = client.recv(4096)  # the CONNECT, whole: it is small and sent at once
            # fixed header (1 byte + remaining length), protocol name (2 + 4 bytes "MQTT"), then the level
            i = 1
            while head[i] & 0x80:
                i += 1
            level = head[i + 1 + 6]
            if level == 5:
                self.v5_refused += 1
                client.sendall(b"\x20\x03\x00\x84\x00")  # CONNACK: unsupported protocol version
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            upstream.sendall(head)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self):
        """Drop every connection (the runtime reconnects)."""
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # close() alone would not wake the pipe thread blocked in recv
                s.close()
        self.conns.clear()

    def close(self):
        self._stop = True
        self.server.close()
        self.cut()


def test_v5_falls_back_to_3_1_1_only_when_refused_and_is_tried_again(
    broker, start_runtime, vibration_bundle, vibration_data, collector, publisher
):
    _, _, Xt, _ = vibration_data
    proxy = _V311OnlyProxy(broker.port)
    try:
        rt = start_runtime(route_config(f"mqtt://127.0.0.1:{proxy.port}", vibration_bundle, client_id="t-v311"))
        assert proxy.v5_refused == 1 and rt.runtime.link.protocol == MQTTProtocolVersion.MQTTv311
        results = collector("results/#")
        publisher.publish("sensors/v/vibration", payload(Xt[0], id="v311"))
        assert results.json(1)[0][1]["id"] == "v311"
        proxy.cut()  # a new connection starts from v5 again (the broker may have been upgraded meanwhile)
        deadline = time.monotonic() + 20
        while not (proxy.v5_refused >= 2 and rt.runtime.link.connected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.v5_refused >= 2 and rt.runtime.link.connected
        publisher.publish("sensors/v/vibration", payload(Xt[1], id="again"))
        assert results.json(1)[0][1]["id"] == "again"
    finally:
        proxy.close()


class _BrokenPipe:
    """A socket whose writes fail as a reset connection's do (fault injection: the rest is the real socket)."""

    def __init__(self, sock):
        self._sock = sock

    def send(self, data):
        raise BrokenPipeError(32, "Broken pipe")

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_write_that_fails_in_our_buffer_is_a_lost_connection_not_a_crash(broker, collector):
    """EPIPE while our send buffer is full used to propagate out of Link.publish (and end the runtime's loop);
    it is a lost connection: the link reconnects and what was not acknowledged leaves again."""
    from edge_runtime.mqtt import _paho
    from edge_runtime.mqtt.client import broker_config
    from edge_runtime.mqtt.link import MqttLink

    got = collector("big/#")
    link = MqttLink(broker_config(broker.url), on_message=lambda _m: None)
    link.connect()
    try:
        buffered = _paho.socket_of(link.client)
        buffered._sock = _BrokenPipe(buffered._sock)
        safe: list[int] = []
        for i in range(3):  # 600 KB each: the third finds our 1 MB buffer full and flushes it
            assert link.publish(f"big/{i}", bytes(600_000), 1, on_done=lambda r, i=i: safe.append(i)) is None
        deadline = time.monotonic() + 20
        while len(safe) < 3 and time.monotonic() < deadline:
            link.poll(0.05)
        assert sorted(safe) == [0, 1, 2] and link.counters["disconnects"] >= 1
        assert sorted(m.topic for m in got.take(3, timeout=10)) == ["big/0", "big/1", "big/2"]
    finally:
        link.close()


class _StalledUplinkProxy:
    """Pipes a client to a real Mosquitto; while ``hold`` is set, nothing the client sends is passed on (a
    stalled uplink): the broker still delivers inputs, but never sees, nor acknowledges, the results."""

    def __init__(self, broker_port: int):
        self.broker_port = broker_port
        self.hold = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.hold), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(a, b, hold):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                while hold is not None and hold.is_set():  # held, even what was read as it was set
                    time.sleep(0.02)
                b.sendall(data)
        except OSError:
            pass

    def close(self):
        self.server.close()
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_errors_for_qos0_inputs_never_grow_the_outgoing_queue_past_its_bound(
    broker, start_runtime, vibration_bundle, vibration_data, publisher
):
    """Errors are answered on arrival, before backpressure can hold inputs back. Published at the route's
    QoS 1 they were never dropped: a flood of bad QoS 0 inputs while results could not leave grew the
    outgoing queue without bound. Now they are dropped and counted (outgoing_full) once it is full."""
    _, _, Xt, _ = vibration_data
    proxy = _StalledUplinkProxy(broker.port)
    try:
        text = route_config(
            f"mqtt://127.0.0.1:{proxy.port}", vibration_bundle, client_id="t-errbound", qos=1, max_payload_bytes=2000
        )
        rt = start_runtime(text.replace('client_id = "t-errbound"\n', 'client_id = "t-errbound"\nmax_outgoing = 50\n'))
        proxy.hold.set()
        for i in range(40):  # results: 20 in flight (Mosquitto's window), then 20 waiting
            publisher.publish("sensors/e/vibration", payload(Xt[i % len(Xt)], id=i), qos=0)
        for _ in range(400):  # too large: each answered with an error at once
            publisher.publish("sensors/e/vibration", b"x" * 3000, qos=0)
        stats = rt.runtime.stats
        deadline = time.monotonic() + 20
        while stats()["routes"]["sensors/+/vibration"]["received"] < 440 and time.monotonic() < deadline:
            time.sleep(0.05)
        route = stats()["routes"]["sensors/+/vibration"]
        assert route["received"] == 440
        assert rt.runtime.link.state()["outgoing"] <= 50
        assert route["errors"] == {"too_large": 400}
        # all but what fit in the queue's bound and the broker's window (20 in flight)
        assert route["dropped"].get("outgoing_full", 0) >= 400 - 50 - 20
        proxy.hold.clear()  # the uplink comes back: what was kept leaves
        assert rt.thread.is_alive()
    finally:
        proxy.close()


def test_an_input_is_acknowledged_once_and_only_while_it_is_held(broker, publisher):
    """A second ack of an input (or one after its packet id was reused by the broker) must not PUBACK the id
    again: it would acknowledge whichever input holds that id now, before its result is safe."""
    from edge_runtime.mqtt.client import broker_config
    from edge_runtime.mqtt.link import MqttLink

    got: list = []
    link = MqttLink(broker_config(broker.url), on_message=got.append, subscriptions=[("acks/#", 1)])
    link.connect()
    while not link.subscribed:
        link.poll(0.05)
    try:
        publisher.publish("acks/a", b"a", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            link.poll(0.05)
        (first,) = got
        link.ack(first)
        link.ack(first)
        assert link.counters["acks_not_held"] == 1 and link.state()["held_inputs"] == 0
    finally:
        link.close()


def test_packet_ids_that_wrap_round_never_acknowledge_the_wrong_message(broker):
    """paho numbers QoS 0 and QoS 1 messages from one counter that wraps at 65,535, and reports a QoS 0 write
    through on_publish: with one QoS 1 result unacknowledged for 65,535 publishes, the write that reused its
    id was taken for its PUBACK, and its input acknowledged before the result was safe."""
    from edge_runtime.mqtt.client import broker_config
    from edge_runtime.mqtt.link import MqttLink

    proxy = _StalledUplinkProxy(broker.port)
    link = MqttLink(broker_config(f"mqtt://127.0.0.1:{proxy.port}"), on_message=lambda _m: None)
    try:
        link.connect()
        proxy.hold.set()  # nothing reaches the broker: the QoS 1 message stays unacknowledged
        safe: list[str] = []
        link.publish("wrap/first", b"1", 1, on_done=lambda r: safe.append("first"))
        for _ in range(65_535):
            link.publish("wrap/x", b"", 0)
            link.poll(0)
        assert safe == [] and link.counters["waits_for_packet_id"] > 0
        proxy.hold.clear()
        deadline = time.monotonic() + 20
        while (not safe or link.pending_out()) and time.monotonic() < deadline:
            link.poll(0.05)
        assert safe == ["first"] and link.pending_out() == 0
    finally:
        link.close()
        proxy.close()
