"""Converters: a trained model in, a verified model bundle out.

``convert(source, out_dir)`` picks the converter for the source's family, writes the bundle and
checks that ONNX Runtime loads it. Pickled sources must come from a trusted source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import Bundle, write_bundle

from ._registry import ConversionError, detect_family, get_converter, register_converter
from .sklearn import convert_estimator
from .task_options import TaskOptions

__all__ = [
    "convert",
    "convert_estimator",
    "ConversionError",
    "register_converter",
    "write_estimator_bundle",
    "TaskOptions",
]

ENGINE_CHOICES = ("auto", "onnxruntime", "openvino")


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
    task_options: TaskOptions | None = None,
    engine: str = "auto",
    batch_sizes: tuple[int, ...] | None = None,
    reference: np.ndarray | str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Bundle:
    """Convert ``source`` into a bundle in ``out_dir``: quantized as asked (or as measured best) and verified.

    ``quantize``: ``auto`` (the default when validation data is given) measures every mode and keeps the
    fastest within ``max_accuracy_drop`` points; ``none``/``fp16``/``dynamic``/``static`` force one.
    ``task_options``: the task, class names and image preprocessing (``convert`` flags), over what the
    model's own metadata says (Ultralytics exports). ``validation`` and ``calibration`` may be folders of
    images for image models. ``engine``: ``auto`` measures every installed engine (ONNX Runtime, OpenVINO)
    and keeps the fastest accurate one. ``batch_sizes``: the batch sizes the route will use (default: 1 and
    32; for image models the model's fixed batch, or 1 and 4). The manifest's ``reference`` (what drift is
    measured against on the device) is computed on ``reference`` (rows as ``.npy``, or a folder of images for
    image models) or else on ``validation``.
    """
    src = Path(source)
    if not src.exists():
        raise ConversionError(f"{src}: no such file")
    fam = family or detect_family(src)
    converter = get_converter(fam)
    model_bytes, manifest = converter.convert(
        src, name=name or src.stem, input_shape=input_shape, task_options=task_options
    )
    if fam != "onnx":  # the ONNX converter resolves the task itself, from the file's metadata and the flags
        from .task_options import resolve_task

        model = None
        if fam == "pytorch":
            import onnx

            model = onnx.load_from_string(model_bytes)
        manifest = resolve_task(model, manifest, task_options, family=fam)
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
        engine=engine,
        batch_sizes=batch_sizes,
        reference=reference,
    )


def write_estimator_bundle(
    estimator: Any, out_dir: str | os.PathLike[str], *, name: str, version: str = "1", **options: Any
) -> Bundle:
    """Convert an in-memory fitted scikit-learn estimator straight to a bundle (no pickle involved)."""
    model_bytes, manifest = convert_estimator(estimator, name=name)
    return _finish(out_dir, model_bytes, manifest, version, **options)


def _array(value: Any, what: str) -> np.ndarray | None:
    return None if value is None else _load_array(value, what)


def _load_array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.load(Path(value), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConversionError(f"{what} {value}: not a readable .npy array ({err})") from err


def _rows(value: Any, manifest: dict[str, Any], what: str, *, limit: int) -> np.ndarray | None:
    """Model input rows from an array, an .npy file, or a folder of images (decoded with the bundle's preprocessing)."""
    from .calibrate import load_calibration

    if value is None:
        return None
    if not isinstance(value, np.ndarray) and Path(value).is_dir():
        return load_calibration(Path(value), manifest["inputs"][0]["shape"], limit=limit, manifest=manifest)
    rows = _load_array(value, what)
    # Every validation row counts; calibration keeps its first ``limit`` rows.
    return load_calibration(
        rows, manifest["inputs"][0]["shape"], limit=len(rows) if what.startswith("validation") else limit
    )


def _batch_sizes(manifest: dict[str, Any], asked: tuple[int, ...] | None) -> tuple[int, ...]:
    from edge_runtime.bundle.image_spec import IMAGE_TASKS

    first = manifest["inputs"][0]["shape"][0]
    fixed = first if isinstance(first, int) and first > 0 else None
    if asked:
        if fixed and any(b % fixed for b in asked):
            raise ConversionError(
                f"--batch-sizes {','.join(map(str, asked))}: the model's batch is fixed at {fixed}; "
                f"give multiples of {fixed}"
            )
        return tuple(asked)
    if fixed:
        return (fixed,)
    return (1, 4) if manifest.get("task") in IMAGE_TASKS else (1, 32)


def _synthetic(manifest: dict[str, Any], n: int = 8) -> np.ndarray:
    """Drawn scenes (coloured shapes on a noisy background, as the camera simulator makes), decoded with the
    bundle's own preprocessing: to compare engines and threads when no validation images are given."""
    from devices.cameras import encode_frame
    from devices.scenes import draw_scene
    from edge_runtime.bundle import Manifest
    from edge_runtime.tasks.vision import ImageDecoder

    decoder = ImageDecoder(Manifest.model_validate({**manifest, "sha256": "0" * 64}), max_bytes=1 << 26)
    rng = np.random.default_rng(0)
    return np.stack([decoder.decode(encode_frame(draw_scene(rng, 640, 480)[0]))[1] for _ in range(n)])


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
    engine: str = "auto",
    batch_sizes: tuple[int, ...] | None = None,
    reference: Any = None,
) -> Bundle:
    from edge_runtime.bundle.image_spec import IMAGE_TASKS
    from edge_runtime.engines import get_engine_kind, open_engine

    from .gate import run_gate
    from .quantize import MODES, QuantizeConfig
    from .quantize import quantize as apply_mode

    mode = quantize or ("auto" if validation is not None else "none")
    if mode not in ("auto", *MODES):
        raise ConversionError(f"unknown --quantize {mode!r}; choose from auto, {', '.join(MODES)}")
    if engine not in ENGINE_CHOICES:
        raise ConversionError(f"unknown --engine {engine!r}; choose from {', '.join(ENGINE_CHOICES)}")
    if mode == "auto" and validation is None:
        raise ConversionError(
            "--quantize auto measures candidates on validation data: give --validation X.npy "
            "(or a folder of images for an image model)"
        )
    image = manifest.get("task") in IMAGE_TASKS
    X = _rows(validation, manifest, "validation data", limit=500)
    y = _array(labels, "labels")
    if y is not None and (X is None or len(y) != len(X)):
        raise ConversionError("--labels needs --validation with the same number of rows")
    calib = _rows(calibration, manifest, "calibration data", limit=256)
    if calib is None and mode == "static":
        if X is None:
            raise ConversionError("static quantization needs calibration data: --calibration X.npy (or --validation)")
        calib = X[:256]
    sizes = _batch_sizes(manifest, batch_sizes)
    profile = _target(target)
    extra_files: dict[str, bytes] = {}
    report: dict[str, Any] = {
        "target": target,
        "measured_on": _this_machine(),
        "note": None
        if target in (None, "this-machine")
        else f"latencies were measured on this machine, not on {target}",
    }
    synthetic = X is None and image
    if synthetic:  # a CNN's engine and thread count matter as much as its mode: measure them on drawn frames
        X = _synthetic(manifest)
        report["synthetic_inputs"] = (
            "no --validation: engines and threads were compared on drawn scenes; "
            "give --validation DIR to compare accuracy on real images"
        )
    engines = None if engine == "auto" else (engine,)
    if engine != "auto" and not get_engine_kind(engine).available():
        raise ConversionError(f"--engine {engine} is not installed here: {get_engine_kind(engine).install_hint}")
    chosen = None
    if X is not None:
        modes = MODES if mode == "auto" else ("none", mode)
        candidates = run_gate(
            model_bytes,
            manifest,
            modes=modes,
            validation=X,
            labels=y,
            calibration=calib,
            max_accuracy_drop=max_accuracy_drop,
            only_mode=None if mode == "auto" else mode,
            engines=engines,
            batch_sizes=sizes,
            progress=progress,
        )
        chosen = next(c for c in candidates if c.chosen)
        base = candidates[0]
        report["candidates"] = [c.report() for c in candidates]
        if keep_candidates:  # for `bench model`: the same table for every candidate, on the device itself
            for c, entry in zip(candidates, report["candidates"]):
                if c.model is not None and not c.chosen and c.engine == "onnxruntime":
                    entry["file"] = f"candidates/{c.mode}.onnx"
                    extra_files[entry["file"]] = c.model
        assert chosen.model is not None  # the gate chooses only among candidates it built and measured
        model_bytes = chosen.model
        metric = (
            "accuracy"
            if y is not None and manifest.get("task") in ("classifier", "image_classifier")
            else "F1 of detections against fp32 (IoU >= 0.5, same class)"
            if manifest.get("task") == "detector"
            else "agreement with fp32"
        )
        quant = {
            "mode": chosen.mode,
            "notes": chosen.notes,
            "accuracy": chosen.accuracy,
            "fp32_accuracy": base.accuracy,
            "accuracy_metric": metric,
            "latency_p50_ms": chosen.latency_p50_ms,
            "fp32_latency_p50_ms": base.latency_p50_ms,
            "size_bytes": chosen.size_bytes,
            "fp32_size_bytes": base.size_bytes,
        }
        if chosen.detection:
            quant["detection"] = chosen.detection
        if synthetic:
            quant["measured"] = "engines and threads on drawn scenes (no --validation)"
        report["engine"] = {
            "kind": chosen.engine,
            "threads": chosen.threads,
            "streams": chosen.streams,
            "precision": chosen.precision,
            "why": chosen.reason,
            "threads_why": chosen.threads_reason,
        }
    else:
        result = apply_mode(
            model_bytes,
            QuantizeConfig(
                mode,
                calibration=calib,
                float_tail_of=(manifest["outputs"][0]["name"] if manifest.get("task") == "detector" else None),
            ),
        )
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
    if chosen is not None:
        manifest["engine"] = {
            "kind": chosen.engine,
            "threads": chosen.threads,
            "streams": chosen.streams,
            "precision": chosen.precision,
            "measured_on": report["measured_on"],
        }
    if profile is not None:
        manifest["target"] = {
            "profile": profile.name,
            "int8_pays_off": profile.int8_pays_off,
            "openvino": profile.openvino,
        }
    if reference is not None:
        manifest["reference"] = _reference(model_bytes, manifest, reference)
    elif X is not None and not synthetic:
        try:  # from --validation, unasked: a set too small to describe a distribution is noted, not fatal
            manifest["reference"] = _reference(model_bytes, manifest, X)
        except ConversionError as err:
            report["reference"] = f"not stored: {err}; give --reference with a few hundred rows for drift"
    # open_engine: refuse, before it replaces anything, a bundle the runtime could not serve.
    return write_bundle(
        out_dir,
        model_bytes,
        manifest,
        extra_files={**extra_files, "report.json": (json.dumps(report, indent=2) + "\n").encode()},
        check=open_engine,
    )


def _reference(model_bytes: bytes, manifest: dict[str, Any], source: Any) -> dict[str, Any]:
    """Reference statistics of the model that will serve, on the reference set (drift is measured against them)."""
    import onnxruntime as ort

    from edge_runtime.engines import fixed_batch, run_in_slices
    from edge_runtime.monitoring.reference import IMAGE_TASKS, reference_for_model, reference_from_images

    from .calibrate import _IMAGES

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name, dtype = manifest["inputs"][0]["name"], manifest["inputs"][0]["dtype"]
    batch_size = fixed_batch(session.get_inputs()[0].shape[0])

    def run_once(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {input_name: batch})))

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:  # a fixed-batch model (Ultralytics: 1) runs in slices
        if batch_size and len(batch) != batch_size:
            return run_in_slices(run_once, batch, batch_size)
        return run_once(batch)

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
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
        if rows.ndim != len(shape) or any(f is not None and f != d for f, d in zip(dims, rows.shape[1:])):
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
