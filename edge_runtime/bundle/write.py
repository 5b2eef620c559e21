"""Writing a bundle so that a reader (a runtime starting, the hot-reload watcher) never sees a half-written one.

The new bundle is written into a fresh directory beside ``out_dir``, flushed to disk, verified as the
runtime would (and by the caller's ``check``), and only then swapped into place:

- ``out_dir`` is a directory (or does not exist yet): the two directories are exchanged in one step
  (``_swap.exchange``; two renames where that is not available), then the old one is removed.
- ``out_dir`` is a symlink (a deployment that swaps links, as the README shows): the new directory is
  written beside the link's target, and a new symlink is renamed over the old one. The old target is then
  removed if this function wrote it (its name is ``<link>-v<version>-<8 characters>``); a directory made
  by hand is left alone, for a rollback.

Whatever fails before the swap (a model the manifest check refuses, a full disk, Ctrl-C) removes the new
directory and leaves the old bundle as it was. The new directory is made beside ``out_dir`` so that the
swap is a rename within one file system: ``out_dir``'s parent must be writable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ._swap import exchange
from .manifest import FORMAT_VERSION, MANIFEST, MODEL, SIGNATURE_FIELDS, Bundle, Manifest, sign_manifest
from .signing import SigningKey, TrustedKeys, sign_manifest_with_key
from .verify import _identity, load_bundle, use_bundle

__all__ = ["write_bundle", "sign_bundle"]

log = logging.getLogger("edge_runtime.bundle")


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_bundle(
    out_dir: str | os.PathLike[str],
    model_bytes: bytes,
    manifest: dict[str, Any],
    *,
    signing_key: bytes | None = None,
    private_key: SigningKey | None = None,
    hmac_signature: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    check: Callable[[Bundle], object] | None = None,
) -> Bundle:
    """Write model and manifest (sha256 filled in) as a new bundle that replaces ``out_dir`` in one step.

    Signed with the HMAC ``signing_key`` and/or the Ed25519 ``private_key`` (bundle/signing.py); an HMAC
    ``hmac_signature`` made already is kept when no ``signing_key`` is given (``sign --key`` adds a key
    signature to an HMAC-signed bundle). ``check`` is called with the verified new bundle (at its temporary
    place) before it replaces the old one; it refuses by raising (``converters`` passes ``Engine``: ONNX
    Runtime must load it).
    """
    out = Path(out_dir)
    fields = dict(manifest)
    fields.setdefault("format_version", FORMAT_VERSION)
    fields["model_file"] = MODEL
    fields["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    fields["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted((extra_files or {}).items())}
    for name in SIGNATURE_FIELDS:
        fields.pop(name, None)
    Manifest.model_validate(fields)  # refuse to write what the runtime would refuse to read
    if signing_key is not None:
        fields["signature"] = sign_manifest(fields, signing_key)
    elif hmac_signature is not None:
        fields["signature"] = hmac_signature
    if private_key is not None:
        fields["key_signature"] = sign_manifest_with_key(fields, private_key)
    trusted = TrustedKeys([private_key.public_raw]) if private_key is not None else None
    files = {
        MODEL: model_bytes,
        **(extra_files or {}),
        MANIFEST: (json.dumps(fields, indent=2, sort_keys=False) + "\n").encode(),
    }
    link = out if out.is_symlink() else None
    home = Path(os.path.realpath(out)) if link else out  # where the bundle's directory lives
    _refuse_to_replace(out, home)
    tmp = _make_temp_dir(out, home.parent)
    try:
        _write_files(tmp, files)
        try:
            verified = load_bundle(tmp, signing_key=signing_key, trusted_keys=trusted)
            if check is not None:
                check(verified)
        except BundleError as err:  # name the bundle the user asked for, not the temporary directory
            raise BundleError(str(err).removeprefix(f"bundle {err.bundle}: "), bundle=str(out)) from err
        if link is not None:
            _replace_link(link, tmp, home, str(fields.get("version", "1")))
        else:
            _replace_dir(out, tmp)
    except OSError as err:  # a full disk, a directory that appeared meanwhile: one line, nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"could not write the new bundle: {err}; the old one is unchanged", bundle=str(out)) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The bytes verified in the temporary directory are the ones now at ``out``: hand them on (unless ``check``
    # built an engine and took them already; then an engine reads and checks the files again).
    return Bundle(out, verified.manifest, identity=_identity(out), _verified=verified._verified)


def _refuse_to_replace(out: Path, home: Path) -> None:
    """Only a bundle (or nothing, or an empty directory) is replaced: ``-o ~`` must not remove a home."""
    if not os.path.lexists(home):
        return
    if not home.is_dir():
        raise BundleError("exists and is not a directory; give a directory for the bundle", bundle=str(out))
    if (home / MANIFEST).is_file() or not any(home.iterdir()):
        return
    raise BundleError(
        f"exists and is not a bundle (no {MANIFEST}), and writing would replace everything in it; "
        "give a new or empty directory",
        bundle=str(out),
    )


def _make_temp_dir(out: Path, parent: Path) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-"))
    except OSError as err:
        raise BundleError(
            f"cannot write in {parent} ({err.strerror}): a bundle is written next to its directory and swapped "
            "into place, so the parent directory must be writable",
            bundle=str(out),
        ) from err
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; a bundle is read by the service's own user
    return tmp


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    """Every file, then every directory, flushed to disk: after a power cut the swap finds them complete."""
    dirs = {root}
    for name, data in files.items():
        target = root / name
        if root.resolve() not in target.resolve().parents:
            raise BundleError(f"file name {name!r} points outside the bundle", bundle=str(root))
        target.parent.mkdir(parents=True, exist_ok=True)
        dirs.add(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    for d in dirs:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: directories cannot be opened, nor synced
        return
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened and synced
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_dir(out: Path, new: Path) -> None:
    if not os.path.lexists(out):
        os.rename(new, out)  # nothing to replace: one rename
    elif exchange(new, out):
        _remove(new)  # it now holds the old bundle
    else:
        # No atomic exchange here: two renames, with an instant in between where out does not exist.
        old = new.with_name(new.name.replace(".tmp-", ".old-", 1))
        os.rename(out, old)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise
        _remove(old)
    _fsync_dir(out.parent)


def _replace_link(link: Path, new: Path, old_target: Path, version: str) -> None:
    """Give ``new`` a lasting name beside the old target, point a new symlink at it, rename it over ``link``."""
    token = new.name.rsplit("-", 1)[-1]
    final = new.with_name(f"{link.name}-v{_safe(version)}-{token}")
    os.rename(new, final)
    try:
        text = os.readlink(link)
        target = str(final) if os.path.isabs(text) else os.path.relpath(final, link.parent)
        tmp_link = link.with_name(f".{link.name}.link-{token}")
        os.symlink(target, tmp_link)
        try:
            os.replace(tmp_link, link)
        except BaseException:
            os.unlink(tmp_link)
            raise
    except BaseException:
        os.rename(final, new)  # so that the caller's clean-up finds and removes it
        raise
    _fsync_dir(link.parent)
    if old_target.is_dir() and _written_here(old_target.name, link.name):
        _remove(old_target)


_TOKEN = re.compile(r"-v[A-Za-z0-9._-]*-[a-z0-9_]{8}")


def _written_here(name: str, link_name: str) -> bool:
    return name.startswith(link_name) and _TOKEN.fullmatch(name[len(link_name) :]) is not None


def _safe(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", version)[:40]


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as err:  # the new bundle is in place; what is left is only disk space
        log.warning("could not remove the old bundle %s: %s", path, err)


def sign_bundle(
    path: str | os.PathLike[str], signing_key: bytes | None = None, *, private_key: SigningKey | None = None
) -> Bundle:
    """Sign the bundle at ``path``: verified as it is, then written again with the manifest's HMAC signature
    and/or Ed25519 key signature, replacing it in one step as ``write_bundle`` does (a signed bundle is
    re-signed with the new key; an HMAC signature is kept when only a private key is given)."""
    if signing_key is None and private_key is None:
        raise ValueError("sign_bundle needs an HMAC signing_key or a private_key")

    def read(bundle: Bundle) -> tuple[dict[str, Any], bytes, dict[str, bytes]]:
        raw = json.loads((bundle.path / MANIFEST).read_text(encoding="utf-8"))
        extra = {name: (bundle.path / name).read_bytes() for name in bundle.manifest.files}
        return raw, bundle.model_path.read_bytes(), extra

    manifest, model, extra = use_bundle(path, read)
    return write_bundle(
        path,
        model,
        manifest,
        signing_key=signing_key,
        private_key=private_key,
        hmac_signature=manifest.get("signature") if isinstance(manifest.get("signature"), str) else None,
        extra_files=extra,
    )
