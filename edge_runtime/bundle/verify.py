"""Loading a bundle: nothing is served that has not been checked.

The model file must match the manifest's sha256 (so must every other file the manifest lists), and when a
signing key is configured the manifest must carry a valid HMAC-SHA256 signature (which covers the
checksums, so it covers the model too). The ONNX file is parsed by our own walker before ONNX Runtime
sees it, and the session is built from the very bytes that were checked (the model's and its external
data's, see ``verified_files``), never by opening the files again. No pickle is ever loaded here.

A bundle may be replaced while it is read (``write_bundle`` swaps a new directory into place): the
directory's identity is compared before and after, and a read that straddled a swap is done again, so a
reader gets the old bundle or the new one, never a failure made of half of each. ``use_bundle`` extends
that to what a caller does afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np
from pydantic import ValidationError

from ..errors import BundleError
from ._files import MAX_MANIFEST_BYTES, BundleDir
from ._onnx_walker import ExternalTensor, ModelInfo, OnnxFormatError, external_data_problem, inspect_model
from .image_spec import image_manifest_problem
from .manifest import FORMAT_VERSION, MANIFEST, Bundle, Manifest, VerifiedFiles, sign_manifest
from .signing import TrustedKeys, check_manifest_key_signature

__all__ = ["load_bundle", "use_bundle", "is_current", "verified_files", "NUMPY_TYPES"]

T = TypeVar("T")

# A read is tried again when the bundle was swapped under it: up to this many times, 1, 2, 4, ... ms apart.
_ATTEMPTS = 7


def _identity(path: Path) -> tuple[int, int, int] | None:
    """The directory ``path`` names now (through symlinks); ctime tells a new directory from one that reuses
    a removed one's inode number."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def is_current(bundle: Bundle) -> bool:
    """Whether ``bundle.path`` still names the directory that was verified (it has not been swapped since)."""
    return bundle.identity is not None and _identity(bundle.path) == bundle.identity


# onnx.TensorProto.DataType -> the numpy type of its raw bytes (external data is raw, little-endian)
NUMPY_TYPES = {
    1: "<f4",
    2: "u1",
    3: "i1",
    4: "<u2",
    5: "<i2",
    6: "<i4",
    7: "<i8",
    9: "?",
    10: "<f2",
    11: "<f8",
    12: "<u4",
    13: "<u8",
}


def load_bundle(
    path: str | os.PathLike[str], *, signing_key: bytes | None = None, trusted_keys: TrustedKeys | None = None
) -> Bundle:
    """Read a bundle and verify it; raise BundleError saying what is wrong and how to fix it.

    With ``signing_key`` the manifest must carry a valid HMAC signature; with ``trusted_keys`` a valid
    Ed25519 signature by one of those keys (one by another key is refused, naming its id).

    A read that a concurrent swap (``write_bundle``) cut in two is done again: what is returned was read
    from one directory, and ``identity`` says which. The bytes verified (model and external data) stay on
    the bundle until an engine takes them with ``verified_files``: what is served is what was checked,
    whatever happens to the files afterwards.
    """
    root = Path(path)
    for attempt in range(_ATTEMPTS):
        read_from = None
        try:
            if not root.is_dir():
                raise BundleError(
                    "no such directory (build one with `edge-runtime convert MODEL -o DIR`)", bundle=str(root)
                )
            with BundleDir(root) as files:
                read_from = files.identity()
                bundle = _load(root, files, signing_key, trusted_keys)
        except (BundleError, OSError):
            # Missing (mid-swap, in the two-rename fallback) or swapped while read: look again; else it is real.
            if attempt == _ATTEMPTS - 1 or (read_from is not None and _identity(root) == read_from):
                raise
        else:
            if _identity(root) == read_from:
                return replace(bundle, identity=read_from)
        time.sleep(0.001 * 2**attempt)
    raise BundleError(f"replaced {_ATTEMPTS} times while it was being read; try again", bundle=str(root))


