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
    conv.add_argument("--validation", type=Path, help="validation inputs (.npy) to measure candidates on")
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
    conv.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from . import convert

    check_writable_dir(args.output, "-o/--output")
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
        reference=args.reference,
    )
    m = bundle.manifest
    report = json.loads((bundle.path / "report.json").read_text())
    print(format_report(report))
    print(
        f"wrote {bundle.path}: {m.name} v{m.version} ({m.task}, input {m.inputs[0].shape}, "
        f"quantization {m.quantization['mode']}, sha256 {m.sha256[:12]})"
    )
    if "reference" in m.model_extra:
        ref = m.model_extra["reference"]
        print(
            f"reference statistics: {ref['rows']} rows, {len((ref.get('inputs') or {}).get('features') or [])} "
            f"input channels{', outputs' if ref.get('outputs') else ''} (drift is measured against them)"
        )
    if report.get("note"):
        print(f"note: {report['note']}", file=sys.stderr)
    return 0


def format_report(report: dict) -> str:
    rows = [("", "MODE", "SIZE KB", "P50 b=1 ms", "P50 b=32 ms", "ACCURACY %", "WHY")]
    for c in report["candidates"]:
        lat = c.get("latency_p50_ms") or {}
        acc = c.get("accuracy")
        rows.append(
            (
                "*" if c.get("chosen") else "",
                c["mode"],
                f"{c.get('size_bytes', 0) / 1024:.1f}" if c.get("size_bytes") else "-",
                str(lat.get("1", "-")),
                str(lat.get("32", "-")),
                "-" if acc is None else f"{acc:g}",
                c.get("reason", ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows)
