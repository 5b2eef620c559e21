"""Ed25519 signatures: a workstation signs with a private key, devices check with public keys only.

HMAC (``signing_key_env``) needs the same secret on every device, so one compromised device can sign
models for all the others. Here the private key stays on the workstation (``edge-runtime keys new``
writes it 0600); a device's ``[trust] public_keys`` can verify, never sign.

- A key's id is the first 16 hex digits of the sha256 of its raw 32-byte public key: what a signature
  names, and what an error shows when a signature is by a key the device does not trust.
- Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public), as ``openssl`` reads them. A public key
  may also be written inline as ``ed25519:<base64 of the 32 raw bytes>``.
- What is signed is canonical JSON (sorted keys, no spaces): a bundle's manifest without its signature
  fields (``manifest.canonical_manifest``), or a fleet release record (``edge_runtime.fleet.record``).

The ``cryptography`` package is imported only when a key is used: a device without ``[trust]`` does not
need it (``pip install 'edge-runtime[fleet]'`` brings it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BundleError, ConfigError
from .manifest import KeySignature, canonical_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SigningKey",
    "TrustedKeys",
    "key_id",
    "new_key_pair",
    "read_public_key",
    "read_signing_key",
    "sign_manifest_with_key",
    "check_manifest_key_signature",
]

INLINE_PREFIX = "ed25519:"
_RAW_LENGTH = 32
_MAX_KEY_FILE = 64 * 1024  # a PEM key is a few hundred bytes


def _need_cryptography() -> None:
    """Say how to install it, in one line, before anything imports it."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigError(
            "Ed25519 signatures need the cryptography package: pip install 'edge-runtime[fleet]'"
        ) from None


def key_id(public_raw: bytes) -> str:
    """What names a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class SigningKey:
    """A private key read from its file: signs bytes, names itself by its public key's id."""

    def __init__(self, private: Ed25519PrivateKey):
        from cryptography.hazmat.primitives import serialization

        self._private = private
        self.public_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public_raw)

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of ``data``, base64."""
        return base64.b64encode(self._private.sign(data)).decode()

    def public_pem(self) -> bytes:
        """The public key as a .pub file holds it (PEM), for the devices."""
        from cryptography.hazmat.primitives import serialization

        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class TrustedKeys:
    """The public keys a device trusts, by id. ``problem`` says why a signature is not acceptable, or None."""

    def __init__(self, keys: Iterable[bytes]):
        _need_cryptography()
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self._keys: dict[str, Ed25519PublicKey] = {}
        for raw in keys:
            self._keys[key_id(raw)] = ed25519.Ed25519PublicKey.from_public_bytes(raw)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def problem(self, data: bytes, key: object, signature: object) -> str | None:
        """None when ``signature`` (base64) is a valid signature of ``data`` by the trusted key ``key``."""
        from cryptography.exceptions import InvalidSignature

        public = self._keys.get(key) if isinstance(key, str) else None
        if public is None:
            shown = key[:64] if isinstance(key, str) else repr(key)[:64]
            return f"signed by an unknown key {shown} (this device trusts {', '.join(self.ids) or 'no key'})"
        try:
            raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        try:
            public.verify(raw, data)
        except InvalidSignature:
            return f"the signature by key {key} does not match: changed after signing, or not signed by that key"
        return None


def new_key_pair(private_path: Path, public_path: Path) -> SigningKey:
    """Write a new key pair: the private key 0600 (never replacing a file), the public key beside it."""
    _need_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists already; a key is never overwritten (choose another name)")
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL with mode 0600: the key is never readable by others, not even for an instant.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    key = SigningKey(private)
    public_path.write_bytes(key.public_pem())
    return key


def read_signing_key(path: Path) -> SigningKey:
    """A private key file written by ``new_key_pair`` (PEM, unencrypted); ConfigError saying what is wrong."""
    _need_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    data = _read_key_file(path)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({err})") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} is a private key, but not an Ed25519 one (make one with `edge-runtime keys new`)")
    return SigningKey(private)


def read_public_key(source: str | Path) -> bytes:
    """The 32 raw bytes of a public key: ``ed25519:<base64>`` inline, or a PEM file written by ``new_key_pair``."""
    _need_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(source, str) and source.startswith(INLINE_PREFIX):
        try:
            raw = base64.b64decode(source[len(INLINE_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _RAW_LENGTH:
            raise ConfigError(f"{source[:60]!r} is not ed25519:<base64 of 32 bytes>")
        return raw
    path = Path(source)
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{path} is a private key: a device holds public keys only (the .pub file)")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not a PEM public key ({err})") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path} is a public key, but not an Ed25519 one (make one with `edge-runtime keys new`)")
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_key_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise ConfigError(f"{path} is too large to be a key file")
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read key file {path}: {err.strerror}") from None


def sign_manifest_with_key(manifest: dict[str, Any], key: SigningKey) -> dict[str, str]:
    """The ``key_signature`` field for ``manifest`` (signed without its signature fields)."""
    return {"key_id": key.key_id, "signature": key.sign(canonical_manifest(manifest))}


def check_manifest_key_signature(
    raw: dict[str, Any], signature: KeySignature | None, trusted: TrustedKeys, where: str
) -> None:
    """Raise BundleError unless the manifest carries a valid signature by one of the trusted keys."""
    if signature is None:
        raise BundleError(
            "not signed with a key, and this device trusts signed bundles only ([trust] public_keys); sign it "
            "with `edge-runtime sign BUNDLE --key FILE`",
            bundle=where,
        )
    problem = trusted.problem(canonical_manifest(raw), signature.key_id, signature.signature)
    if problem is not None:
        raise BundleError(problem, bundle=where)
