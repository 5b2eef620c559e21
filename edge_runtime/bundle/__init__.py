"""Model bundles: a directory with ``model.onnx``, ``manifest.json`` and the files the manifest lists.

``load_bundle`` verifies before anything is served; ``write_bundle`` writes so that a reader never sees
half a bundle. Signatures: an HMAC key shared with the devices, or an Ed25519 key whose public half
alone is on the devices (``signing``). Both layers below the serving core: they import nothing of it.
"""

from .manifest import FORMAT_VERSION, MANIFEST, MODEL, Bundle, Manifest, TensorSpec, VerifiedFiles, sign_manifest
from .signing import SigningKey, TrustedKeys
from .verify import NUMPY_TYPES, is_current, load_bundle, use_bundle, verified_files
from .write import sign_bundle, write_bundle

__all__ = [
    "Bundle",
    "Manifest",
    "TensorSpec",
    "VerifiedFiles",
    "load_bundle",
    "use_bundle",
    "is_current",
    "verified_files",
    "sign_bundle",
    "SigningKey",
    "TrustedKeys",
    "NUMPY_TYPES",
    "write_bundle",
    "sign_manifest",
    "MANIFEST",
    "MODEL",
    "FORMAT_VERSION",
]
