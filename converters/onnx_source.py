"""Plain ONNX files from any exporter (PyTorch, TensorFlow, PaddlePaddle, ...).

The model is checked with ``onnx.checker``; its single input and its outputs, with dynamic axes as
None, become the manifest. What the outputs mean is in the file only when its exporter wrote it down
(Ultralytics and YOLOv5 exports: task, class names, image size; see ``ultralytics.py``); otherwise the
task is ``generic`` unless the ``convert`` flags say more (``task_options.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._registry import ConversionError, SourceConverter, register_converter

__all__ = ["describe_onnx"]


def _dims(value_info) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None))
    return out


def describe_onnx(model, *, name: str) -> dict[str, Any]:
    """Manifest fields for an ONNX ModelProto (single tensor input)."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "edge-runtime serves single-input models"
        )

    def spec(v):
        elem = v.type.tensor_type.elem_type
        if not elem:
            raise ConversionError(f"{v.name} is not a tensor (sequence or map): not supported")
        dtype = str(helper.tensor_dtype_to_np_dtype(elem)).replace("object", "str")
        return {"name": v.name, "dtype": dtype, "shape": _dims(v)}

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "name": name,
        "inputs": [spec(inputs[0])],
        "outputs": [spec(o) for o in model.graph.output],
        "task": "generic",
        "source": {"family": "onnx", "opset": opset, "producer": model.producer_name or None},
    }


def _convert_file(path: Path, *, name: str, task_options: Any = None, **_: Any) -> tuple[bytes, dict[str, Any]]:
    try:
        import onnx
    except ImportError:
        raise ConversionError("converting ONNX files needs: pip install 'edge-runtime[convert]'") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:
        raise ConversionError(f"{path} is not a valid ONNX model: {str(err).splitlines()[0]}") from err
    from .task_options import resolve_task

    manifest = resolve_task(model, describe_onnx(model, name=name), task_options, family="onnx")
    return model.SerializeToString(), manifest


register_converter(SourceConverter("onnx", (".onnx",), _convert_file))
