"""A topic is a stranger's text: in the human-readable log it can never start a line of its own.

Mosquitto refuses topics with control characters, but not every broker does: amqtt passes a newline or an
escape sequence through, and so would a topic a stranger chose reach the log. Topics are logged with %r,
and the text formatter escapes whatever control characters are left in a message (the second line of
defence); a traceback's lines are indented, so none can pass for a record either.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import pytest
from helpers import Collector, payload, route_config

from edge_runtime.cli.main import TextFormatter
from edge_runtime.devtools.broker import start_broker

FORGED = "2030-01-01 00:00:00,000 INFO edge_runtime: all good"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "edge_runtime", "levelno": logging.WARNING, "levelname": "WARNING", "msg": msg, "args": args}
        | ({"exc_info": exc_info} if exc_info else {})
    )


def test_the_text_formatter_keeps_a_record_on_one_line():
    hostile = f"s/a\n{FORGED}\r\x1b[2J\x85\u2028/x"
    out = TextFormatter().format(_record("input from %s refused", hostile))
    assert out.count("\n") == 0 and not any(c in out for c in "\r\x1b\x85\u2028")
    assert out.endswith(
        r"input from s/a\n2030-01-01 00:00:00,000 INFO edge_runtime: all good\r\x1b[2J\x85\u2028/x refused"
    )


def test_a_traceback_follows_indented_and_escaped():
    try:
        raise ValueError(f"bad topic\n{FORGED}")
    except ValueError:
        out = TextFormatter().format(_record("decoding failed", exc_info=sys.exc_info()))
    first, *rest = out.split("\n")
    assert RECORD.match(first) and rest
    assert all(line.startswith("    ") for line in rest), rest
    assert not any(RECORD.match(line) for line in rest)


@pytest.mark.broker
def test_a_topic_with_a_newline_does_not_forge_a_log_line(tmp_path, vibration_bundle, start_runtime, caplog):
    pytest.importorskip("amqtt")
    with start_broker(kind="amqtt", workdir=tmp_path) as broker:
        text = route_config(broker.url, vibration_bundle, client_id="t-forge")
        start_runtime(text.replace("[[models]]", 'protocol = "3.1.1"\n[[models]]', 1))
        errors = Collector(broker.url, "errors/#")
        pub = Collector(broker.url, "unused/none")
        topic = f"sensors/a\n{FORGED}\x1b[31m/vibration"
        try:
            with caplog.at_level(logging.WARNING, logger="edge_runtime"):
                pub.client.publish(topic, payload([1.0, 2.0], id="forger"), qos=1)
                (msg,) = errors.take(1, timeout=20)
                time.sleep(0.2)
        finally:
            errors.close()
            pub.close()
    assert msg.topic == f"errors/a\n{FORGED}\x1b[31m"  # the broker did pass it: the danger is real
    refused = [r for r in caplog.records if "forger" in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]
    for record in refused:
        assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()  # logged with %r
        assert "\\n2030-01-01" in record.getMessage()
    formatted = "\n".join(TextFormatter().format(r) for r in caplog.records)
    assert all(RECORD.match(line) or line.startswith("    ") for line in formatted.split("\n"))
