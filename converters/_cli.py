"""``edge-runtime convert``: a thin layer over ``converters.convert``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.cli.argtypes import positive_ints
from edge_runtime.cli.outputs import check_writable_dir


def register(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert", help="turn a trained model into a (measured, quantized) bundle")
    conv.add_argument(
        "source",
        type=Path,
        help="model file: .pkl/.joblib (scikit-learn; trusted sources only), .onnx, or .pt (TorchScript)",
    )
    conv.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to write")
    conv.add_argument("--name", help="model name (default: the file's stem)")
    conv.add_argument("--model-version", default="1", help="version recorded in the manifest")
    conv.add_argument(
        "--quantize",
        choices=["auto", "none", "fp16", "dynamic", "static"],
        help="auto (default with --validation): measure every mode, keep the fastest accurate one",
    )
    conv.add_argument(
        "--validation",
        type=Path,
        help="validation inputs to measure candidates on: .npy, or a folder of JPEG/PNG images for an image model",
    )
    conv.add_argument(
        "--reference",
        type=Path,
        help="rows (.npy), or a folder of images for image models, that drift on the device is measured "
        "against (default: --validation)",
    )
    conv.add_argument(
        "--labels", type=Path, help="labels for --validation (.npy); else agreement with fp32 is measured"
    )
    conv.add_argument("--calibration", type=Path, help="static: calibration inputs (.npy) or a folder of images")
    conv.add_argument("--max-accuracy-drop", type=float, default=1.0, help="points of accuracy a candidate may lose")
    conv.add_argument("--target", help="device profile the bundle is for (`edge-runtime devices list`)")
    conv.add_argument(
        "--keep-candidates",
        action="store_true",
        help="also keep the candidates not chosen (candidates/*.onnx) so `bench model` can compare them on the device",
    )
    conv.add_argument(
        "--input-shape", type=positive_ints("1,3,224,224"), help="PyTorch: example input shape, e.g. 1,3,224,224"
    )
    conv.add_argument(
        "--engine",
        default="auto",
        metavar="{auto,onnxruntime,openvino}",
        help="auto (default): measure every installed engine and keep the fastest accurate one",
    )
    conv.add_argument(
        "--batch-sizes",
        type=positive_ints("1,4"),
        help="batch sizes the route will use, to measure speed at (default 1,32; image models: "
        "the model's fixed batch, or 1,4)",
    )
    # Task and image flags: parsed and checked together in converters.task_options (one-line errors),
    # and they override what the model's own metadata says (Ultralytics exports).
    task = conv.add_argument_group("task and preprocessing (override the model's metadata)")
    task.add_argument(
        "--task",
        metavar="{auto,generic,classifier,regressor,anomaly,image_classifier,detector}",
        help="what the model does (default auto: from the model's metadata, else generic)",
    )
    task.add_argument(
        "--class-names", metavar="FILE|a,b,c", help="class names: a file with one per line, or a comma list"
    )
    task.add_argument("--image-size", metavar="N|WxH", help="model input size (default: the model's fixed input)")
    task.add_argument("--resize", metavar="{letterbox,stretch,center_crop}", help="how a frame is fitted to the input")
    task.add_argument(
        "--resize-short", metavar="N", help="center_crop: resize the short side to N, then crop the centre"
    )
    task.add_argument("--color", metavar="{rgb,bgr}", help="channel order the model expects")
    task.add_argument("--scale", metavar="F", help="pixel values (0..255) are multiplied by F (default 1/255)")
    task.add_argument("--mean", metavar="a,b,c", help="subtracted per channel after --scale")
    task.add_argument("--std", metavar="a,b,c", help="divided by per channel after --mean")
    task.add_argument("--layout", metavar="{NCHW,NHWC}", help="input layout")
    task.add_argument(
        "--detector-format",
        metavar="{yolov5,yolov8}",
        help="yolov5: (boxes, 5 + classes) with objectness; yolov8: (4 + classes, boxes)",
    )
    task.add_argument("--conf-threshold", metavar="F", help="detections scoring below F are dropped (default 0.25)")
    task.add_argument("--iou-threshold", metavar="F", help="NMS overlap above which boxes of a class merge")
    conv.add_argument(
        "--signing-key-env",
        metavar="VAR",
        help="sign the bundle with the HMAC key in this environment variable (the runtime's signing_key_env)",
    )
    conv.add_argument(
        "--sign-key",
        type=Path,
        metavar="FILE",
        help="sign the bundle with this Ed25519 private key (`edge-runtime keys new`; devices trust its .pub)",
    )
    conv.set_defaults(handler=_convert)

    sign = sub.add_parser(
        "sign", help="sign a bundle for runtimes that check signatures ([trust] public_keys, signing_key_env)"
    )
    sign.add_argument("bundle", type=Path, help="bundle directory (replaced in one step, like convert -o)")
    sign.add_argument("--key", type=Path, metavar="FILE", help="Ed25519 private key file (`edge-runtime keys new`)")
    sign.add_argument("--key-env", metavar="VAR", help="environment variable holding an HMAC key")
    sign.set_defaults(handler=_sign)


def _signing_key(var: str, flag: str) -> bytes:
    import os

    from edge_runtime.errors import EdgeRuntimeError

    value = os.environ.get(var)
    if not value:
        raise EdgeRuntimeError(f"{flag}: environment variable {var} is not set; export it with the signing key")
    return value.encode()


def _private_key(path: Path, flag: str):
    from edge_runtime.bundle.signing import read_signing_key
    from edge_runtime.errors import ConfigError, EdgeRuntimeError

    try:
        return read_signing_key(path)
    except ConfigError as err:
        raise EdgeRuntimeError(f"{flag}: {err.message}") from None


def _sign(args: argparse.Namespace) -> int:
    from edge_runtime.bundle import sign_bundle
    from edge_runtime.errors import EdgeRuntimeError

    if args.key is None and args.key_env is None:
        raise EdgeRuntimeError("say how to sign: --key FILE (Ed25519, `edge-runtime keys new`) or --key-env VAR (HMAC)")
    private = _private_key(args.key, "--key") if args.key is not None else None
    hmac_key = _signing_key(args.key_env, "--key-env") if args.key_env else None
    bundle = sign_bundle(args.bundle, hmac_key, private_key=private)
    by = f", key {private.key_id}" if private is not None else ""
    print(f"signed {args.bundle} ({bundle.manifest.name} version {bundle.manifest.version}{by})", file=sys.stderr)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from . import convert
    from .task_options import task_options_from_text

    options = task_options_from_text(
        **{
            k: getattr(args, k)
            for k in (
                "task",
                "class_names",
                "image_size",
                "resize",
                "resize_short",
                "color",
                "scale",
                "mean",
                "std",
                "layout",
                "detector_format",
                "conf_threshold",
                "iou_threshold",
            )
        }
    )
    check_writable_dir(args.output, "-o/--output")
    key = _signing_key(args.signing_key_env, "--signing-key-env") if args.signing_key_env else None
    private = _private_key(args.sign_key, "--sign-key") if args.sign_key is not None else None
    bundle = convert(
        args.source,
        args.output,
        name=args.name,
        version=args.model_version,
        quantize=args.quantize,
        validation=args.validation,
        labels=args.labels,
        calibration=args.calibration,
        max_accuracy_drop=args.max_accuracy_drop,
        target=args.target,
        input_shape=args.input_shape,
        keep_candidates=args.keep_candidates,
        task_options=options,
        engine=args.engine,
        batch_sizes=args.batch_sizes,
        reference=args.reference,
    )
    if key is not None or private is not None:
        from edge_runtime.bundle import sign_bundle

        bundle = sign_bundle(args.output, key, private_key=private)
    m = bundle.manifest
    report = json.loads((bundle.path / "report.json").read_text())
    print(format_report(report))
    engine = f", {m.engine.kind} with {m.engine.threads} thread(s)" if m.engine else ""
    labels = f", {len(m.labels)} classes" if m.labels else ""
    print(
        f"wrote {bundle.path}: {m.name} v{m.version} ({m.task}{labels}, input {m.inputs[0].shape}, "
        f"quantization {m.quantization['mode']}{engine}, sha256 {m.sha256[:12]})"
    )
    extra = m.model_extra or {}  # a dict: the manifest allows extra keys
    if "reference" in extra:
        ref = extra["reference"]
        print(
            f"reference statistics: {ref['rows']} rows, {len((ref.get('inputs') or {}).get('features') or [])} "
            f"input channels{', outputs' if ref.get('outputs') else ''} (drift is measured against them)"
        )
    if report.get("note"):
        print(f"note: {report['note']}", file=sys.stderr)
    return 0


def format_report(report: dict) -> str:
    batches = sorted({b for c in report["candidates"] for b in (c.get("latency_p50_ms") or {})}, key=int) or ["1"]
    rows = [("", "MODE", "ENGINE", "THREADS", "SIZE KB", *(f"P50 b={b} ms" for b in batches), "ACCURACY %", "WHY")]
    for c in report["candidates"]:
        lat = c.get("latency_p50_ms") or {}
        acc = c.get("accuracy")
        det = c.get("detection")
        acc_text = "-" if acc is None else f"{acc:g}"
        if det and det.get("compared") == "scores":
            acc_text += " (scores: fp32 found no boxes)"
        elif det:
            acc_text += f" (P {det['precision']:g} R {det['recall']:g})"
        engine = c.get("engine", "onnxruntime") + (f" {c['precision']}" if c.get("precision") else "")
        rows.append(
            (
                "*" if c.get("chosen") else "",
                c["mode"],
                engine,
                str(c.get("threads") or "-") if lat else "-",
                f"{c.get('size_bytes', 0) / 1024:.1f}" if c.get("size_bytes") else "-",
                *(str(lat.get(b, "-")) for b in batches),
                acc_text,
                c.get("reason", ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows)
