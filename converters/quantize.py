"""Quantization: one entry point, dispatching on a typed config whose combinations are checked in one place.

Modes: ``none`` (fp32 as converted), ``fp16`` (weights and compute in half precision, inputs and outputs
kept float32), ``dynamic`` (int8 weights, activations quantized at run time) and ``static`` (int8 QDQ
with ranges from calibration data, per-channel weights where the opset allows).

Real models break ONNX Runtime's preprocessing in known ways; each workaround is applied, not raised,
and written into ``notes`` so the report says what was done:
- symbolic shape inference fails on some graphs: fall back to ONNX shape inference, then to none;
- per-channel QDQ needs opset 13 or newer: older models (11, 12) are converted to 13 first;
- tree ensembles (ai.onnx.ml TreeEnsemble*) have no int8 or fp16 kernels: they stay fp32.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.vocabulary import QUANTIZATION_MODES, QuantizationMode

from ._registry import ConversionError

__all__ = ["MODES", "QuantizeConfig", "QuantizeResult", "quantize", "unsupported_reason"]

Mode = QuantizationMode  # defined once, in edge_runtime.vocabulary
MODES: tuple[str, ...] = QUANTIZATION_MODES
_TREES = {"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"}
_PER_CHANNEL_MIN_OPSET = 13


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str  # a Mode; the --quantize text as given, checked in __post_init__ (an unknown one is a ConversionError)
    calibration: np.ndarray | None = None  # rows of model input; static needs it
    per_channel: bool = True
    # static: a detector's output name; the decoding tail before it stays float (see detector_head.py)
    float_tail_of: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConversionError(f"unknown quantization mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.mode == "static" and self.calibration is None:
            raise ConversionError(
                "static quantization needs calibration data: --calibration X.npy (or a folder of images)"
            )


@dataclass
class QuantizeResult:
    mode: str
    model: bytes
    notes: list[str] = field(default_factory=list)


def _model(data: bytes):
    import onnx

    return onnx.load_from_string(data)


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def unsupported_reason(model_bytes: bytes, mode: str) -> str | None:
    """Why ``mode`` cannot apply to this model, or None."""
    if mode == "none":
        return None
    ops = {n.op_type for n in _model(model_bytes).graph.node}
    trees = ops & _TREES
    if trees:
        return f"{sorted(trees)[0]} has no {'fp16' if mode == 'fp16' else 'int8'} kernels in ONNX Runtime: kept float32"
    if mode in ("dynamic", "static") and not ops & {
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "Gather",
        "LSTM",
        "GRU",
        "Attention",
        "MatMulInteger",
    }:
        return "no MatMul, Gemm or Conv to quantize: int8 would change nothing"
    return None


def quantize(model_bytes: bytes, config: QuantizeConfig) -> QuantizeResult:
    """Return the model in ``config.mode``; raise ConversionError when the mode cannot apply."""
    reason = unsupported_reason(model_bytes, config.mode)
    if reason:
        raise ConversionError(f"{config.mode}: {reason}")
    if config.mode == "none":
        return QuantizeResult("none", model_bytes)
    return _QUANTIZERS[config.mode](model_bytes, config)


def _fp16(model_bytes: bytes, config: QuantizeConfig) -> QuantizeResult:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(_model(model_bytes), keep_io_types=True)
    return QuantizeResult("fp16", model.SerializeToString(), ["float16 weights; inputs and outputs stay float32"])


def _dynamic(model_bytes: bytes, config: QuantizeConfig) -> QuantizeResult:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, prep, out = Path(tmp, "in.onnx"), Path(tmp, "prep.onnx"), Path(tmp, "out.onnx")
        src.write_bytes(model_bytes)
        notes = _preprocess(src, prep)
        # Convolutions quantized dynamically are often several times slower (onnxruntime #12854): leave them.
        ops = {n.op_type for n in _model(model_bytes).graph.node}
        op_types = [o for o in ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather") if o in ops]
        if "Conv" in ops:
            notes.append("convolutions left in float32: dynamic int8 convolutions are slow in ONNX Runtime (#12854)")
        quantize_dynamic(prep, out, weight_type=QuantType.QInt8, op_types_to_quantize=op_types or None)
        return QuantizeResult("dynamic", out.read_bytes(), notes)


def _static(model_bytes: bytes, config: QuantizeConfig) -> QuantizeResult:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .calibrate import CalibrationReader

    calibration = config.calibration
    assert calibration is not None  # QuantizeConfig refuses static without calibration data
    model = _model(model_bytes)
    notes: list[str] = []
    per_channel = config.per_channel
    if per_channel and _default_opset(model) < _PER_CHANNEL_MIN_OPSET:
        upgraded = _upgrade_opset(model, notes)
        if upgraded is None:
            per_channel = False
            model_bytes = model.SerializeToString()
        else:
            model_bytes = upgraded
    with tempfile.TemporaryDirectory() as tmp:
        src, prep, out = Path(tmp, "in.onnx"), Path(tmp, "prep.onnx"), Path(tmp, "out.onnx")
        src.write_bytes(model_bytes)
        notes += _preprocess(src, prep)
        exclude = _float_tail(prep, config.float_tail_of, notes) if config.float_tail_of else []
        graph_input = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        input_name = graph_input.name
        # A model exported with a fixed batch (Ultralytics: 1) is calibrated with batches of exactly that size.
        first = graph_input.type.tensor_type.shape.dim[0] if graph_input.type.tensor_type.shape.dim else None
        fixed = first.dim_value if first is not None and first.HasField("dim_value") and first.dim_value > 0 else None
        # ONNX Runtime's int32-bias scale adjustment fails on per-channel Gemm weights in some versions:
        # retry without it, then per tensor, and say which one worked.
        ladder: list[tuple[dict[str, bool], bool, str | None]] = [({}, per_channel, None)]
        if per_channel:
            ladder += [
                (
                    {"QDQDisableWeightAdjustForInt32Bias": True},
                    True,
                    "int32-bias weight-scale adjustment failed; disabled",
                ),
                ({}, False, "per-channel quantization failed; per tensor instead"),
            ]
        for extra, channel, note in ladder:
            try:
                reader = CalibrationReader(input_name, calibration, batch=fixed or 16, exact=bool(fixed))
                quantize_static(
                    prep,
                    out,
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude,
                    extra_options=extra,
                )
            except Exception as err:
                failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]
                if (extra, channel, note) == ladder[-1]:
                    raise ConversionError(f"static quantization failed: {failure}") from err
                continue
            if note:
                notes.append(f"{note} ({failure})")
            per_channel = channel
            break
        notes.append(
            f"QDQ, uint8 activations, int8 weights{', per channel' if per_channel else ''}; "
            f"calibrated on {len(calibration)} rows"
        )
        return QuantizeResult("static", out.read_bytes(), notes)


def _float_tail(prep: Path, output: str, notes: list[str]) -> list[str]:
    """Name the detector's decoding tail in the model about to be quantized, so it stays float."""
    from .detector_head import float_tail

    model = _model(prep.read_bytes())
    names = float_tail(model, output)
    if names:
        prep.write_bytes(model.SerializeToString())  # float_tail named any unnamed nodes
        notes.append(
            f"detection head kept in float: {len(names)} decoding nodes before {output} are not quantized "
            "(int8 collapses their mixed pixel/score ranges: onnxruntime #14233)"
        )
    else:
        notes.append(f"no detection head found before {output}: the whole model is quantized")
    return names


