"""``edge-runtime bench model|e2e|camera|compare|suite|tracking|footprint``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli.argtypes import frame_size, positive_float, positive_int, positive_ints, rate, thread_counts
from ..cli.outputs import check_writable_file, write_output
from ..errors import EdgeRuntimeError

ARRIVAL_KINDS = ("uniform", "poisson", "bursty")
DEFAULT_SENSOR_BUNDLE = Path(".edge-runtime/bench/forest")


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line saying what is wrong (``--help`` shows the rest), never the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _checked_positive_float(text: str) -> float:
    try:
        value = positive_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, not {text!r}") from None
    if value == float("inf"):
        raise argparse.ArgumentTypeError("must be finite")
    return value


def positive_floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers above 0, e.g. ``100,500,1000``."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 100,500,1000, not {text!r}") from None
    if not values or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError("every value must be above 0")
    return values


def _load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arrivals",
        choices=ARRIVAL_KINDS,
        default="uniform",
        help="uniform, poisson (independent sensors) or bursty (on/off periods); the mean is --rate",
    )
    p.add_argument("--seed", type=int, default=0, help="the arrival schedule's seed (same seed, same load)")
    p.add_argument("--on-s", type=_checked_positive_float, default=0.2, help="bursty: seconds on")
    p.add_argument("--off-s", type=non_negative_float, default=0.8, help="bursty: seconds off")
    p.add_argument("--duration", type=_checked_positive_float, default=10.0, help="measured seconds, after warm-up")
    p.add_argument(
        "--warmup-s",
        type=non_negative_float,
        default=10.0,
        help="warm-up cap: measure from the first window whose p99 is stable, at the latest from here (0: none)",
    )
    p.add_argument(
        "--window-s", type=_checked_positive_float, default=1.0, help="warm-up window (at least 100 messages)"
    )
    p.add_argument(
        "--stability-pct",
        type=_checked_positive_float,
        default=5.0,
        help="p99 counts as stable when it moves less than this between two windows",
    )
    p.add_argument(
        "--warmup-burst", type=int, help="a burst is preceded by this many (default: a tenth, at most 2,000)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure latency and throughput against baselines in the same run")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND", parser_class=_OneLineParser)

    m = kinds.add_parser("model", help="the runtime core alone vs bare onnxruntime session.run")
    m.add_argument("bundle", type=Path)
    m.add_argument("--batch-sizes", type=positive_ints("1,8,32"), default=(1, 8, 32))
    m.add_argument(
        "--threads",
        type=thread_counts,
        help="intra-op thread counts to measure (default: 1 up to this machine's cores)",
    )
    m.add_argument(
        "--engines", help="comma-separated engines to measure (default: every installed one: onnxruntime, openvino)"
    )
    m.add_argument("--duration", type=positive_float, default=3.0, help="seconds of measurement per batch size")
    m.add_argument("--json", type=Path, help="also write the report as JSON")
    m.set_defaults(handler=_model)

    e = kinds.add_parser("e2e", help="through a real broker, with an echo control and optionally the naive loop")
    e.add_argument("--config", type=Path, required=True)
    load = e.add_mutually_exclusive_group()
    load.add_argument("--rate", type=rate, help="open-loop mean messages per second (default 1000)")
    load.add_argument("--burst", type=positive_int, help="send this many messages at full speed")
    load.add_argument(
        "--sweep",
        action="store_true",
        help="raise the rate until p99 breaks --slo-ms or anything is lost, for every system",
    )
    _load_options(e)
    e.add_argument("--payload", choices=["json", "npy"], default="json")
    e.add_argument("--baseline", choices=["naive"], help="also run the naive paho loop on the same workload")
    e.add_argument(
        "--baseline-protocol",
        choices=["5", "3.1.1"],
        help="MQTT version of the echo and naive clients (default: the config's); 3.1.1 is paho's cheapest floor",
    )
    e.add_argument("--no-echo", dest="echo", action="store_false", help="skip the echo control")
    e.add_argument("--slo-ms", type=positive_float, default=50.0, help="the sweep's p99 target")
    e.add_argument(
        "--sweep-rates",
        type=positive_floats,
        help="the sweep's rates, e.g. 500,1000,2000 (default: from 250 up by 1.5x)",
    )
    e.add_argument("--devices", type=positive_int, default=8, help="distinct input topics the load is spread over")
    e.add_argument("--workers", type=positive_int, default=1, help="run the runtime as N shared-subscription workers")
    e.add_argument("--data", type=Path, help=".npy rows to send (default: random rows of the model's shape)")
    e.add_argument("--json", type=Path, help="also write the report as JSON")
    e.add_argument(
        "--csv", type=Path, help="one row per message: send and receive times, outcome, the runtime's stages"
    )
    e.add_argument("--plot", type=Path, help="latency over time beside the CDF (or the sweep) as a PNG")
    e.add_argument("--profile", type=Path, help="also write a cProfile of the runtime's serve loop to this file")
    e.add_argument(
        "--py-spy",
        type=Path,
        help="sample the runtime with py-spy (pip install py-spy) into this file and print where its CPU went",
    )
    e.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    e.set_defaults(handler=_e2e)

    cmp = kinds.add_parser("compare", help="the ratios of two stored reports (B / A): two devices, before/after")
    cmp.add_argument("a", type=Path, help="report A (JSON from --json)")
    cmp.add_argument("b", type=Path, help="report B")
    cmp.set_defaults(handler=_compare)

    s = kinds.add_parser("suite", help="the standard set: sensors at three rates, a burst, a camera route")
    s.add_argument("--config", type=Path, required=True, help="a sensor route config (see examples/bench-forest.toml)")
    s.add_argument(
        "--rates", type=positive_floats, default=(100.0, 500.0, 1000.0), help="sensor rates (default 100,500,1000)"
    )
    s.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="poisson")
    s.add_argument("--burst", type=positive_int, default=5000)
    s.add_argument("--duration", type=positive_float, default=4.0, help="measured seconds per step")
    s.add_argument("--warmup-s", type=non_negative_float, default=3.0, help="warm-up cap per step")
    s.add_argument(
        "--camera",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include the camera route (needs the [camera] extra)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", type=Path, help="also write the suite's report as JSON")
    s.add_argument("--markdown", type=Path, help="write the summary as a Markdown section (for BENCHMARKS.md)")
    s.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    s.set_defaults(handler=_suite)

    c = kinds.add_parser("camera", help="frame freshness under overload: latest_only vs drop_oldest")
    c.add_argument("--bundle", type=Path, help="image model bundle (default: the demo detector)")
    c.add_argument(
        "--source",
        help="measure capture-to-result latency of a route reading this camera instead (rtsp://..., "
        "http://.../mjpeg, /dev/videoN, a video file, or 'synthetic': the simulator's scene as a file); "
        "--fps is then the route's sampling rate",
    )
    c.add_argument("--cameras", type=positive_int, default=4)
    c.add_argument("--fps", type=rate, default=60.0, help="frames per second per camera")
    c.add_argument("--size", type=frame_size, default=(1280, 720), help="frame size WxH")
    c.add_argument("--duration", type=positive_float, default=10.0)
    c.add_argument("--max-queue", type=positive_int, default=500)
    c.add_argument(
        "--threads",
        type=positive_int,
        help="the model's threads in the runtime's config (default: what the bundle measured)",
    )
    c.add_argument(
        "--policies",
        default="drop_oldest,latest_only",
        help="overflow policies to run, comma-separated (drop_oldest, latest_only)",
    )
    c.add_argument(
        "--no-stages",
        dest="stages",
        action="store_false",
        help="skip the bare-engine and per-stage measurement on the same frames",
    )
    c.add_argument(
        "--baseline-model",
        type=Path,
        help="bare ONNX Runtime runs this ONNX file instead of the bundle's (e.g. the fp32 export a quantized "
        "bundle was converted from), so that served frames/s are compared with it in the same run",
    )
    c.add_argument("--json", type=Path, help="also write the report as JSON")
    c.set_defaults(handler=_camera)

    t = kinds.add_parser(
        "tracking",
        help="the object tracker (track = true) against maintained trackers on the same seeded scenes: "
        "MOTA, IDF1, identity switches, ms per frame (needs the [bench] extra)",
    )
    t.add_argument(
        "--scenes",
        help="comma-separated, from easy, crossing, crowded, low_fps, irregular (default: all of them)",
    )
    t.add_argument("--seeds", type=positive_int, default=5, help="scenes built per kind: --seed, --seed + 1, ...")
    t.add_argument("--seed", type=int, default=0, help="the first scene seed (same seeds, same detections)")
    t.add_argument("--repeat", type=positive_int, default=3, help="timed runs per tracker and scene; the best is kept")
    t.add_argument(
        "--no-references",
        dest="references",
        action="store_false",
        help="only this project's tracker (the references run when installed: pip install trackers)",
    )
    t.add_argument("--json", type=Path, help="also write the report as JSON")
    t.add_argument("--csv", type=Path, help="one row per scene and tracker")
    t.set_defaults(handler=_tracking)

    f = kinds.add_parser(
        "footprint", help="resident memory and cold start of a sensor and a camera route vs a bare engine process"
    )
    f.add_argument(
        "--sensor-bundle",
        type=Path,
        default=DEFAULT_SENSOR_BUNDLE,
        help="the sensor route's bundle (default: .edge-runtime/bench/forest, from python tools/make_bench_bundles.py)",
    )
    f.add_argument("--camera-bundle", type=Path, help="the camera route's bundle (default: the demo detector)")
    f.add_argument("--routes", default="sensor,camera", help="which routes to measure, comma-separated")
    f.add_argument("--engines", help="comma-separated engines to measure (default: every installed one)")
    f.add_argument("--repeat", type=positive_int, default=3, help="runs per case (memory: the largest; start: median)")
    f.add_argument("--json", type=Path, help="also write the report as JSON")
    f.set_defaults(handler=_footprint)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print("\r" + text[:100].ljust(100), end="", file=sys.stderr, flush=True)


def _done() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 100 + "\r", end="", file=sys.stderr, flush=True)


def _finish(args: argparse.Namespace, text: str, report: dict) -> int:
    """The report printed, and written as JSON where ``--json`` asks."""
    _done()
    print(text)
    if args.json:
        write_output(args.json, json.dumps(report, indent=1), "--json")
    return 0


def _check_files(args: argparse.Namespace) -> None:
    """Before minutes of measuring: is the config there, and can the reports (JSON, plot, CSV, Markdown) be
    written where asked?"""
    config = getattr(args, "config", None)
    if config is not None and not config.is_file():
        raise EdgeRuntimeError(f"no config file at {config}; pass --config PATH (see examples/bench-forest.toml)")
    for option in ("json", "plot", "csv", "markdown", "profile", "py_spy"):
        path = getattr(args, option, None)
        if path is not None:
            check_writable_file(path, "--" + option.replace("_", "-"))


def _model(args: argparse.Namespace) -> int:
    from ..engines import get_engine_kind
    from ..errors import EdgeRuntimeError
    from .model import bench_model, format_model_report

    _check_files(args)
    engines = tuple(e.strip() for e in args.engines.split(",")) if args.engines else None
    for name in engines or ():
        try:
            if not get_engine_kind(name).available():
                raise EdgeRuntimeError(f"--engines: {name} is not installed: {get_engine_kind(name).install_hint}")
        except LookupError as err:
            raise EdgeRuntimeError(f"--engines: {err}") from None
    report = bench_model(
        args.bundle,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        engines=engines,
        duration=args.duration,
        progress=_progress,
    )
    return _finish(args, format_model_report(report), report)


def _e2e(args: argparse.Namespace) -> int:
    from .e2e import E2EOptions, bench_e2e, format_e2e_report, plot_e2e_report, write_csv

    _check_files(args)
    if args.warmup_burst is not None and args.warmup_burst < 0:
        raise EdgeRuntimeError("--warmup-burst must be 0 or more")
    options = E2EOptions(
        config=args.config,
        rate=args.rate,
        burst=args.burst,
        sweep=args.sweep,
        duration=args.duration,
        arrivals=args.arrivals,
        seed=args.seed,
        on_s=args.on_s,
        off_s=args.off_s,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        stability_pct=args.stability_pct,
        warmup_burst=args.warmup_burst,
        payload=args.payload,
        baseline=args.baseline,
        baseline_protocol=args.baseline_protocol,
        echo=args.echo,
        slo_ms=args.slo_ms,
        sweep_rates=args.sweep_rates,
        devices=args.devices,
        workers=args.workers,
        data=args.data,
        trace=args.csv is not None,
        profile=args.profile,
        py_spy=args.py_spy,
        machine_root=args.root,
    )
    report = bench_e2e(options, progress=_progress)
    _done()
    print(format_e2e_report(report))
    if args.plot:
        plot_e2e_report(report, args.plot)
    if args.csv:
        write_csv(report, args.csv)
    if args.json:
        write_output(args.json, json.dumps(public(report), indent=1), "--json")
    return 0


def public(report: dict) -> dict:
    """The report without its in-memory parts (keys starting with ``_``), ready for JSON."""
    return {k: public(v) if isinstance(v, dict) else v for k, v in report.items() if not str(k).startswith("_")}


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_reports, format_comparison, load_report

    print(format_comparison(compare_reports(load_report(args.a), load_report(args.b)), args.a.name, args.b.name))
    return 0


def _suite(args: argparse.Namespace) -> int:
    from .suite import SuiteOptions, format_suite, run_suite, suite_markdown

    _check_files(args)
    options = SuiteOptions(
        config=args.config,
        rates=args.rates,
        arrivals=args.arrivals,
        burst=args.burst,
        duration=args.duration,
        warmup_s=args.warmup_s,
        camera=args.camera,
        seed=args.seed,
        machine_root=args.root,
    )
    report = run_suite(options, progress=_progress)
    _done()
    print(format_suite(report))
    if args.json:
        write_output(args.json, json.dumps(public(report), indent=1), "--json")
    if args.markdown:
        write_output(args.markdown, suite_markdown(report), "--markdown")
    return 0


def _camera(args: argparse.Namespace) -> int:
    from ..errors import EdgeRuntimeError
    from .camera import DEFAULT_DETECTOR, CameraBenchOptions, bench_camera, format_camera_report

    _check_files(args)
    w, h = args.size
    if args.baseline_model is not None and (args.source or not args.stages):
        raise EdgeRuntimeError(
            "--baseline-model is compared with served frames/s in the stages measurement: "
            "drop --source and --no-stages, or drop --baseline-model"
        )
    if args.source:
        from .source import SourceBenchOptions, bench_source, format_source_report

        fps = 10.0 if args.fps == 60.0 else args.fps  # --fps defaults to the overload bench's 60 per camera
        sreport = bench_source(
            SourceBenchOptions(
                bundle=args.bundle or DEFAULT_DETECTOR,
                source=args.source,
                fps=fps,
                duration=args.duration,
                width=w,
                height=h,
                threads=args.threads,
            ),
            progress=_progress,
        )
        _done()
        print(format_source_report(sreport))
        if args.json:
            write_output(args.json, json.dumps(sreport, indent=1), "--json")
        return 0
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not policies or set(policies) - {"drop_oldest", "latest_only"}:
        raise EdgeRuntimeError(f"--policies {args.policies!r}: choose from drop_oldest, latest_only")
    options = CameraBenchOptions(
        bundle=args.bundle or DEFAULT_DETECTOR,
        cameras=args.cameras,
        fps=args.fps,
        width=w,
        height=h,
        duration=args.duration,
        max_queue=args.max_queue,
        threads=args.threads,
        policies=policies,
        stages=args.stages,
        baseline_model=args.baseline_model,
    )
    report = bench_camera(options, progress=_progress)
    _done()
    print(format_camera_report(report))
    if args.json:
        write_output(args.json, json.dumps(report, indent=1), "--json")
    return 0


def _tracking(args: argparse.Namespace) -> int:
    from .tracking import TrackingBenchOptions, bench_tracking, format_tracking_report, write_tracking_csv

    _check_files(args)
    scenes = {} if args.scenes is None else {"scenes": tuple(s.strip() for s in args.scenes.split(",") if s.strip())}
    options = TrackingBenchOptions(
        **scenes, seeds=args.seeds, seed=args.seed, repeat=args.repeat, references=args.references
    )
    report = bench_tracking(options, progress=_progress)
    _done()
    print(format_tracking_report(report))
    if args.csv:
        write_tracking_csv(report, args.csv)
    if args.json:
        write_output(args.json, json.dumps(report, indent=1), "--json")
    return 0


def _footprint(args: argparse.Namespace) -> int:
    from ..engines import available_engines
    from .camera import DEFAULT_DETECTOR
    from .footprint import FootprintOptions, bench_footprint, format_footprint_report

    _check_files(args)
    routes = {r.strip() for r in args.routes.split(",") if r.strip()}
    if not routes or routes - {"sensor", "camera"}:
        raise EdgeRuntimeError(f"--routes {args.routes!r}: choose from sensor, camera")
    engines = tuple(e.strip() for e in args.engines.split(",")) if args.engines else tuple(available_engines())
    missing = [e for e in engines if e not in available_engines()]
    if missing:
        raise EdgeRuntimeError(f"--engines: {', '.join(missing)} not installed here (installed: {available_engines()})")
    sensor = args.sensor_bundle if "sensor" in routes else None
    camera = (args.camera_bundle or DEFAULT_DETECTOR) if "camera" in routes else None
    for option, bundle in (("--sensor-bundle", sensor), ("--camera-bundle", camera)):
        if bundle is not None and not (bundle / "manifest.json").is_file():
            hint = " (python tools/make_bench_bundles.py builds it)" if bundle == DEFAULT_SENSOR_BUNDLE else ""
            raise EdgeRuntimeError(f"{option}: no bundle at {bundle}{hint}")
    report = bench_footprint(
        FootprintOptions(sensor_bundle=sensor, camera_bundle=camera, engines=engines, repeat=args.repeat),
        progress=_progress,
    )
    return _finish(args, format_footprint_report(report), report)
