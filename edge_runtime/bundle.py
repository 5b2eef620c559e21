"""Model bundles: a directory with ``model.onnx`` and ``manifest.json``.

The runtime never trusts a bundle it has not checked: the model file must match the manifest's sha256,
and when a signing key is configured the manifest must carry a valid HMAC-SHA256 signature (which covers
the checksum, so it covers the model too). No pickle is ever loaded here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._onnx_check import OnnxFormatError, external_data_problem, inspect_model
from .errors import BundleError
from .image_spec import DetectorSpec, EngineSpec, PreprocessSpec, image_manifest_problem

__all__ = ["Bundle", "Manifest", "TensorSpec", "load_bundle", "write_bundle", "sign_manifest", "MANIFEST", "MODEL"]

MANIFEST = "manifest.json"
MODEL = "model.onnx"
FORMAT_VERSION = 1



class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: str = Field(description="numpy dtype name: float32, int64, str, ...")
    shape: list[int | str | None] = Field(description="Dimensions; None or a name for a dynamic axis (the first is the batch).")


class Manifest(BaseModel):
    # Newer converters may add fields an older runtime does not know: keep them rather than refuse the bundle.
    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    name: str
    version: str = "1"
    task: str = Field("generic", description="How inputs are decoded and outputs read: see edge_runtime.tasks.")
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    labels: list[str | int] | None = Field(None, description="Class labels, in the order of the scores.")
    scores_output: str | None = Field(None, description="Classifiers: the output with one score per class.")
    value_output: str | None = Field(None, description="Regressors: the output with the predicted value.")
    allow_non_finite: bool = Field(False, description="Accept NaN and Inf in inputs (most models do not).")
    model_file: str = MODEL
    sha256: str
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 of every other file the bundle holds (external data, report, candidates)."
    )
    source: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] = Field(default_factory=lambda: {"mode": "none"})
    preprocess: PreprocessSpec | None = Field(None, description="Image models: how a frame becomes the input.")
    detector: DetectorSpec | None = Field(None, description="Detectors: how the output is read.")
    top_k: int | None = Field(None, ge=1, description="Image classifiers: classes per result (default 5).")
    softmax: bool = Field(False, description="Image classifiers: the model outputs logits; apply softmax.")
    engine: EngineSpec | None = Field(None, description="The engine and settings measured as fastest.")
    signature: str | None = None

    def row_shape(self) -> tuple[int | None, ...]:
        """The first input's shape without its batch axis; None for a dynamic dimension."""
        return tuple(d if isinstance(d, int) and d > 0 else None for d in self.inputs[0].shape[1:])


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_manifest(manifest: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: str | os.PathLike[str], *, signing_key: bytes | None = None) -> Bundle:
    """Read a bundle and verify it; raise BundleError saying what is wrong and how to fix it."""
    root = Path(path)
    where = str(root)
    if not root.is_dir():
        raise BundleError("no such directory (build one with `edge-runtime convert MODEL -o DIR`)", bundle=where)
    try:
        raw = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} (is this a bundle directory?)", bundle=where) from None
    except (OSError, ValueError) as err:
        raise BundleError(f"{MANIFEST} is not readable JSON: {err}", bundle=where) from err
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{MANIFEST}: {key}: {first['msg']}", bundle=where) from err
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(
            f"format_version {manifest.format_version} is newer than this runtime reads ({FORMAT_VERSION}); upgrade edge-runtime",
            bundle=where,
        )
    model = (root / manifest.model_file).resolve()
    if root.resolve() not in model.parents:
        raise BundleError(f"model_file {manifest.model_file!r} points outside the bundle directory", bundle=where)
    if not model.is_file():
        raise BundleError(f"model file {manifest.model_file} is missing", bundle=where)
    try:
        data = model.read_bytes()
    except OSError as err:
        raise BundleError(f"cannot read {manifest.model_file}: {err.strerror}", bundle=where) from err
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, manifest.sha256):
        raise BundleError(
            f"checksum mismatch: {manifest.model_file} has sha256 {actual[:12]}..., the manifest says "
            f"{manifest.sha256[:12]}...; the file was changed or damaged, rebuild or re-copy the bundle",
            bundle=where,
        )
    if signing_key is not None:
        if not manifest.signature:
            raise BundleError("unsigned, but a signing key is configured; sign it with `edge-runtime sign`", bundle=where)
        if not hmac.compare_digest(sign_manifest(raw, signing_key), manifest.signature):
            raise BundleError("signature does not match: the bundle was changed after signing, or the key is wrong", bundle=where)
    for name, expected in manifest.files.items():
        path = (root / name).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise BundleError(f"{name} is listed in the manifest but missing or outside the bundle", bundle=where)
        if not hmac.compare_digest(_sha256_file(path), expected):
            raise BundleError(f"checksum mismatch: {name} was changed or damaged; rebuild or re-copy the bundle", bundle=where)
    _check_model(data, manifest, model.parent, root, where)
    problem = image_manifest_problem(manifest)
    if problem:
        raise BundleError(f"{MANIFEST}: {problem}", bundle=where)
    if manifest.task == "classifier" and not manifest.scores_output:
        raise BundleError("a classifier's manifest needs scores_output", bundle=where)
    if manifest.task == "regressor" and not manifest.value_output:
        raise BundleError("a regressor's manifest needs value_output", bundle=where)
    if manifest.task == "anomaly" and not (manifest.value_output and manifest.scores_output):
        raise BundleError("an anomaly detector's manifest needs value_output (labels) and scores_output", bundle=where)
    return Bundle(root, manifest)