def _upgrade_opset(model, notes: list[str]) -> bytes | None:
    from onnx import version_converter

    old = _default_opset(model)
    try:
        upgraded = version_converter.convert_version(model, _PER_CHANNEL_MIN_OPSET)
    except Exception as err:  # noqa: BLE001 - the converter raises many types; per-tensor still works
        notes.append(f"opset {old} could not be upgraded ({str(err).splitlines()[0]}): per-tensor quantization instead")
        return None
    notes.append(f"opset {old} upgraded to {_PER_CHANNEL_MIN_OPSET}: per-channel QDQ is invalid below it")
    return upgraded.SerializeToString()


def _preprocess(src: Path, out: Path) -> list[str]:
    """ONNX Runtime's recommended preprocessing, with the known failures worked around."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts: tuple[tuple[dict[str, bool], str | None], ...] = (
        ({}, None),
        ({"skip_symbolic_shape": True}, "symbolic shape inference failed; used ONNX shape inference instead"),
        (
            {"skip_symbolic_shape": True, "skip_onnx_shape": True, "skip_optimization": True},
            "shape inference failed; quantized without preprocessing",
        ),
    )
    last = None
    for kwargs, note in attempts:
        try:
            quant_pre_process(str(src), str(out), **kwargs)
            return [f"{note} ({last})"] if note else []
        except Exception as err:  # noqa: BLE001 - the failures are many and version-dependent
            last = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    out.write_bytes(src.read_bytes())
    return [f"preprocessing failed ({last}); quantized the model as converted"]


_QUANTIZERS = {"fp16": _fp16, "dynamic": _dynamic, "static": _static}
