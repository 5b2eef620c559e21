"""What kind of source a string names, its default name, credentials from the environment, and redaction.

Credentials never sit in the config: ``username_env`` / ``password_env`` name environment variables, and
the URL with them filled in exists only in memory, for OpenCV. Everything that is logged or published
goes through ``redact_url`` (user info and secret-looking query values replaced by ``***``), and any
message that might echo a URL goes through ``Redactor.scrub``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = [
    "SourceKind",
    "source_kind",
    "default_name",
    "redact_url",
    "with_credentials",
    "Redactor",
    "SECRET_QUERY_KEYS",
]

SourceKind = str  # "rtsp" | "http" | "device" | "file"
_DEVICE = re.compile(r"^/dev/video\d+$")
# Query keys that cameras and MJPEG servers use for secrets (Axis, Hikvision, Reolink, go2rtc...).
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "pass",
        "pwd",
        "passwd",
        "token",
        "auth",
        "key",
        "apikey",
        "api_key",
        "secret",
        "sig",
        "signature",
        "user",
        "username",
        "usr",
    }
)


def source_kind(source: str) -> SourceKind:
    """``rtsp`` (rtsp://, rtsps://), ``http`` (http(s):// MJPEG or any stream FFmpeg reads), ``device``
    (/dev/videoN, V4L2) or ``file``. Raises ValueError for another URL scheme."""
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "http"
    if scheme:
        raise ValueError(f"unsupported source scheme {scheme!r}: use rtsp://, http(s)://, /dev/videoN or a file path")
    if _DEVICE.match(source):
        return "device"
    return "file"


def default_name(source: str) -> str:
    """A topic-safe name from the source: the file's stem, the device (``video0``), or host and path."""
    kind = source_kind(source)
    if kind in ("file", "device"):
        base = Path(source).stem if kind == "file" else Path(source).name
    else:
        parts = urlsplit(source)
        base = "-".join(x for x in [parts.hostname or "", *parts.path.split("/")] if x)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_")[:64] or "camera"


def redact_url(url: str) -> str:
    """``url`` without user info or secret query values, for logs and status: rtsp://***@cam:554/s?token=***."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if parts.username is not None or parts.password is not None else "") + host
    if port is not None:
        netloc += f":{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """``url`` with user info set (each part percent-encoded); unchanged when neither is given."""
    if username is None and password is None:
        return url
    parts = urlsplit(url)
    user = quote(username if username is not None else (parts.username or ""), safe="")
    info = user + (":" + quote(password, safe="") if password is not None else "")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{info}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Redactor:
    """Scrubs a source's secrets out of any text (error messages may echo the URL OpenCV was given)."""

    def __init__(self, *secrets: str | None):
        # Longest first, so a URL is replaced before the password inside it.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
        self._encoded = [quote(s, safe="") for s in self._secrets]

    def scrub(self, text: str) -> str:
        for secret, encoded in zip(self._secrets, self._encoded):
            if "://" in secret:
                text = text.replace(secret, redact_url(secret))
            else:
                text = text.replace(secret, "***").replace(encoded, "***")
        return text


def env_credentials(username_env: str | None, password_env: str | None) -> tuple[str | None, str | None]:
    """The values of the named variables; ValueError naming the variable (never its value) when unset."""
    out: list[str | None] = []
    for var in (username_env, password_env):
        if var is None:
            out.append(None)
            continue
        value = os.environ.get(var)
        if value is None:
            raise ValueError(f"environment variable {var} is not set (it holds this source's credentials)")
        out.append(value)
    return out[0], out[1]