def _check_model(data: bytes, manifest: Manifest, model_dir: Path, root: Path, where: str) -> None:
    """Refuse, before ONNX Runtime sees it, a model that is corrupt, differs from its manifest, or reaches outside."""
    try:
        info = inspect_model(data)
    except OnnxFormatError as err:
        raise BundleError(f"{manifest.model_file} is not a valid ONNX model: {err}; rebuild the bundle", bundle=where) from err
    for location in info.external_data:
        problem = external_data_problem(location, model_dir, root)
        if problem:
            raise BundleError(f"{problem}; a bundle must be self-contained", bundle=where)
        name = (model_dir / location).resolve().relative_to(root.resolve()).as_posix()
        if name not in manifest.files:  # the model's checksum does not cover its external weights
            raise BundleError(f"external data {location!r} has no checksum in the manifest's files; "
                              "rebuild the bundle with write_bundle/edge-runtime convert", bundle=where)
    if len(info.inputs) != 1:
        raise BundleError(f"the model has {len(info.inputs)} inputs; this runtime serves single-input models", bundle=where)
    spec, actual = manifest.inputs[0], info.inputs[0]
    if actual.name != spec.name or actual.dtype != spec.dtype:
        raise BundleError(f"manifest input {spec.name} ({spec.dtype}) does not match the model's {actual.name} "
                          f"({actual.dtype})", bundle=where)
    fixed = [(m, a) for m, a in zip(spec.shape[1:], actual.shape[1:]) if isinstance(m, int) and isinstance(a, int) and a > 0]
    if len(spec.shape) != len(actual.shape) or any(m != a for m, a in fixed):
        raise BundleError(f"manifest input shape {spec.shape} does not match the model's {actual.shape}", bundle=where)
    names = {o.name for o in info.outputs}
    for out in (manifest.scores_output, manifest.value_output, *(o.name for o in manifest.outputs)):
        if out and out not in names:
            raise BundleError(f"manifest names output {out!r}, the model has {sorted(names)}", bundle=where)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_bundle(out_dir: str | os.PathLike[str], model_bytes: bytes, manifest: dict[str, Any], *,
                 signing_key: bytes | None = None, extra_files: dict[str, bytes] | None = None) -> Bundle:
    """Write model and manifest (sha256 filled in) so that a reader never sees a half-written bundle."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = dict(manifest)
    fields.setdefault("format_version", FORMAT_VERSION)
    fields["model_file"] = MODEL
    fields["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    fields["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted((extra_files or {}).items())}
    fields.pop("signature", None)
    Manifest.model_validate(fields)  # refuse to write what the runtime would refuse to read
    if signing_key is not None:
        fields["signature"] = sign_manifest(fields, signing_key)
    files = {MODEL: model_bytes, **(extra_files or {}),
             MANIFEST: (json.dumps(fields, indent=2, sort_keys=False) + "\n").encode()}
    for name, data in files.items():  # manifest last: it names the checksum of what is already there
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp makes 0600; a bundle is read by the service's own user
        os.replace(tmp, target)
    return load_bundle(out, signing_key=signing_key)
