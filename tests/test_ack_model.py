"""The acknowledgement promise under any interleaving, on every device profile, without a broker.

A Hypothesis state machine drives a real Runtime (real models, real routes, real delivery state) through a fake
link whose broker model (fakelink.py) delivers inputs of every kind, acknowledges the runtime's messages with
success and failure reason codes, drops connections, resumes or loses sessions, and restarts the runtime. After
every step the wire is checked: no QoS 1 input acknowledged before an answer to it was safe (or an error
answering it was refused for good), no input answered more often than it was delivered, no acknowledgement
into a session that does not hold the input. At the end, with the broker accepting everything again, every
QoS 1 input of the session is acknowledged: a backlog is paced, never stuck.

The real-broker fault tests (test_faults.py) kill real processes; this one covers the interleavings they cannot
reach in a few seconds.
"""

from __future__ import annotations

from typing import ClassVar

import orjson
import pytest
from fakelink import BrokerModel, Copy, FakeLink
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from devices.profiles import known_profiles
from edge_runtime.config import parse_config
from edge_runtime.serving.models import load_model
from edge_runtime.serving.reload import Outcome
from edge_runtime.serving.runtime import Runtime

PROFILES = list(known_profiles())
CODES = [None, 0x10, 0x80, 0x97, 0x87, 0x95]  # success, no subscribers (success), transient, permanent


