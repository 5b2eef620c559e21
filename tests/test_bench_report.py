"""The bench's arithmetic, without a broker: arrival schedules, percentiles, counts that add up, machine
facts from fixture files, report comparison and one-line CLI errors. Never how fast anything is."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bench import machine
from edge_runtime.bench.arrivals import Arrivals, schedule
from edge_runtime.bench.compare import compare_reports, format_comparison
from edge_runtime.bench.e2e import _account, _runtime_side, write_csv
from edge_runtime.bench.load import LoadPlan, LoadResult, latency_summary, window_p99
from edge_runtime.observability.metrics import Histogram

PI = Path(__file__).parent / "fixtures" / "boards" / "rpi-4b-throttled"
RATIO = 10 ** (1 / 12)  # one histogram bucket


# -- arrivals -------------------------------------------------------------------------------------


def _counts_per_bin(t: np.ndarray, width: float) -> np.ndarray:
    return np.bincount((t // width).astype(int))[:-1]  # the last bin is cut short


def test_poisson_arrivals_pass_a_dispersion_check():
    t = schedule(Arrivals(kind="poisson", rate=1000, seed=3), 50_000)
    gaps = np.diff(t)
    assert np.all(gaps >= 0) and t[0] == 0
    assert abs(gaps.mean() * 1000 - 1) < 0.03  # the mean rate is the rate asked for
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: coefficient of variation 1
    counts = _counts_per_bin(t, 0.05)  # 50 expected per bin
    dispersion = counts.var() / counts.mean()  # a Poisson process: variance = mean
    assert 0.85 < dispersion < 1.15, dispersion


def test_uniform_and_bursty_arrivals_have_their_shapes():
    u = schedule(Arrivals(kind="uniform", rate=200), 1000)
    assert np.allclose(np.diff(u), 1 / 200) and _counts_per_bin(u, 0.5).var() == 0

    b = schedule(Arrivals(kind="bursty", rate=500, seed=1, on_s=0.2, off_s=0.8), 20_000)
    span = b[-1] - b[0]
    assert abs(len(b) / span / 500 - 1) < 0.05  # the mean rate is kept
    gaps = np.diff(b)
    periods = span / 1.0
    assert abs((gaps >= 0.8).sum() - periods) <= 2  # one silence per period, as long as off_s
    phase = b % 1.0
    assert phase.max() < 0.2 + 1e-9  # nothing arrives during off periods
    counts = _counts_per_bin(b, 0.05)
    assert counts.var() / counts.mean() > 5  # far burstier than Poisson at the same mean

    assert np.array_equal(
        schedule(Arrivals(kind="poisson", rate=100, seed=7), 100),
        schedule(Arrivals(kind="poisson", rate=100, seed=7), 100),
    )
    assert not np.array_equal(
        schedule(Arrivals(kind="poisson", rate=100, seed=7), 100),
        schedule(Arrivals(kind="poisson", rate=100, seed=8), 100),
    )
    with pytest.raises(ValueError):
        Arrivals(kind="gaussian")


def test_load_plan_checks_its_options_and_sizes_windows():
    with pytest.raises(ValueError):
        LoadPlan()
    with pytest.raises(ValueError):
        LoadPlan(burst=10, arrivals=Arrivals())
    assert LoadPlan(arrivals=Arrivals(rate=20), window_s=1).window == 5  # at least 100 messages a window
    assert LoadPlan(arrivals=Arrivals(rate=2000), window_s=1).window == 1
    bursty = Arrivals(kind="bursty", rate=2000, on_s=0.5, off_s=1.0)
    assert LoadPlan(arrivals=bursty, window_s=1).window == 1.5  # whole on/off periods


# -- percentiles and counts -----------------------------------------------------------------------


def test_percentiles_agree_with_numpy():
    rng = np.random.default_rng(0)
    lat = rng.lognormal(0, 1, 5000)
    s = latency_summary(lat)
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p95_ms", 95), ("p99_ms", 99), ("p999_ms", 99.9)):
        assert s[key] == pytest.approx(np.percentile(lat, q), abs=1e-3)
    assert s["max_ms"] == pytest.approx(lat.max(), abs=1e-3)
    h = Histogram()
    for v in lat:
        h.observe(v)
    hs = h.summary()
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p95_ms", 95), ("p99_ms", 99), ("p999_ms", 99.9)):
        truth = float(np.percentile(lat, q))
        assert truth / RATIO <= hs[key] <= truth * RATIO, key  # the runtime's figure: within one bucket
    assert window_p99(np.array([0.001, np.nan])) == math.inf
    assert window_p99(np.full(100, 0.002)) == pytest.approx(2.0)


def _snap(h: Histogram, **counts) -> dict:
    hist = {"counts": list(h.counts), "total": h.total, "sum": h.sum, "max": h.max}
    route = {
        "received": 0,
        "results": 0,
        "batches": 0,
        "errors": {},
        "dropped": {},
        "latency": hist,
        "stages": {s: hist for s in ("queue", "decode", "infer", "publish")},
        "queue": {"high_water": 3},
        **counts,
    }
    return {"routes": {"sensors/+/x": route}}


def test_runtime_side_is_the_difference_between_two_marks():
    rng = np.random.default_rng(1)
    warm, measured = rng.lognormal(2, 1, 2000), rng.lognormal(0, 0.5, 3000)
    h = Histogram()
    for v in warm:
        h.observe(v)
    a = _snap(h, received=2000, results=2000, batches=100, dropped={"queue_full": 5})
    h.max = 0.0  # what the bench host does at a mark
    for v in measured:
        h.observe(v)
    b = _snap(
        h, received=5000, results=4990, batches=250, errors={"bad_json": 10}, dropped={"queue_full": 5, "expired": 7}
    )
    side = _runtime_side([[a], [b]])
    assert side["received"] == 3000 and side["results"] == 2990 and side["errors"] == {"bad_json": 10}
    assert side["dropped"] == {"expired": 7} and side["mean_batch"] == pytest.approx(2990 / 150, abs=0.01)
    assert side["latency"]["count"] == 3000
    for key, q in (("p50_ms", 50), ("p99_ms", 99), ("p999_ms", 99.9)):
        truth = float(np.percentile(measured, q))
        assert truth / RATIO <= side["latency"][key] <= truth * RATIO, key
    assert side["latency"]["max_ms"] == pytest.approx(measured.max(), abs=1e-3)


def _result(outcomes: list[str], measured: list[bool]) -> LoadResult:
    n = len(outcomes)
    sent = np.arange(n) * 0.01
    recv = np.where([o == "lost" for o in outcomes], np.nan, sent + 0.002)
    return LoadResult(scheduled=sent, sent_at=sent, received_at=recv, outcome=outcomes, measured=np.array(measured))


def test_counts_add_up_in_every_summary():
    outcomes = ["ok"] * 90 + ["bad_json"] * 3 + ["overloaded"] * 2 + ["lost"] * 5 + ["ok"] * 10
    r = _result(outcomes, [True] * 100 + [False] * 10)  # the last 10 were warm-up
    s = r.summary()
    assert s["sent"] == 100 and s["answered"] == 90 and s["errors"] == 5 and s["lost"] == 5
    assert s["errors_by_reason"] == {"bad_json": 3, "overloaded": 2}
    assert s["sent"] == s["answered"] + s["errors"] + s["lost"]
    _account(s, {"dropped": {"queue_full": 3, "expired": 9}})  # the runtime counted more than the client lost
    assert s["dropped"] == 5 and sum(s["dropped_by_reason"].values()) == 5
    assert s["sent"] == s["answered"] + s["errors"] + s["dropped"]
    _account(s, {"dropped": {"queue_full": 2}})
    assert s["dropped_by_reason"] == {"queue_full": 2, "unanswered": 3}
    _account(s, None)
    assert s["dropped_by_reason"] == {"unanswered": 5}


def test_csv_has_one_row_per_message_with_the_runtime_stages(tmp_path):
    r = _result(["ok", "ok", "lost"], [True, True, True])
    trace = np.array([[1, 10.0, 10.001, 10.002, 10.004, 10.005]])  # id, arrived, t0, t1, t2, t3
    report = {"_messages": {"runtime": {"result": r, "trace": trace}, "echo": {"result": r}}}
    assert write_csv(report, tmp_path / "m.csv") == 6
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("system,index,phase,scheduled_s,sent_s,received_s,latency_ms,outcome,queue_ms")
    row = lines[2].split(",")
    assert row[:3] == ["runtime", "1", "measured"] and row[-4:] == ["1.0", "1.0", "2.0", "1.0"]
    assert lines[3].split(",")[5:8] == ["", "", "lost"]


# -- machine facts ---------------------------------------------------------------------------------


def test_machine_facts_of_a_throttled_pi_from_fixture_files():
    m = machine.machine_facts(PI)
    assert m["cpu"] == "Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)" and m["cores"] == 4
    assert m["device_profile"] == "rpi-4b" and m["board"].startswith("Raspberry Pi 4")
    assert m["cpufreq"] == {"governor": "powersave", "cur_mhz": 600, "max_mhz": 1800}
    assert m["temperature_c"] == {"cpu-thermal": 84.5} and m["loadavg_1m"] == 3.91
    t = m["throttled"]
    assert t["value"] == "0x50005" and t["now"] and t["since_boot"]
    assert t["flags"] == ["under-voltage now", "throttled now", "under-voltage has occurred", "throttling has occurred"]
    text = machine.format_machine(m)
    assert "Cortex-A72" in text and "powersave" in text and "throttled 0x50005" in text and "84.5" in text

    warnings = machine.run_warnings(m, m, machine_busy_s=None, ours_s=None, wall_s=1, cores=4)
    joined = " | ".join(warnings)
    assert "throttled at the start: under-voltage now, throttled now" in joined
    assert "84.5 °C" in joined and "governor is powersave" in joined


def test_throttling_that_began_during_the_run_and_a_busy_machine_are_warned_about():
    assert machine.decode_throttled(0) == []
    assert machine.decode_throttled(0x80008) == ["soft temperature limit now", "soft temperature limit has occurred"]
    cool = {"throttled": {"value": "0x0", "now": False, "since_boot": False, "flags": []}}
    after = {
        "throttled": {"value": "0x20000", "now": False, "since_boot": True, "flags": machine.decode_throttled(0x20000)}
    }
    w = machine.run_warnings(cool, after, machine_busy_s=30.0, ours_s=10.0, wall_s=10.0, cores=2)
    assert any("during the run: ARM frequency capping has occurred" in x for x in w)
    assert any("machine busy: other processes used 2.00 of 2 cores" in x for x in w)
    assert machine.run_warnings(cool, cool, machine_busy_s=10.5, ours_s=10.0, wall_s=10.0, cores=2) == []
    assert machine.machine_facts(PI.parent / "x86-vnni")["throttled"] is None  # not a Pi: no flags at all


def test_process_tree_cpu_and_peak_memory_from_proc_files():
    assert sorted(machine.descendants(1234, PI)) == [1234, 1235]
    hz = machine._clk_tck()
    assert machine.tree_cpu_seconds(1234, PI) == pytest.approx((300 + 100 + 50 + 25 + 200 + 50) / hz)
    assert machine.tree_cpu_seconds(1234, PI, include_reaped=False) == pytest.approx(650 / hz)
    assert machine.tree_peak_rss_mb(1234, PI) == pytest.approx(120.0)
    s = machine.cpu_sample(PI)
    assert s.total == pytest.approx(9620 / hz) and s.busy == pytest.approx((9620 - 8100) / hz)


# -- compare and the CLI ---------------------------------------------------------------------------


def _report(p99: float, throughput: float, cpu: float, cpu_model: str) -> dict:
    system = {
        "sent": 100,
        "answered": 100,
        "errors": 0,
        "dropped": 0,
        "throughput_per_s": throughput,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "cpu_s_per_1000": cpu,
        "peak_rss_mb": 80.0,
    }
    return {
        "kind": "e2e",
        "machine": {"cpu": cpu_model, "cores": 4, "versions": {"onnxruntime": "1.32.0"}},
        "systems": {"runtime": system, "echo": {**system, "p99_ms": 1.0}},
        "warnings": [],
    }


def test_compare_gives_the_ratios_of_two_reports():
    c = compare_reports(_report(4.0, 1000, 0.5, "Cortex-A72"), _report(2.0, 1500, 0.4, "Cortex-A76"))
    rows = {(r["system"], r["metric"]): r for r in c["rows"]}
    assert rows[("runtime", "p99_ms")]["ratio"] == 0.5 and rows[("runtime", "p99_ms")]["b_better"] is True
    assert rows[("runtime", "throughput_per_s")]["ratio"] == 1.5 and rows[("runtime", "throughput_per_s")]["b_better"]
    assert rows[("runtime", "cpu_s_per_1000")]["ratio"] == 0.8
    assert rows[("runtime", "p50_ms")]["b_better"] is None  # the same: neither better nor worse
    assert rows[("echo", "p99_ms")]["ratio"] == 1.0
    assert c["machine"] == [{"fact": "cpu", "a": "Cortex-A72", "b": "Cortex-A76"}]
    assert "Cortex-A76" in format_comparison(c)


def _cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=timeout
    )


def test_bench_compare_cli_on_stored_reports(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_report(4.0, 1000, 0.5, "x")))
    suite = {
        "kind": "suite",
        "machine": {"cpu": "x"},
        "warnings": [],
        "steps": {"burst": _report(3.0, 2000, 0.25, "x")},
    }
    (tmp_path / "b.json").write_text(json.dumps(_report(5.0, 500, 1.0, "x")))
    (tmp_path / "s.json").write_text(json.dumps(suite))
    proc = _cli("bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("runtime") and "throughput_per_s" in x)
    assert "0.500x" in line and "B worse" in line
    proc = _cli("bench", "compare", str(tmp_path / "s.json"), str(tmp_path / "s.json"))
    assert proc.returncode == 0 and "burst/runtime" in proc.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["bench", "e2e", "--config", "c.toml", "--arrivals", "normal"], "invalid choice: 'normal'"),
        (["bench", "e2e", "--config", "c.toml", "--rate", "0"], "--rate: must be above 0"),
        (["bench", "e2e", "--config", "c.toml", "--stability-pct", "abc"], "--stability-pct"),
        (["bench", "e2e", "--config", "c.toml", "--warmup-s", "-1"], "--warmup-s: must be 0 or more"),
        (["bench", "e2e", "--config", "c.toml", "--sweep", "--sweep-rates", "100,x"], "comma-separated numbers"),
        (["bench", "e2e", "--config", "c.toml", "--rate", "5", "--burst", "5"], "not allowed with argument"),
        (["bench", "e2e", "--config", "missing.toml"], "no config file at missing.toml"),
        (["bench", "suite", "--config", "missing.toml"], "no config file at missing.toml"),
        (["bench", "compare", "missing-a.json", "b.json"], "no report at missing-a.json"),
    ],
)
def test_bad_arguments_get_a_one_line_error(args, words, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_compare_refuses_a_file_that_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    proc = _cli("bench", "compare", str(tmp_path / "x.json"), str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "is not a report from `bench e2e --json`" in proc.stderr
