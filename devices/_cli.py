"""``edge-runtime simulate ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from converters.release import add_plan_options
from edge_runtime.cli.argtypes import frame_size, listen_port, positive_float, positive_int, rate
from edge_runtime.cli.broker_options import add_broker_options, broker_from_args
from edge_runtime.cli.outputs import check_writable_file, write_output
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.topics import check_filter


def _fault_list(text: str) -> list[str]:
    from .fleet import FAULTS

    faults = [f for f in text.split(",") if f]
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown fault {bad[0]!r}; choose from {', '.join(FAULTS)}")
    return faults


def _profile(name: str | None):
    from .detect import detect, profile_for

    return profile_for(name) if name else detect()[0]


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("simulate", help="simulated devices that publish to a broker")
    simsub = sim.add_subparsers(dest="what", required=True, metavar="KIND")
    sens = simsub.add_parser("sensors", help="vibration/temperature sensors on sensors/<device>/<kind>")
    add_broker_options(sens)
    sens.add_argument("--devices", type=positive_int, default=3)
    sens.add_argument("--rate", type=rate, default=10.0, help="readings per second per device")
    sens.add_argument("--duration", type=positive_float, default=None, help="seconds (default: until Ctrl-C)")
    sens.add_argument("--qos", type=int, choices=[0, 1, 2], default=0)
    sens.add_argument("--seed", type=int, default=0)
    sens.set_defaults(handler=_sensors)

    cam = simsub.add_parser("camera", help="cameras publishing JPEG/PNG frames on cameras/<camera>/frames")
    add_broker_options(cam)
    cam.add_argument("--cameras", type=positive_int, default=1)
    cam.add_argument("--fps", type=rate, default=5.0, help="frames per second per camera")
    cam.add_argument("--size", type=frame_size, default=(320, 240), help="WxH, e.g. 640x480")
    cam.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    cam.add_argument(
        "--scene",
        choices=["objects", "object"],
        default="objects",
        help="objects: 1-3 shapes (detector); object: one large shape (classifier)",
    )
    cam.add_argument("--duration", type=positive_float, help="seconds (default: until Ctrl-C)")
    stream = cam.add_mutually_exclusive_group()
    stream.add_argument(
        "--rtsp",
        type=listen_port,
        metavar="PORT",
        help="serve moving shapes as an RTSP stream on 127.0.0.1:PORT/cam instead (needs GStreamer)",
    )
    stream.add_argument(
        "--mjpeg", type=listen_port, metavar="PORT", help="serve moving shapes as HTTP MJPEG on 127.0.0.1:PORT/mjpeg"
    )
    cam.add_argument("--objects", type=positive_int, default=2, help="with --rtsp/--mjpeg: shapes crossing the scene")
    cam.set_defaults(handler=_camera)

    vid = simsub.add_parser("video", help="write moving shapes to a video file, with their ground truth (.json)")
    vid.add_argument("-o", "--output", type=Path, required=True, help=".mp4 or .avi")
    vid.add_argument("--fps", type=positive_float, default=10.0)
    vid.add_argument("--size", type=frame_size, default=(320, 240), help="WxH")
    vid.add_argument("--objects", type=positive_int, default=2)
    vid.add_argument("--seed", type=int, default=0)
    vid.set_defaults(handler=_video)

    fleet = simsub.add_parser(
        "fleet",
        help="many devices with a mix of rates, and optional faulty ones; with --runtimes, a release rehearsed on "
        "a fleet of runtimes",
    )
    add_broker_options(fleet)
    fleet.add_argument("--devices", type=positive_int, default=10)
    fleet.add_argument("--rate", type=rate, default=5.0, help="base rate in Hz (devices run at 0.5x to 5x)")
    fleet.add_argument("--duration", type=positive_float, help="seconds (default 10; with --runtimes 60)")
    fleet.add_argument("--faults", type=_fault_list, default=[], help="comma-separated: silent,garbage,burst")
    fleet.add_argument("--qos", type=int, choices=[0, 1, 2], default=0)
    fleet.add_argument("--seed", type=int, default=0)
    rehearsal = fleet.add_argument_group("rehearse a release (--runtimes N)")
    rehearsal.add_argument(
        "--runtimes",
        type=positive_int,
        help="run N runtimes (processes), one per device, serve the devices' traffic, and print the rollout",
    )
    rehearsal.add_argument("--bundle", type=Path, help="the vibration bundle the runtimes start with (signed)")
    rehearsal.add_argument("--release", type=Path, help="the bundle to publish once they are online (signed)")
    rehearsal.add_argument("--key", type=Path, help="the private key that signs the release record")
    rehearsal.add_argument("--trust", type=Path, help="the public key the runtimes trust (default: --key's)")
    rehearsal.add_argument(
        "--workdir", type=Path, default=Path(".edge-runtime/fleet-sim"), help="configs, fleet state and logs"
    )
    add_plan_options(fleet)
    fleet.set_defaults(handler=_fleet)

    rec = simsub.add_parser("record", help="save what arrives on topics to a file (JSON lines)")
    add_broker_options(rec)
    rec.add_argument("--topic", action="append", required=True, help="topic filter; repeat for more")
    rec.add_argument("-o", "--output", type=Path, required=True)
    rec.add_argument("--duration", type=positive_float)
    rec.add_argument("--count", type=positive_int)
    rec.set_defaults(handler=_record)

    rep = simsub.add_parser(
        "replay", help="publish a recording (or a sample capture directory) again with its original timing"
    )
    rep.add_argument("file", type=Path, help="a recording (.jsonl) or a capture directory (a route's capture.dir)")
    rep.add_argument("--topic", help="publish everything to this topic instead of the recorded ones")
    add_broker_options(rep)
    rep.add_argument("--speed", type=positive_float, default=1.0, help="2: twice as fast")
    rep.set_defaults(handler=_replay)

    dev = sub.add_parser("devices", help="device profiles: list, show, detect")
    devsub = dev.add_subparsers(dest="what", required=True, metavar="ACTION")
    devsub.add_parser("list", help="the known profiles").set_defaults(handler=_devices_list)
    show = devsub.add_parser("show", help="one profile in full")
    show.add_argument("name")
    show.set_defaults(handler=_devices_show)
    det = devsub.add_parser("detect", help="which profile this machine matches, and why")
    det.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    det.set_defaults(handler=_devices_detect)

    deploy = sub.add_parser("deploy", help="run the runtime as a service")
    depsub = deploy.add_subparsers(dest="what", required=True, metavar="KIND")
    unit = depsub.add_parser("systemd", help="print (or write) a systemd unit for a config")
    unit.add_argument("config", type=Path)
    unit.add_argument("--user", default="edge-runtime", help="the dedicated user the service runs as")
    unit.add_argument("--profile", help="device profile (default: detected)")
    unit.add_argument("-o", "--output", type=Path, help="write here instead of printing")
    unit.set_defaults(handler=_deploy_systemd)


def _sensors(args: argparse.Namespace) -> int:
    from .simulate import simulate_sensors

    return simulate_sensors(
        broker_from_args(args),
        devices=args.devices,
        rate=args.rate,
        duration=args.duration,
        qos=args.qos,
        seed=args.seed,
    )


def _rehearse(args: argparse.Namespace) -> int:
    from converters.release import plan_from_args

    from .rollout import simulate_rollout

    if args.faults:
        raise EdgeRuntimeError("--faults and --runtimes do not go together: the rehearsal's devices send good readings")
    if args.bundle is None:
        raise EdgeRuntimeError("--runtimes needs --bundle DIR: the (signed) vibration bundle the runtimes start with")
    if args.release is not None and args.key is None:
        raise EdgeRuntimeError("--release needs --key FILE: the private key that signs the release record")
    public = args.trust
    key = None
    if args.key is not None:
        from converters._cli import _private_key

        key = _private_key(args.key, "--key")
        if public is None:
            public = args.workdir / "release.pub"
            args.workdir.mkdir(parents=True, exist_ok=True)
            public.write_bytes(key.public_pem())
    if public is None:
        raise EdgeRuntimeError("say which key the runtimes trust: --trust FILE (a .pub) or --key FILE")
    return simulate_rollout(
        broker_from_args(args),
        runtimes=args.runtimes,
        bundle=args.bundle.resolve(),
        public_key=public.resolve(),
        workdir=args.workdir.resolve(),
        rate=args.rate,
        duration=args.duration or 60.0,
        qos=min(args.qos, 1),
        release=args.release.resolve() if args.release else None,
        key=key,
        plan=plan_from_args(args),
    )


def _fleet(args: argparse.Namespace) -> int:
    from edge_runtime.mqtt.client import connect_client

    from .fleet import run_fleet

    if args.runtimes is not None:
        return _rehearse(args)
    args.duration = args.duration or 10.0
    broker = broker_from_args(args)
    if len(args.faults) > args.devices:
        raise EdgeRuntimeError(
            f"--faults lists {len(args.faults)} faulty devices but the fleet has {args.devices}: "
            f"give at most {args.devices} faults, or more --devices"
        )
    client = connect_client(broker)
    try:
        fleet = run_fleet(
            client,
            devices=args.devices,
            rate=args.rate,
            duration=args.duration,
            faults=args.faults,
            qos=args.qos,
            seed=args.seed,
        )
    finally:
        client.disconnect()
        client.loop_stop()
    for d in fleet:
        print(f"{d.name:10} {d.rate:6.1f} Hz  {d.fault or '-':8} sent {sum(d.sent.values())}")
    print(f"total sent: {sum(sum(d.sent.values()) for d in fleet)}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from .recording import record

    if args.duration is None and args.count is None:
        raise EdgeRuntimeError("say when to stop recording: --duration SECONDS or --count N")
    check_writable_file(args.output, "-o/--output")
    for text in args.topic:
        try:
            check_filter(text)
        except ValueError as err:
            raise EdgeRuntimeError(f"--topic {text!r}: {err}") from None
    try:
        n = record(broker_from_args(args), args.topic, args.output, duration=args.duration, count=args.count)
    except OSError as err:  # the checks above passed, and writing failed anyway (a full disk)
        raise EdgeRuntimeError(f"-o/--output {args.output}: cannot write it: {err.strerror or err}") from None
    print(f"recorded {n} messages to {args.output}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .recording import replay

    if args.topic is not None and (not args.topic or any(c in args.topic for c in "+#\x00")):
        raise EdgeRuntimeError(f"--topic {args.topic!r}: a topic to publish on, not empty, without +, # or NUL")
    try:
        n = replay(broker_from_args(args), args.file, speed=args.speed, topic=args.topic)
    except OSError as err:
        raise EdgeRuntimeError(f"cannot read {args.file}: {err.strerror}") from None
    except ValueError as err:
        raise EdgeRuntimeError(str(err)) from None
    print(f"replayed {n} messages", file=sys.stderr)
    return 0


def _devices_list(args: argparse.Namespace) -> int:
    from .detect import profile_for, profile_names

    for name in profile_names():
        p = profile_for(name)
        print(f"{name:16} {p.title:36} {p.cores} cores {p.memory_mb:6} MB  int8: {'yes' if p.int8_pays_off else 'no'}")
    return 0


def _devices_show(args: argparse.Namespace) -> int:
    print(json.dumps(_profile(args.name).as_dict(), indent=2))
    return 0


def _devices_detect(args: argparse.Namespace) -> int:
    from .detect import detect, read_facts

    profile, reasons = detect(read_facts(args.root))
    print(f"{profile.name}: {profile.title}")
    for reason in reasons:
        print(f"  because {reason}")
    int8 = "yes" if profile.int8_pays_off else "no"
    print(f"  int8 pays off: {int8}; ONNX Runtime threads: {profile.ort.intra_op_threads}")
    if profile.openvino:
        from .profiles import _openvino_installed

        installed = "installed" if _openvino_installed() else "not installed"
        print(f"  OpenVINO: wheels exist for this board; {installed} (pip install 'edge-runtime[openvino]')")
    return 0


def _deploy_systemd(args: argparse.Namespace) -> int:
    from edge_runtime.config import load_config

    from .deploy import systemd_unit

    config = load_config(args.config)  # a unit for a config that does not load would only fail at boot
    if args.output:
        check_writable_file(args.output, "-o/--output")
    # The runtime's state (its broker session's filters, what it announced to Home Assistant) goes to systemd's
    # StateDirectory unless the config names a directory of its own.
    state = [config.device.state_dir] if config.device.state_dir is not None else []
    text = systemd_unit(
        args.config,
        _profile(args.profile),
        user=args.user,
        reads=[m.bundle for m in config.models],
        writes=[r.capture.dir for r in config.routes if r.capture is not None]
        + state
        + ([config.fleet.dir] if config.fleet is not None and config.fleet.dir is not None else []),
    )
    if args.output:
        write_output(args.output, text, "-o/--output")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _camera(args: argparse.Namespace) -> int:
    from .simulate import simulate_cameras

    w, h = args.size
    if args.rtsp is not None or args.mjpeg is not None:
        from .simulate_video import serve_camera_stream

        return serve_camera_stream(
            rtsp=args.rtsp,
            mjpeg=args.mjpeg,
            fps=args.fps,
            width=w,
            height=h,
            objects=args.objects,
            duration=args.duration,
        )
    return simulate_cameras(
        broker_from_args(args),
        cameras=args.cameras,
        fps=args.fps,
        width=w,
        height=h,
        fmt=args.format,
        scene=args.scene,
        duration=args.duration,
    )


def _video(args: argparse.Namespace) -> int:
    from .simulate_video import write_scene_video

    w, h = args.size
    return write_scene_video(args.output, fps=args.fps, width=w, height=h, objects=args.objects, seed=args.seed)
