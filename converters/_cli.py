"""``edge-runtime convert``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert", help="turn a trained model into a bundle")
    conv.add_argument("source", type=Path, help="model file: .pkl/.joblib (scikit-learn; trusted sources only)")
    conv.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to write")
    conv.add_argument("--name", help="model name (default: the file's stem)")
    conv.add_argument("--model-version", default="1", help="version recorded in the manifest")
    conv.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from . import convert

    bundle = convert(args.source, args.output, name=args.name, version=args.model_version)
    m = bundle.manifest
    print(f"wrote {bundle.path}: {m.name} v{m.version} ({m.task}, input {m.inputs[0].shape}, sha256 {m.sha256[:12]})")
    return 0
