"""What a bundle's ``manifest.json`` says: the model's inputs and outputs, its task, checksums, signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ._onnx_walker import ExternalTensor
from .image_spec import DetectorSpec, EngineSpec, PreprocessSpec

__all__ = [
    "Bundle",
    "Manifest",
    "TensorSpec",
    "VerifiedFiles",
    "KeySignature",
    "sign_manifest",
    "canonical_manifest",
    "SIGNATURE_FIELDS",
    "MANIFEST",
    "MODEL",
    "FORMAT_VERSION",
]

MANIFEST = "manifest.json"
MODEL = "model.onnx"
FORMAT_VERSION = 1


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: str = Field(description="numpy dtype name: float32, int64, str, ...")
    shape: list[int | str | None] = Field(
        description="Dimensions; None or a name for a dynamic axis (the first is the batch)."
    )


class KeySignature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_id: str = Field(max_length=64, description="First 16 hex digits of the sha256 of the raw public key.")
    signature: str = Field(max_length=200, description="Ed25519 signature of the canonical manifest, base64.")


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
        default_factory=dict,
        description="sha256 of every other file the bundle holds (external data, report, candidates).",
    )
    source: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] = Field(default_factory=lambda: {"mode": "none"})
    preprocess: PreprocessSpec | None = Field(None, description="Image models: how a frame becomes the input.")
    detector: DetectorSpec | None = Field(None, description="Detectors: how the output is read.")
    top_k: int | None = Field(None, ge=1, description="Image classifiers: classes per result (default 5).")
    softmax: bool = Field(False, description="Image classifiers: the model outputs logits; apply softmax.")
    engine: EngineSpec | None = Field(None, description="The engine and settings measured as fastest.")
    signature: str | None = None
    key_signature: KeySignature | None = Field(
        None, description="Ed25519 signature of the manifest (bundle/signing.py): which key, and the signature."
    )

    def row_shape(self) -> tuple[int | None, ...]:
        """The first input's shape without its batch axis; None for a dynamic dimension."""
        return tuple(d if isinstance(d, int) and d > 0 else None for d in self.inputs[0].shape[1:])


@dataclass(frozen=True)
class VerifiedFiles:
    """The bytes a bundle was verified with: what an engine must build its session from (never the path)."""

    model: bytes
    external: dict[str, bytes]  # external-data location, as written in the model -> the file's verified contents
    tensors: list[ExternalTensor]  # the main-graph initializers whose data is in those files


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    # Which directory ``path`` named when it was verified: (device, inode, ctime). A bundle is replaced by
    # swapping directories, so a reader compares this with the path now to know whether it still reads
    # what was verified (``verify.is_current``).
    identity: tuple[int, int, int] | None = field(default=None, compare=False, repr=False)
    # The sha256 of the manifest's bytes as verified: it names the model's and every file's sha256, so it
    # identifies the whole bundle's content (a reload of a bundle with the same fingerprint changes nothing).
    fingerprint: str | None = field(default=None, compare=False, repr=False)
    # Held from verification until an engine takes it (see verify.verified_files), then freed: the weights are
    # not kept twice while serving. A list so that a frozen Bundle can let go of it.
    _verified: list[VerifiedFiles] = field(default_factory=list, repr=False, compare=False)

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file


# The fields that sign the manifest, left out of what they sign: an HMAC ``signature`` and an Ed25519
# ``key_signature`` (bundle/signing.py) each cover everything else, so either can be added without the other.
SIGNATURE_FIELDS = ("signature", "key_signature")


def canonical_manifest(manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without its signatures, as sorted, compact JSON."""
    body = {k: v for k, v in manifest.items() if k not in SIGNATURE_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_manifest(manifest: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_manifest(manifest), hashlib.sha256).hexdigest()
