"""Converters: a trained model in, a verified model bundle out.

``convert(source, out_dir)`` picks the converter for the source's family, writes the bundle and
checks that ONNX Runtime loads it. Pickled sources must come from a trusted source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from edge_runtime.bundle import Bundle, write_bundle

from ._registry import ConversionError, detect_family, get_converter, register_converter
from .sklearn import convert_estimator

__all__ = ["convert", "convert_estimator", "ConversionError", "register_converter", "write_estimator_bundle"]


def convert(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str = "1",
    family: str | None = None,
    quantize: str | None = None,
    validation: np.ndarray | str | os.PathLike[str] | None = None,
    labels: np.ndarray | str | os.PathLike[str] | None = None,
    calibration: np.ndarray | str | os.PathLike[str] | None = None,
    max_accuracy_drop: float = 1.0,
    target: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    keep_candidates: bool = False,
    reference: np.ndarray | str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Bundle:
    """Convert ``source`` into a bundle in ``out_dir``: quantized as asked (or as measured best) and verified.

    ``quantize``: ``auto`` (the default when validation data is given) measures every mode and keeps the
    fastest within ``max_accuracy_drop`` points; ``none``/``fp16``/``dynamic``/``static`` force one.
    The manifest's ``reference`` (what drift is measured against on the device) is computed on
    ``reference`` (rows as ``.npy``, or a folder of images for image models) or else on ``validation``.
    """
    src = Path(source)
    if not src.exists():
        raise ConversionError(f"{src}: no such file")
    converter = get_converter(family or detect_family(src))
    model_bytes, manifest = converter.convert(src, name=name or src.stem, input_shape=input_shape)
    return _finish(
        out_dir,
        model_bytes,
        manifest,
        version,
        quantize=quantize,
        validation=validation,
        labels=labels,
        calibration=calibration,
        max_accuracy_drop=max_accuracy_drop,
        target=target,
        progress=progress,
        keep_candidates=keep_candidates,
        reference=reference,
    )


def write_estimator_bundle(
    estimator: Any, out_dir: str | os.PathLike[str], *, name: str, version: str = "1", **options: Any
) -> Bundle:
    """Convert an in-memory fitted scikit-learn estimator straight to a bundle (no pickle involved)."""
    model_bytes, manifest = convert_estimator(estimator, name=name)
    return _finish(out_dir, model_bytes, manifest, version, **options)


def _array(value: Any, what: str) -> np.ndarray | None:
    if value is None or isinstance(value, np.ndarray):
        return value
    try:
        return np.load(Path(value), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConversionError(f"{what} {value}: not a readable .npy array ({err})") from err


def _finish(
    out_dir: str | os.PathLike[str],
    model_bytes: bytes,
    manifest: dict[str, Any],
    version: str,
    *,
    quantize: str | None = None,
    validation: Any = None,
    labels: Any = None,
    calibration: Any = None,
    max_accuracy_drop: float = 1.0,
    target: str | None = None,
    progress: Callable[[str], None] | None = None,
    keep_candidates: bool = False,
    reference: Any = None,
) -> Bundle:
    from edge_runtime.engines import Engine

    from .calibrate import load_calibration
    from .gate import run_gate
    from .quantize import MODES, Mode, QuantizeConfig
    from .quantize import quantize as apply_mode

    X, y = _array(validation, "validation data"), _array(labels, "labels")
    mode = quantize or ("auto" if X is not None else "none")
    if mode not in ("auto", *MODES):
        raise ConversionError(f"unknown --quantize {mode!r}; choose from auto, {', '.join(MODES)}")
    if mode == "auto" and X is None:
        raise ConversionError("--quantize auto measures candidates on validation data: give --validation X.npy")
    if y is not None and (X is None or len(y) != len(X)):
        raise ConversionError("--labels needs --validation with the same number of rows")
    input_shape = manifest["inputs"][0]["shape"]
    if X is not None:
        X = load_calibration(X, input_shape, limit=len(X))
    calib = None
    if calibration is not None:
        calib = load_calibration(calibration if isinstance(calibration, np.ndarray) else Path(calibration), input_shape)
    elif mode == "static":
        if X is None:
            raise ConversionError("static quantization needs calibration data: --calibration X.npy (or --validation)")
        calib = X[:256]
    profile = _target(target)
    extra_files: dict[str, bytes] = {}
    report: dict[str, Any] = {
        "target": target,
        "measured_on": _this_machine(),
        "note": None
        if target in (None, "this-machine")
        else f"latencies were measured on this machine, not on {target}",
    }
    if X is not None:
        modes = MODES if mode == "auto" else ("none", mode)
        candidates = run_gate(
            model_bytes,
            manifest,
            modes=modes,
            validation=X,
            labels=y,
            calibration=calib,
            max_accuracy_drop=max_accuracy_drop if mode == "auto" else float("inf"),
            progress=progress,
        )
        if mode != "auto":  # a forced mode is kept whatever it measured; the report still says how it compares
            for c in candidates:
                c.chosen = c.mode == mode and c.model is not None
                c.reason = f"asked for with --quantize {mode}" if c.chosen else c.reason
            if not any(c.chosen for c in candidates):
                raise ConversionError(f"{mode}: {candidates[-1].reason}")
        chosen = next(c for c in candidates if c.chosen)
        base = candidates[0]
        report["candidates"] = [c.report() for c in candidates]
        if keep_candidates:  # for `bench model`: the same table for every candidate, on the device itself
            for c, entry in zip(candidates, report["candidates"]):
                if c.model is not None and not c.chosen:
                    entry["file"] = f"candidates/{c.mode}.onnx"
                    extra_files[entry["file"]] = c.model
        assert chosen.model is not None  # a candidate is chosen only when it produced a model
        model_bytes = chosen.model
        quant = {
            "mode": chosen.mode,
            "notes": chosen.notes,
            "accuracy": chosen.accuracy,
            "fp32_accuracy": base.accuracy,
            "accuracy_metric": "accuracy"
            if y is not None and manifest.get("task") == "classifier"
            else "agreement with fp32",
            "latency_p50_ms": chosen.latency_p50_ms,
            "fp32_latency_p50_ms": base.latency_p50_ms,
            "size_bytes": chosen.size_bytes,
            "fp32_size_bytes": base.size_bytes,
        }
    else:
        result = apply_mode(model_bytes, QuantizeConfig(cast("Mode", mode), calibration=calib))
        model_bytes = result.model
        quant = {"mode": mode, "notes": result.notes, "measured": False}
        report["candidates"] = [
            {
                "mode": mode,
                "size_bytes": len(model_bytes),
                "chosen": True,
                "reason": "asked for; not measured (no --validation)",
                "notes": result.notes,
            }
        ]
    quant.update(target=target, measured_on=report["measured_on"])
    manifest = {**manifest, "version": version, "quantization": quant}
    if profile is not None:
        manifest["target"] = {"profile": profile.name, "int8_pays_off": profile.int8_pays_off}
    if reference is not None or X is not None:
        manifest["reference"] = _reference(model_bytes, manifest, X if reference is None else reference)
    # Engine: refuse, before it replaces anything, a bundle the runtime could not serve.
    return write_bundle(
        out_dir,
        model_bytes,
        manifest,
        extra_files={**extra_files, "report.json": (json.dumps(report, indent=2) + "\n").encode()},
        check=Engine,
    )


def _reference(model_bytes: bytes, manifest: dict[str, Any], source: Any) -> dict[str, Any]:
    """Reference statistics of the model that will serve, on the reference set (drift is measured against them)."""
    from edge_runtime.monitoring.reference import IMAGE_TASKS, reference_for_model, reference_from_images

    from .calibrate import _IMAGES
    from .gate import _session

    session = _session(model_bytes, 1)
    names = [o.name for o in session.get_outputs()]
    input_name, dtype = manifest["inputs"][0]["name"], manifest["inputs"][0]["dtype"]

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {input_name: batch})))

    try:
        if not isinstance(source, np.ndarray) and Path(source).is_dir():
            if manifest.get("task") not in IMAGE_TASKS:
                raise ConversionError(
                    f"--reference {source} is a folder: images describe image models only; give rows as .npy"
                )
            files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in _IMAGES)
            if not files:
                raise ConversionError(f"no images (.jpg, .png, .bmp) in {source}")
            return reference_from_images(manifest, run, (p.read_bytes() for p in files))
        rows = _array(source, "reference data")
        assert rows is not None  # called with a reference set only
        shape = manifest["inputs"][0]["shape"]
        fixed = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
        if rows.ndim != len(shape) or any(f is not None and f != d for f, d in zip(fixed, rows.shape[1:])):
            raise ConversionError(
                f"reference data has shape {list(rows.shape)}; the model takes {shape} (rows along the first axis)"
            )
        names_in = (manifest.get("source") or {}).get("feature_names")
        return reference_for_model(manifest, run, rows.astype(dtype, copy=False), feature_names=names_in)
    except ConversionError:
        raise
    except Exception as err:
        raise ConversionError(f"cannot compute the reference statistics: {err}") from err


def _target(name: str | None):
    if name is None:
        return None
    from devices.detect import profile_for

    return profile_for(name)


def _this_machine() -> str:
    try:
        from devices.detect import this_machine

        p = this_machine()
        return f"{p.title}, {p.cores} cores, int8 {'pays off' if p.int8_pays_off else 'unlikely to pay off'}"
    except Exception:  # noqa: BLE001 - a description only
        import platform

        return platform.machine()
