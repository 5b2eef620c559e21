"""The bench commands run on a tiny workload and report sane, internally consistent numbers.

Never how fast: benchmarks are not tests."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import needs_mqtt5, route_config


def _run(*args, timeout=240):
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _ordered(s):
    return s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_bench_model(vibration_bundle, tmp_path):
    out = _run(
        "bench",
        "model",
        str(vibration_bundle),
        "--batch-sizes",
        "1,4",
        "--duration",
        "0.3",
        "--json",
        str(tmp_path / "m.json"),
    )
    report = json.loads((tmp_path / "m.json").read_text())
    assert [b["batch"] for b in report["batches"]] == [1, 4]
    for b in report["batches"]:
        assert _ordered(b["bare"]) and _ordered(b["core"])
        assert b["overhead_ratio"] > 0 and b["core"]["rows_per_s"] > 0 and b["decode_us_per_row"] > 0
    assert "core/bare" in out


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bench_model_compares_the_kept_candidates(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    from converters import write_estimator_bundle

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32) / 16
    model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=50, random_state=0).fit(X, y)
    bundle = write_estimator_bundle(
        model,
        tmp_path / "b",
        name="d",
        validation=X[:200],
        labels=y[:200],
        keep_candidates=True,
        progress=lambda _: None,
    )
    kept = sorted(p.stem for p in (bundle.path / "candidates").glob("*.onnx"))
    assert len(kept) == 3 and bundle.manifest.quantization["mode"] not in kept
    out = _run(
        "bench",
        "model",
        str(bundle.path),
        "--batch-sizes",
        "1",
        "--duration",
        "0.2",
        "--json",
        str(tmp_path / "m.json"),
    )
    report = json.loads((tmp_path / "m.json").read_text())
    assert sorted(report["candidates"]) == kept
    assert all(c["quantization"] in kept for c in report["candidates"].values())
    assert out.count("core/bare") == 4


@pytest.fixture
def bench_config(broker, vibration_bundle, tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(route_config(broker.url, vibration_bundle, client_id="t-bench", max_delay_ms=0, max_queue=100000))
    return path


@pytest.mark.slow
def test_bench_e2e_burst_with_naive_baseline(bench_config, tmp_path):
    out = _run(
        "bench",
        "e2e",
        "--config",
        str(bench_config),
        "--burst",
        "300",
        "--baseline",
        "naive",
        "--duration",
        "2",
        "--json",
        str(tmp_path / "e.json"),
    )
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["systems"]) == {"echo", "runtime", "naive"}
    for s in report["systems"].values():
        assert s["sent"] == 300 and s["answered"] + s["errors"] + s["lost"] == 300
        assert s["answered"] == 300 and s["duplicates"] == 0
        assert _ordered(s) and s["drain_s"] >= s["send_s"] >= 0
    stages = report["systems"]["runtime"]["stages"]
    assert set(stages) == {"queue", "decode", "infer", "publish"} and stages["infer"]["count"] > 0
    assert report["ratios"]["throughput_vs_naive"] > 0
    assert "throughput vs naive" in out


@pytest.mark.slow
def test_bench_e2e_rate_and_sweep(bench_config, tmp_path):
    _run(
        "bench",
        "e2e",
        "--config",
        str(bench_config),
        "--rate",
        "200",
        "--duration",
        "1",
        "--no-echo",
        "--warmup-s",
        "0.5",
        "--window-s",
        "0.5",
        "--json",
        str(tmp_path / "r.json"),
        "--payload",
        "npy",
    )
    rate = json.loads((tmp_path / "r.json").read_text())["systems"]["runtime"]
    assert rate["sent"] == 200 and rate["answered"] == 200 and rate["mode"] == "rate"
    # An SLO nothing can meet: the sweep stops at its first step and says nothing was sustained.
    _run(
        "bench",
        "e2e",
        "--config",
        str(bench_config),
        "--sweep",
        "--slo-ms",
        "0.001",
        "--duration",
        "1",
        "--warmup-s",
        "0.5",
        "--no-echo",
        "--json",
        str(tmp_path / "s.json"),
    )
    sweep = json.loads((tmp_path / "s.json").read_text())["systems"]["runtime"]
    assert sweep["sustained_rate"] == 0 and len(sweep["steps"]) == 1 and not sweep["steps"][0]["ok"]


def test_bench_e2e_refuses_a_remote_broker(vibration_bundle, tmp_path):
    path = tmp_path / "remote.toml"
    path.write_text(route_config("mqtt://192.0.2.10:1883", vibration_bundle, client_id="x"))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "bench", "e2e", "--config", str(path), "--burst", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "only to a broker on this machine" in proc.stderr


@needs_mqtt5
def test_workers_share_a_route(broker, vibration_bundle, vibration_data, tmp_path, collector, publisher):
    """Two workers behind one shared subscription: every input answered exactly once, both did work."""
    import time

    from helpers import payload

    _, _, Xt, _ = vibration_data
    config = tmp_path / "w.toml"
    config.write_text(route_config(broker.url, vibration_bundle, client_id="t-workers"))
    status = collector("edge-runtime/+/status")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "run",
            str(config),
            "--workers",
            "2",
            "--stats-json",
            str(tmp_path / "stats.json"),
        ]
    )
    try:
        online = set()
        deadline = time.monotonic() + 60
        while online != {"edge-runtime/t-workers-w1/status", "edge-runtime/t-workers-w2/status"}:
            assert time.monotonic() < deadline
            for m in status.take(1, timeout=60):
                if b"online" in m.payload:
                    online.add(m.topic)
        results = collector("results/#")
        for i in range(100):
            publisher.publish(f"sensors/d{i % 5}/vibration", payload(Xt[i], id=i))
        got = [b["id"] for _, b in results.json(100, timeout=30)]
        assert sorted(got) == list(range(100))
        proc.terminate()
        assert proc.wait(30) == 0
        served = [json.loads((tmp_path / f"stats.json.w{i}").read_text()) for i in (1, 2)]
        per_worker = [next(iter(s["routes"].values()))["results"] for s in served]
        assert sum(per_worker) == 100 and min(per_worker) > 0, per_worker
    finally:
        if proc.poll() is None:
            proc.kill()


def _adds_up(s):
    return s["sent"] == s["answered"] + s["errors"] + s["dropped"] and s["dropped"] == sum(
        s["dropped_by_reason"].values()
    )


@pytest.mark.slow
def test_bench_e2e_poisson_with_warmup_csv_plot_and_machine_facts(bench_config, tmp_path):
    out = _run(
        "bench",
        "e2e",
        "--config",
        str(bench_config),
        "--rate",
        "300",
        "--arrivals",
        "poisson",
        "--seed",
        "4",
        "--duration",
        "1",
        "--warmup-s",
        "1",
        "--window-s",
        "0.5",
        "--json",
        str(tmp_path / "p.json"),
        "--csv",
        str(tmp_path / "p.csv"),
        "--plot",
        str(tmp_path / "p.png"),
    )
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["load"]["arrivals"] == "poisson" and report["load"]["seed"] == 4
    m = report["machine"]
    assert m["cores"] >= 1 and m["device_profile"] and m["versions"]["onnxruntime"] and m["versions"]["paho-mqtt"]
    assert "machine:" in out and "versions:" in out
    for s in report["systems"].values():
        assert _adds_up(s) and s["answered"] > 0 and s["warmup"]["windows"]
        assert s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"]
        assert s["cpu_s_per_1000"] > 0 and s["peak_rss_mb"] > 0
    rt = report["systems"]["runtime"]["runtime"]
    assert rt["latency"]["count"] > 0 and {"p95_ms", "p999_ms"} <= set(rt["latency"])
    assert set(rt["stages"]) == {"queue", "decode", "infer", "publish"}
    assert "end to end (runtime)" in out and "cpu per 1000 vs echo" in out
    rows = (tmp_path / "p.csv").read_text().splitlines()
    sent = sum(s["sent"] + s["warmup"]["excluded"] for s in report["systems"].values())
    assert len(rows) == 1 + sent
    staged = [r for r in rows if r.startswith("runtime,") and not r.endswith(",,,")]
    assert staged  # the runtime's rows carry its batch stages
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.slow
def test_bench_suite_and_compare_on_its_reports(bench_config, tmp_path):
    args = [
        "bench",
        "suite",
        "--config",
        str(bench_config),
        "--rates",
        "200",
        "--burst",
        "200",
        "--duration",
        "0.5",
        "--warmup-s",
        "0",
        "--no-camera",
    ]
    out = _run(*args, "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md"))
    report = json.loads((tmp_path / "a.json").read_text())
    assert set(report["steps"]) == {"sensors-200", "burst-200"} and report["machine"]["cores"] >= 1
    for step in report["steps"].values():
        for s in step["systems"].values():
            assert _adds_up(s)
    md = (tmp_path / "a.md").read_text()
    assert "| CPU |" in md and "| burst-200 | runtime |" in md and "suite took" in out
    cmp = _run("bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert "burst-200/runtime" in cmp and "1.000x" in cmp


@pytest.mark.slow
def test_a_broker_that_goes_away_mid_run_is_one_clear_error(tmp_path):
    """The load generator must not spin on a dead connection: the run ends with an error saying why."""
    import threading

    from edge_runtime.bench.arrivals import Arrivals
    from edge_runtime.bench.load import LoadPlan, Workload, run_load
    from edge_runtime.devtools.broker import start_broker
    from edge_runtime.errors import EdgeRuntimeError

    broker = start_broker(workdir=tmp_path / "b")
    workload = Workload(topics=["sensors/a/vibration"], rows=np.zeros((4, 16), dtype=np.float32))
    threading.Timer(0.5, broker.stop).start()
    # on a loaded machine the broker may be gone before the generator connected: either way, one clear error
    with pytest.raises(EdgeRuntimeError, match=r"lost its connection to the broker|could not connect to the broker"):
        run_load(
            broker.url,
            workload,
            LoadPlan(arrivals=Arrivals(rate=200), duration=3, warmup_s=0),
            result_filters=["results/#"],
            settle=1,
        )
