"""scikit-learn estimators and pipelines to ONNX, through skl2onnx.

Pickles and joblib files run code when loaded: convert only files from a source you trust. The runtime
itself never loads a pickle; it only reads the ONNX file this produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._registry import ConversionError, SourceConverter, register_converter

__all__ = ["convert_estimator", "load_estimator"]


def load_estimator(path: Path) -> Any:
    """Load a pickled/joblib estimator. Only from a trusted source: unpickling can run arbitrary code."""
    try:
        import joblib
    except ImportError:
        raise ConversionError("converting scikit-learn models needs: pip install 'edge-runtime[convert]'") from None
    try:
        return joblib.load(path)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except Exception as err:
        raise ConversionError(f"{path} is not a readable pickle/joblib file: {type(err).__name__}: {err}") from err


def _final_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return _final_step(steps[-1][1]) if steps else model


def convert_estimator(
    model: Any, *, name: str, n_features: int | None = None, target_opset: int | dict[str, int] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Convert a fitted estimator; return the ONNX bytes and the manifest fields that describe it."""
    try:
        import sklearn
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise ConversionError("converting scikit-learn models needs: pip install 'edge-runtime[convert]'") from None
    if not hasattr(model, "predict") and not hasattr(model, "transform"):
        raise ConversionError(f"{type(model).__name__} is not a scikit-learn estimator (no predict or transform)")
    n_features = n_features or getattr(model, "n_features_in_", None)
    if not n_features:
        raise ConversionError(f"{type(model).__name__} is not fitted (no n_features_in_); fit it before converting")
    final = _final_step(model)
    is_classifier = hasattr(final, "classes_") and hasattr(final, "predict_proba")
    options = {id(final): {"zipmap": False}} if is_classifier else None
    if target_opset is None:
        from skl2onnx import get_latest_tested_opset_version

        # ai.onnx.ml 3 is what every skl2onnx converter (IsolationForest included) and ONNX Runtime know.
        target_opset = {"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}
    try:
        onx = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, int(n_features)]))],
            options=options,
            target_opset=target_opset,
        )
    except Exception as err:  # skl2onnx raises RuntimeError/MissingShapeCalculator/...
        raise ConversionError(f"skl2onnx cannot convert {type(final).__name__}: {str(err).splitlines()[0]}") from err
    outputs = [o.name for o in onx.graph.output]
    manifest: dict[str, Any] = {
        "name": name,
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, int(n_features)]}],
        "outputs": [{"name": o.name, "dtype": _elem_dtype(o), "shape": _shape(o)} for o in onx.graph.output],
        "source": {"family": "sklearn", "estimator": type(model).__name__, "sklearn": sklearn.__version__},
    }
    if getattr(model, "feature_names_in_", None) is not None:  # fitted on a DataFrame: drift reports these names
        manifest["source"]["feature_names"] = [str(n) for n in model.feature_names_in_]
    from sklearn.base import is_outlier_detector

    if is_outlier_detector(final) and len(outputs) == 2:  # IsolationForest, OneClassSVM, ...: label -1/1 and a score
        manifest.update(task="anomaly", value_output=outputs[0], scores_output=outputs[1])
    elif is_classifier:
        manifest.update(
            task="classifier",
            scores_output=outputs[1],
            labels=[c.item() if isinstance(c, np.generic) else c for c in final.classes_],
        )
    elif hasattr(final, "predict"):
        manifest.update(task="regressor", value_output=outputs[0])
    return onx.SerializeToString(), manifest


def _shape(value_info) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims] or [None]


def _elem_dtype(value_info) -> str:
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)).replace("object", "str")


def _convert_file(path: Path, *, name: str, **_: Any) -> tuple[bytes, dict[str, Any]]:
    return convert_estimator(load_estimator(path), name=name)


register_converter(SourceConverter("sklearn", (".pkl", ".pickle", ".joblib"), _convert_file))
