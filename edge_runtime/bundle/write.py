"""Writing a bundle so that a reader never sees a half-written one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .manifest import FORMAT_VERSION, MANIFEST, MODEL, Bundle, Manifest, sign_manifest
from .verify import load_bundle

__all__ = ["write_bundle"]


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
    extra_files: dict[str, bytes] | None = None,
) -> Bundle:
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
    files = {
        MODEL: model_bytes,
        **(extra_files or {}),
        MANIFEST: (json.dumps(fields, indent=2, sort_keys=False) + "\n").encode(),
    }
    for name, data in files.items():  # manifest last: it names the checksum of what is already there
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp makes 0600; a bundle is read by the service's own user
        os.replace(tmp, target)
    return load_bundle(out, signing_key=signing_key)