class AckMachine(RuleBasedStateMachine):
    profile = "generic-x86-64"
    bundle = ""
    rows: ClassVar[list] = []

    def __init__(self):
        super().__init__()
        self.broker = BrokerModel()
        self.clock = [0.0]
        self.runtime: Runtime | None = None
        self.uid = 0
        self.routes: list[tuple[str, int]] = []

    # -- set up -----------------------------------------------------------------------------

    @initialize(
        overflow=st.sampled_from(["drop_oldest", "reject", "latest_only"]),
        max_queue=st.sampled_from([None, 2, 5]),
        qos=st.sampled_from([(1, 1), (1, 0), (0, 1)]),
        overlap=st.booleans(),
        max_batch=st.sampled_from([1, 4]),
        deadline=st.sampled_from([None, 1.0]),
    )
    def start(self, overflow, max_queue, qos, overlap, max_batch, deadline):
        self.routes = [("a", qos[0])] + ([("b", qos[1])] if overlap else [])
        text = (
            '[broker]\nurl = "mqtt://127.0.0.1:1"\nclient_id = "model"\n'
            f'[device]\nprofile = "{self.profile}"\n[metrics]\ninterval_s = 0\n'
            f'[[models]]\nname = "m"\nbundle = "{self.bundle}"\nwatch = false\n'
        )
        filters = {"a": "sensors/+/vibration", "b": "sensors/+/#"}
        for name, route_qos in self.routes:
            text += (
                f'[[routes]]\nmodel = "m"\nsubscribe = "{filters[name]}"\n'
                f'publish = "results/{{1}}/{name}"\nerrors = "errors/{{1}}/{name}"\nqos = {route_qos}\n'
                f'max_batch = {max_batch}\nmax_delay_ms = 0\noverflow = "{overflow}"\nmax_payload_bytes = 4096\n'
                + (f"max_queue = {max_queue}\n" if max_queue else "")
                + (f"deadline_ms = {deadline}\n" if deadline else "")
            )
        self.config = parse_config(text)
        self.overlap = overlap
        self._start_runtime()

    def _start_runtime(self):
        self.runtime = Runtime(self.config, link=lambda spec: FakeLink(spec, self.broker, clock=lambda: self.clock[0]))
        self.runtime.start()

    def teardown(self):
        if self.runtime is not None:
            try:
                self._settle()
            finally:
                self.runtime.shutdown()

    # -- the world's moves ------------------------------------------------------------------

    @rule(n=st.integers(1, 12), kind=st.sampled_from(["ok", "ok", "ok", "bad", "big", "props"]), qos=st.integers(0, 1))
    def publish(self, n, kind, qos):
        for _ in range(n):
            self.uid += 1
            uid = f"u{self.uid}"
            payload = {
                "ok": orjson.dumps({"id": uid, "values": [float(v) for v in self.rows[self.uid % len(self.rows)]]}),
                "bad": b"{not json",
                "big": b"x" * 5000,
                "props": orjson.dumps({"id": uid, "values": [0.0]}),
            }[kind]
            copies = [
                Copy(
                    uid,
                    f"sensors/{uid}/vibration",
                    payload,
                    min(qos, route_qos),
                    name,
                    i + 1 if self.overlap else None,
                    property_bytes=9000 if kind == "props" else 0,
                )
                for i, (name, route_qos) in enumerate(self.routes)
            ]
            self.broker.publish_input(copies if self.overlap else copies[:1])

    @rule(n=st.integers(1, 30), respect_window=st.sampled_from([True, True, True, False]))
    def deliver(self, n, respect_window):
        self.broker.deliver(n, respect_window=respect_window)

    @rule()
    def control_message(self):
        if self.broker.connected:
            self.broker.publish_input([Copy("control", "edge-runtime/model/control", b"{}", 1, "control", None)])

    @rule(turns=st.integers(1, 4))
    def serve(self, turns):
        for _ in range(turns):
            self.runtime.turn()

    @rule(n=st.integers(1, 20), code=st.sampled_from(CODES))
    def broker_acknowledges(self, n, code):
        self.broker.puback(n, code)

    @rule(seconds=st.sampled_from([0.3, 1.0, 20.0]))
    def time_passes(self, seconds):
        self.clock[0] += seconds  # transient refusals are retried after their backoff

    @rule()
    def connection_drops(self):
        self.broker.drop_connection()

    @rule(session_present=st.sampled_from([True, True, False]))
    def reconnect(self, session_present):
        self.broker.reconnect(session_present=session_present)

    @rule()
    def reload(self):
        engine = load_model(self.config, "m", self.runtime.profile).engine
        self.runtime.reloader.outcomes.put(Outcome("m", engine))
        self.runtime.turn()

    @rule()
    def restart(self):
        self.runtime.stop()
        self.runtime.shutdown()
        self.clock[0] += 1
        self._start_runtime()

    # -- the promises -----------------------------------------------------------------------

    @invariant()
    def acknowledged_only_when_answered_and_held(self):
        assert not self.broker.violations, self.broker.violations[:3]

    @invariant()
    def answered_no_more_often_than_delivered(self):
        b = self.broker
        for key, seqs in b.answers.items():
            allowed = b.deliveries[key] + b.result_refused[key]
            assert len(seqs) <= allowed, f"{key} answered {len(seqs)} times for {allowed} deliveries (and refusals)"

    def _settle(self):
        """The broker accepts everything from now on: every QoS 1 input of the session must end acknowledged."""
        b, rt = self.broker, self.runtime
        if not b.connected:
            b.reconnect(session_present=True)
        for _ in range(400):
            b.deliver(1000)
            rt.turn()
            b.puback(1000, None)
            self.clock[0] += 30
            if not b.backlog and not b.unacked and not b.redeliver and not b.inflight and rt.link.pending_out() == 0:
                break
        assert not b.unacked and not b.backlog, (
            f"{len(b.unacked)} QoS 1 inputs never acknowledged, {len(b.backlog)} never delivered "
            f"(e.g. {[c.uid for c in list(b.unacked.values())[:5]]})"
        )


@pytest.mark.parametrize("profile", PROFILES)
def test_no_input_is_acknowledged_before_its_answer_is_safe(profile, vibration_bundle, vibration_data):
    _, _, Xt, _ = vibration_data

    class Machine(AckMachine):
        pass

    Machine.profile = profile
    Machine.bundle = str(vibration_bundle)
    Machine.rows = [list(r) for r in Xt[:20]]
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=12,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=True,
        ),
    )