def use_bundle(
    path: str | os.PathLike[str],
    use: Callable[[Bundle], T],
    *,
    signing_key: bytes | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> T:
    """``use(load_bundle(path))``, done again if the bundle was swapped before ``use`` returned.

    For callers that read the bundle's files after verification (``Engine`` itself does not: it builds its
    session from the verified bytes): what ``use`` read is then the verified bundle, not part of a newer
    one. ``use`` may raise BundleError or OSError for a file that a swap took away; that is tried again too.
    """
    for attempt in range(_ATTEMPTS):
        bundle = load_bundle(path, signing_key=signing_key, trusted_keys=trusted_keys)
        try:
            result = use(bundle)
        except (BundleError, OSError):
            if attempt == _ATTEMPTS - 1 or is_current(bundle):
                raise
        else:
            if is_current(bundle):
                return result
        time.sleep(0.001 * 2**attempt)
    raise BundleError(f"replaced {_ATTEMPTS} times while it was being loaded; try again", bundle=str(path))


def _load(root: Path, files: BundleDir, signing_key: bytes | None, trusted_keys: TrustedKeys | None) -> Bundle:
    where = str(root)
    try:
        text = files.read(MANIFEST, limit=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} (is this a bundle directory?)", bundle=where) from None
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise BundleError(f"{MANIFEST} is not readable JSON: {err}", bundle=where) from err
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST} is not a JSON object", bundle=where)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{MANIFEST}: {key}: {first['msg']}", bundle=where) from err
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(
            f"format_version {manifest.format_version} is newer than this runtime reads ({FORMAT_VERSION}); "
            "upgrade edge-runtime",
            bundle=where,
        )
    if signing_key is not None:
        if not manifest.signature:
            raise BundleError(
                "unsigned, but a signing key is configured; sign it with `edge-runtime sign BUNDLE --key-env VAR`",
                bundle=where,
            )
        if not hmac.compare_digest(sign_manifest(raw, signing_key), manifest.signature):
            raise BundleError(
                "signature does not match: the bundle was changed after signing, or the key is wrong", bundle=where
            )
    if trusted_keys is not None:
        check_manifest_key_signature(raw, manifest.key_signature, trusted_keys, where)
    verified, info, checked = _read_verified(files, manifest, where)
    for name, expected in manifest.files.items():
        if name in checked:
            continue  # external data: read and checked with the model
        try:
            actual_file = files.sha256(_inside(name, where))
        except FileNotFoundError:
            raise BundleError(f"{name} is listed in the manifest but missing", bundle=where) from None
        if not hmac.compare_digest(actual_file, expected):
            raise BundleError(
                f"checksum mismatch: {name} was changed or damaged; rebuild or re-copy the bundle", bundle=where
            )
    _check_io(info, manifest, where)
    problem = image_manifest_problem(manifest)
    if problem:
        raise BundleError(f"{MANIFEST}: {problem}", bundle=where)
    if manifest.task == "classifier" and not manifest.scores_output:
        raise BundleError("a classifier's manifest needs scores_output", bundle=where)
    if manifest.task == "regressor" and not manifest.value_output:
        raise BundleError("a regressor's manifest needs value_output", bundle=where)
    if manifest.task == "anomaly" and not (manifest.value_output and manifest.scores_output):
        raise BundleError("an anomaly detector's manifest needs value_output (labels) and scores_output", bundle=where)
    fingerprint = hashlib.sha256(text).hexdigest()
    return Bundle(root, manifest, fingerprint=fingerprint, _verified=[verified])


def verified_files(bundle: Bundle) -> VerifiedFiles:
    """The model and external-data bytes to build a session from, as they were verified.

    The first call hands over what ``load_bundle`` read (and the bundle lets go of it, so the weights are
    not held twice while serving); a later call reads the files again and checks them against the
    manifest again, so it too returns only bytes that match what was verified.
    """
    if bundle._verified:
        return bundle._verified.pop()
    with BundleDir(bundle.path) as files:
        if bundle.identity is not None and files.identity() != bundle.identity:
            raise BundleError("replaced since it was verified; load it again", bundle=str(bundle.path))
        return _read_verified(files, bundle.manifest, str(bundle.path))[0]


