"""What kind of source a string names, its default name, credentials from the environment, and redaction.

Credentials never sit in the config file when the camera takes them as user info: ``username_env`` /
``password_env`` name environment variables, and the URL with them filled in exists only in memory, for
OpenCV. Cameras that take them in the URL itself (XMEye's ``/user=admin&password=x&channel=1``,
Reolink's ``?user=admin&password=x``, tokens in queries) cannot be helped that way, so what is shown is
decided by an allow-list, not by guessing which keys are secret: ``redact_url`` keeps the scheme, host,
port, the path segments without ``=`` and the query's keys, and replaces user info, every query value
and every path segment holding ``=`` with ``***``. ``default_name`` takes only the host and those path
segments. Any text that might echo the URL (OpenCV's errors) goes through ``Redactor.scrub``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "SourceKind",
    "source_kind",
    "default_name",
    "redact_url",
    "url_secrets",
    "with_credentials",
    "Redactor",
]

SourceKind = str  # "rtsp" | "http" | "device" | "file"
_DEVICE = re.compile(r"^/dev/video\d+$")
# A query key shown as it is; anything else (a bare value, a key with odd characters) is redacted whole.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.\-\[\]]{1,64}$")
_QUERY_SEPARATORS = re.compile(r"[&;]")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


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
    """A topic-safe name from the source: the file's stem, the device (``video0``), or the host and the path's
    segments without ``=`` (never user info, a query or a parameter segment: they may hold credentials)."""
    kind = source_kind(source)
    if kind in ("file", "device"):
        base = Path(source).stem if kind == "file" else Path(source).name
    else:
        parts = urlsplit(source)
        base = "-".join(x for x in [parts.hostname or "", *_plain_segments(parts.path)] if x)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_")[:64] or "camera"


def _plain_segments(path: str) -> list[str]:
    """The path's segments that hold no ``=`` (percent-encoded or not): the ones that are not parameters."""
    return [seg for seg in path.split("/") if "=" not in unquote(seg)]


def redact_url(url: str) -> str:
    """``url`` as it may be shown: rtsp://***@cam:554/Streaming/Channels/101, rtsp://cam:554/***,
    http://cam/api.cgi?cmd=***&user=***&password=***. Not a URL (a file, a device): unchanged."""
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
    netloc = ("***@" if "@" in parts.netloc else "") + host
    if port is not None:
        netloc += f":{port}"
    path = "/".join(seg if "=" not in unquote(seg) else "***" for seg in parts.path.split("/"))
    # Each key=value pair between & or ; (both are used), the separators kept as they were.
    query = "".join(p if p in ("&", ";") else _redacted_pair(p) for p in re.split(r"([&;])", parts.query))
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _redacted_pair(pair: str) -> str:
    key, sep, _ = pair.partition("=")
    if not pair:
        return ""
    return f"{key}=***" if sep and _PLAIN_KEY.match(key) else "***"


def url_secrets(url: str) -> list[str]:
    """What ``redact_url`` hides in ``url``, each as written and percent-decoded: the user name and password,
    every query value and every path segment holding ``=`` (and the values in it)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        found.append(parts.netloc.rpartition("@")[0])
        found += [p for p in (parts.username, parts.password) if p]
    for seg in parts.path.split("/"):
        if "=" in unquote(seg):
            found.append(seg)
            found += [pair.partition("=")[2] for pair in _QUERY_SEPARATORS.split(unquote(seg))]
    if parts.query:
        found.append(parts.query)
        found += [pair.partition("=")[2] or pair for pair in _QUERY_SEPARATORS.split(parts.query)]
    return [v for value in found for v in {value, unquote(value)} if v]


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
    """Scrubs a source's secrets out of any text (error messages may echo the URL OpenCV was given).

    Any URL in the text is replaced by its redacted form; then each secret: the credentials and what
    ``url_secrets`` finds in each URL given. A secret of four characters or more is replaced wherever it
    stands; a shorter one only where it stands alone (not inside a word, a name or a number), so that a
    channel "1" or a password "ab" is scrubbed without turning 127.0.0.1 into 127.0.0.***.
    """

    def __init__(self, *secrets: str | None):
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            values.add(secret)
            if "://" in secret:
                values.update(url_secrets(secret))
        values |= {quote(v, safe="") for v in values}
        # Longest first, so a whole query is replaced before a value inside it.
        ordered = sorted((v for v in values if "://" not in v), key=len, reverse=True)
        self._patterns = [
            re.compile(re.escape(v) if len(v) >= 4 else rf"(?<![\w.\-]){re.escape(v)}(?![\w.\-])") for v in ordered
        ]

    def scrub(self, text: str) -> str:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
        for pattern in self._patterns:
            text = pattern.sub("***", text)
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
