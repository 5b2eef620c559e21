"""Every paho-mqtt internal the link relies on (edge_runtime/mqtt/_paho.py), exercised against a real broker.

If a paho release renames or changes one of them, these fail loudly, before the runtime misbehaves.
"""

from __future__ import annotations

import threading
import time
import types

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_runtime.mqtt import _paho

pytestmark = pytest.mark.broker


def _client(broker, **kw) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5, **kw)
    c.connect("127.0.0.1", broker.port, keepalive=30)
    deadline = time.monotonic() + 10
    while not c.is_connected() and time.monotonic() < deadline:
        c.loop(0.05)
    assert c.is_connected()
    return c


def _pump(client: mqtt.Client, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        client.loop(0.02)
    assert until()


def test_check_names_what_is_missing():
    _paho.check()  # this paho has everything
    with pytest.raises(ImportError, match=r"lacks _loop_rc_handle.*pip install 'paho-mqtt"):
        _paho.check(types.SimpleNamespace(_sock=None, _sock_close=None))


def test_the_wrapped_socket_carries_the_traffic(broker):
    class Counting:
        def __init__(self, sock):
            self.sock, self.sent = sock, 0

        def send(self, data):
            self.sent += len(data)
            return self.sock.send(data)

        def __getattr__(self, name):
            return getattr(self.sock, name)

    c = _client(broker)
    wrapper = Counting(_paho.socket_of(c))
    _paho.replace_socket(c, wrapper)
    assert c.socket() is wrapper
    info = c.publish("seam/a", b"x", qos=1)
    _pump(c, info.is_published)
    assert wrapper.sent > 0
    c.disconnect()


def test_close_socket_sends_no_disconnect(broker):
    """Closed without DISCONNECT, the broker publishes the client's will; a DISCONNECT would suppress it."""
    got = threading.Event()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    watcher.on_connect = lambda cl, *_: cl.subscribe("seam/will", 1)
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_message = lambda *_: got.set()
    subscribed = threading.Event()
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    try:
        assert subscribed.wait(10)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        c.will_set("seam/will", b"gone", qos=1)
        c.connect("127.0.0.1", broker.port, keepalive=30)
        _pump(c, c.is_connected)
        _paho.close_socket(c)
        assert c.socket() is None
        assert got.wait(10), "no will: the socket was closed with a DISCONNECT, or not at all"
    finally:
        watcher.disconnect()
        watcher.loop_stop()


def test_connection_lost_runs_paho_s_lost_connection_path(broker):
    c = _client(broker)
    seen = []
    c.on_disconnect = lambda _c, _u, _f, reason, _p: seen.append(reason)
    _paho.connection_lost(c)
    assert c.socket() is None and not c.is_connected()
    assert seen, "on_disconnect was not called"


def test_lazy_properties_parse_like_paho_s_and_cost_nothing_when_absent(broker):
    """Every incoming PUBLISH goes through LazyProperties: absent properties are not built, present ones
    are read exactly as paho reads them."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    assert _paho.INSTALLED_IN, "paho parses PUBLISH somewhere we did not patch"
    got = []
    c = _client(broker)
    c.on_message = lambda _c, _u, m: got.append(m)
    c.subscribe("seam/props", 1)
    _pump(c, lambda: True)
    time.sleep(0.2)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "replies/x"
    props.CorrelationData = b"\x00\x01"
    props.UserProperty = [("id", "7"), ("k", "v")]
    c.publish("seam/props", b"with", qos=1, properties=props)
    c.publish("seam/props", b"without", qos=1)
    _pump(c, lambda: len(got) == 2)
    with_props, without = (next(m for m in got if m.payload == p) for p in (b"with", b"without"))
    assert isinstance(with_props.properties, Properties) and isinstance(without.properties, Properties)
    assert with_props.properties.ResponseTopic == "replies/x" and with_props.properties.CorrelationData == b"\x00\x01"
    assert with_props.properties.UserProperty == [("id", "7"), ("k", "v")]
    assert "names" not in vars(without.properties)  # nothing was built
    assert getattr(without.properties, "ResponseTopic", None) is None and without.properties.isEmpty()
    assert str(without.properties) == "[]" and "ResponseTopic" in str(with_props.properties)
    c.disconnect()


def test_read_packet_reads_one_packet_whatever_paho_has_in_flight(broker):
    """paho's loop_read reads one packet per message it has in flight, whatever it is asked: the link reads
    one at a time through the seam, so that its read budget (the runtime's room for inputs) holds."""
    got: list = []
    subscribed = threading.Event()
    c = _client(broker)
    try:
        c.on_message = lambda _c, _u, m: got.append(m)
        c.on_subscribe = lambda *_: subscribed.set()
        c.subscribe("seam/one/#", 1)
        _pump(c, subscribed.is_set)
        for _ in range(30):  # in flight from us: loop_read would now read up to 31 packets per call
            c.publish("seam/other", b"x", qos=1)
        c.loop_write()
        pub = _client(broker)
        for i in range(10):
            pub.publish(f"seam/one/{i}", b"y", qos=1)
            pub.loop(0.01)
        _pump(pub, lambda: not pub._out_messages)
        pub.disconnect()
        time.sleep(0.3)  # everything has arrived in the socket
        reads = 0
        while len(got) < 10 and reads < 200:
            before = len(got)
            assert _paho.read_packet(c) == mqtt.MQTT_ERR_SUCCESS
            assert len(got) - before <= 1
            reads += 1
        assert len(got) == 10
    finally:
        c.disconnect()
