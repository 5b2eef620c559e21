"""PyTorch models: TorchScript files (``.pt``/``.pth`` saved with ``torch.jit.save``), exported to ONNX.

Needs torch, which the runtime and the test suite never need: a clear error says how to get it.
ONNX export needs an example input: give its shape (``input_shape``, batch axis first; the batch axis
is exported as dynamic).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ._registry import ConversionError, SourceConverter, register_converter

__all__ = ["convert_module"]


def _torch():
    try:
        import torch
    except ImportError:
        raise ConversionError(
            "converting PyTorch models needs torch: pip install torch "
            "(CPU wheels: --index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    return torch


def convert_module(module: Any, example: Any, *, name: str, opset: int = 17) -> tuple[bytes, dict[str, Any]]:
    """Export an ``nn.Module`` (or TorchScript module) called on ``example`` to ONNX."""
    torch = _torch()
    import onnx

    from .onnx_source import describe_onnx

    buf = io.BytesIO()
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=opset,
        )
    model = onnx.load_from_string(buf.getvalue())
    manifest = describe_onnx(model, name=name)
    manifest["source"] = {"family": "pytorch", "torch": torch.__version__, "opset": opset}
    return buf.getvalue(), manifest


def _convert_file(path: Path, *, name: str, input_shape: tuple[int, ...] | None = None, **_: Any):
    torch = _torch()
    if not input_shape:
        raise ConversionError("a PyTorch model needs an example input shape: --input-shape 1,3,224,224")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise ConversionError(f"{path} is not a TorchScript file (save with torch.jit.save): {err}") from err
    return convert_module(module, torch.zeros(input_shape), name=name)


register_converter(SourceConverter("pytorch", (".pt", ".pth", ".torchscript"), _convert_file))