def _read_verified(files: BundleDir, manifest: Manifest, where: str) -> tuple[VerifiedFiles, ModelInfo, set[str]]:
    """Read the model and its external data once, check those very bytes, and return them.

    Also returns the names (relative to the bundle) of the external-data files it checked.
    """
    model_name = _inside(manifest.model_file, where, what=f"model_file {manifest.model_file!r}")
    try:
        data = files.read(model_name)
    except FileNotFoundError:
        raise BundleError(f"model file {manifest.model_file} is missing", bundle=where) from None
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, manifest.sha256):
        raise BundleError(
            f"checksum mismatch: {manifest.model_file} has sha256 {actual[:12]}..., the manifest says "
            f"{manifest.sha256[:12]}...; the file was changed or damaged, rebuild or re-copy the bundle",
            bundle=where,
        )
    try:
        info = inspect_model(data)
    except OnnxFormatError as err:
        raise BundleError(
            f"{manifest.model_file} is not a valid ONNX model: {err}; rebuild the bundle", bundle=where
        ) from err
    root = Path(where)
    model_dir = PurePosixPath(model_name).parent
    external: dict[str, bytes] = {}
    checked: set[str] = set()
    for location in info.external_data:
        problem = external_data_problem(location, root / model_dir, root)
        if problem:
            raise BundleError(f"{problem}; a bundle must be self-contained", bundle=where)
        name = _inside((model_dir / location).as_posix(), where, what=f"external data {location!r}")
        expected = manifest.files.get(name)
        if expected is None:  # the model's checksum does not cover its external weights
            raise BundleError(
                f"external data {location!r} has no checksum in the manifest's files; "
                "rebuild the bundle with write_bundle/edge-runtime convert",
                bundle=where,
            )
        try:
            contents = files.read(name)
        except FileNotFoundError:
            raise BundleError(f"external data file {location!r} is missing", bundle=where) from None
        if not hmac.compare_digest(hashlib.sha256(contents).hexdigest(), expected):
            raise BundleError(
                f"checksum mismatch: {name} was changed or damaged; rebuild or re-copy the bundle", bundle=where
            )
        external[location] = contents
        checked.add(name)
    count, first = info.nested_external
    if count:
        raise BundleError(
            f"{count} tensor(s) outside the main graph's initializers keep their data in another file (first: "
            f"{first!r}); only main-graph initializers may: save the model with its subgraphs' weights inline",
            bundle=where,
        )
    for tensor in info.external_tensors:
        _check_external_tensor(tensor, external, where)
    return VerifiedFiles(data, external, info.external_tensors), info, checked


def _inside(name: str, where: str, *, what: str | None = None) -> str:
    """``name`` normalised (``a/./b`` is ``a/b``), refused when it leaves the bundle or is absolute."""
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise BundleError(f"{what or name} points outside the bundle directory", bundle=where)
    return "/".join(parts)


def _check_external_tensor(tensor: ExternalTensor, external: dict[str, bytes], where: str) -> None:
    """The tensor's bytes must be there, of the size its type and shape say, in a type numpy can hold."""
    dtype = NUMPY_TYPES.get(tensor.data_type)
    if dtype is None:
        raise BundleError(
            f"initializer {tensor.name!r} keeps data of ONNX type {tensor.data_type} in another file; this runtime "
            "reads external data of numeric and bool types only: save the model with that tensor inline",
            bundle=where,
        )
    count = 1
    for d in tensor.dims:
        count *= d
    size = count * np.dtype(dtype).itemsize
    contents = external.get(tensor.location)
    if contents is None:
        raise BundleError(f"initializer {tensor.name!r} names no external data file", bundle=where)
    if tensor.length is not None and tensor.length != size:
        raise BundleError(
            f"initializer {tensor.name!r}: external data length {tensor.length} is not the {size} bytes its "
            f"shape {tensor.dims} and type need",
            bundle=where,
        )
    if tensor.offset + size > len(contents):
        raise BundleError(
            f"initializer {tensor.name!r}: {size} bytes at offset {tensor.offset} run past the end of "
            f"{tensor.location!r} ({len(contents)} bytes)",
            bundle=where,
        )


def _check_io(info: ModelInfo, manifest: Manifest, where: str) -> None:
    """Refuse, before ONNX Runtime sees it, a model whose inputs or outputs differ from its manifest."""
    if len(info.inputs) != 1:
        raise BundleError(
            f"the model has {len(info.inputs)} inputs; this runtime serves single-input models", bundle=where
        )
    spec, actual = manifest.inputs[0], info.inputs[0]
    if actual.name != spec.name or actual.dtype != spec.dtype:
        raise BundleError(
            f"manifest input {spec.name} ({spec.dtype}) does not match the model's {actual.name} ({actual.dtype})",
            bundle=where,
        )
    fixed = [
        (m, a) for m, a in zip(spec.shape[1:], actual.shape[1:]) if isinstance(m, int) and isinstance(a, int) and a > 0
    ]
    if len(spec.shape) != len(actual.shape) or any(m != a for m, a in fixed):
        raise BundleError(f"manifest input shape {spec.shape} does not match the model's {actual.shape}", bundle=where)
    names = {o.name for o in info.outputs}
    for out in (manifest.scores_output, manifest.value_output, *(o.name for o in manifest.outputs)):
        if out and out not in names:
            raise BundleError(f"manifest names output {out!r}, the model has {sorted(names)}", bundle=where)
