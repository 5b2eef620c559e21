"""What users compare us with, run as separate processes against the same broker and workload.

- naive: the obvious paho program: ``on_message`` decodes JSON, runs one row, publishes the result.
- echo: answers every message without inference: the broker round trip, the floor under everything.

Both set TCP_NODELAY like the runtime does, so the comparison is about the design, not about Nagle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ..topics import TopicFilter, TopicTemplate

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_runtime.bench.baselines")
    p.add_argument("kind", choices=["naive", "echo"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--subscribe", required=True)
    p.add_argument("--publish", required=True, help="result topic template, as in the route")
    p.add_argument("--errors", required=True, help="error topic template, as in the route")
    p.add_argument("--bundle", help="naive: the bundle to run")
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--client-id", default="")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="the same as the runtime's, for a fair race")
    args = p.parse_args(argv)

    run_one = None
    if args.kind == "naive":
        import onnxruntime as ort

        with open(f"{args.bundle}/manifest.json") as f:
            manifest = json.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(f"{args.bundle}/model.onnx", options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        labels = manifest.get("labels")
        scores_name = manifest.get("scores_output")
        out_names = [o.name for o in session.get_outputs()]

        def run_one(values):
            outputs = dict(zip(out_names, session.run(None, {input_name: np.asarray([values], dtype=np.float32)})))
            if scores_name:
                scores = outputs[scores_name][0]
                best = int(np.argmax(scores))
                return {"label": labels[best] if labels else best, "scores": scores.tolist()}
            return {"outputs": {k: v[0].tolist() for k, v in outputs.items()}}

    def on_connect(client, _u, _f, reason, _p):
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(args.subscribe, qos=args.qos)

    def on_subscribe(*_):
        print("ready", flush=True)

    flt = TopicFilter(args.subscribe)
    results = TopicTemplate(args.publish, wildcards=flt.wildcards)
    errors = TopicTemplate(args.errors, wildcards=flt.wildcards)

    def on_message(client, _u, msg):
        captures = flt.match(msg.topic) or []
        if run_one is None:
            client.publish(results.render(captures, msg.topic), msg.payload, qos=args.qos)
            return
        try:
            doc = json.loads(msg.payload)
            result = {"id": doc.get("id"), **run_one(doc["values"])}
            topic = results.render(captures, msg.topic)
        except Exception as err:  # noqa: BLE001 - the naive loop still answers bad input, like any sane program
            result = {"error": "bad_input", "detail": str(err)}
            topic = errors.render(captures, msg.topic)
        client.publish(topic, json.dumps(result), qos=args.qos)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if args.protocol == "5" else MQTTProtocolVersion.MQTTv311,
    )
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(args.host, args.port, keepalive=30)
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    with contextlib.suppress(KeyboardInterrupt):
        client.loop_forever()  # the way the paho examples (and most programs) run it
    return 0


if __name__ == "__main__":
    sys.exit(main())
