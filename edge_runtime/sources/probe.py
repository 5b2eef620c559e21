"""Why a network source did not open: one clear reason instead of OpenCV's bare ``False``.

OpenCV's ``VideoCapture`` says only that it could not open a stream. When it fails, we ask the server
ourselves, with the standard library and a bounded read: is the host known, does it accept a TCP
connection, does it speak RTSP (or HTTP), does it want credentials and refuse ours (Basic or Digest,
computed here as FFmpeg would), is there a stream at that path, is it video? Each answer is a
``Diagnosis`` with a short stable ``code`` (for machines) and a sentence (for people) that never
contains the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .urls import redact_url

__all__ = ["Diagnosis", "probe_rtsp", "probe_http"]

_MAX_HEADER = 64 * 1024
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Diagnosis:
    # unreachable | auth | not_found | refused | not_rtsp | not_video | decode | credentials | no_frames
    code: str
    message: str


def _where(host: str, port: int) -> str:
    return f"{host}:{port}"


def _shown_path(url: str) -> str:
    """The URL's path as a message may show it: segments holding ``=`` (XMEye's credentials) redacted."""
    return urlsplit(redact_url(url)).path or "/"


def _connect(host: str, port: int, timeout: float) -> tuple[socket.socket | None, Diagnosis | None]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        return None, Diagnosis("unreachable", f"cannot resolve host {host!r} ({err.strerror})")
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
            return sock, None
        except OSError as err:
            sock.close()
            last = err
    if isinstance(last, ConnectionRefusedError):
        return None, Diagnosis(
            "unreachable", f"connection refused by {_where(host, port)} (nothing listens on that port)"
        )
    if isinstance(last, (socket.timeout, TimeoutError)):
        return None, Diagnosis("unreachable", f"no answer from {_where(host, port)} within {timeout:g} s")
    reason = getattr(last, "strerror", None) or str(last)
    return None, Diagnosis("unreachable", f"cannot connect to {_where(host, port)} ({reason})")


def _read_response(sock: socket.socket) -> tuple[int, str, dict[str, list[str]], bytes] | None:
    """(status, reason, headers (lower-case names, repeated ones kept), body) of one RTSP/HTTP response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > _MAX_HEADER:
            return None
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"^(RTSP|HTTP)/\d\.\d\s+(\d{3})\s*(.*)$", lines[0]) if lines else None
    if not m:
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = min(int((headers.get("content-length") or ["0"])[0] or 0), _MAX_BODY)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return int(m.group(2)), m.group(3), headers, body[:length]


def _challenge(values: list[str]) -> tuple[str, dict[str, str]] | None:
    """The strongest challenge offered: Digest over Basic, as FFmpeg prefers it."""
    found: dict[str, dict[str, str]] = {}
    for value in values:
        scheme, _, rest = value.partition(" ")
        params = {k.lower(): (q if q else v) for k, q, v in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)}
        found[scheme.lower()] = params
    for scheme in ("digest", "basic"):
        if scheme in found:
            return scheme, found[scheme]
    return None


def _authorization(challenge: tuple[str, dict[str, str]], method: str, uri: str, user: str, password: str) -> str:
    scheme, p = challenge
    if scheme == "basic":
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    algorithm = p.get("algorithm", "MD5")
    digest = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"

    def h(text: str) -> str:
        return hashlib.new(digest, text.encode()).hexdigest()

    realm, nonce = p.get("realm", ""), p.get("nonce", "")
    cnonce, nc = os.urandom(8).hex(), "00000001"
    ha1 = h(f"{user}:{realm}:{password}")
    if algorithm.lower().endswith("-sess"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qop = "auth" if "auth" in [q.strip() for q in p.get("qop", "").split(",")] else None
    response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}") if qop else h(f"{ha1}:{nonce}:{ha2}")
    fields = [
        f'username="{user}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        f'response="{response}"',
        f"algorithm={algorithm}",
    ]
    if qop:
        fields += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
    if "opaque" in p:
        fields.append(f'opaque="{p["opaque"]}"')
    return "Digest " + ", ".join(fields)


def _bare(url: str) -> str:
    """The URL without user info: what goes on a request line."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _auth_failure(user: str | None, creds_from: str) -> Diagnosis:
    if user is None:
        return Diagnosis("auth", "the server wants credentials (401 Unauthorized): set username_env and password_env")
    return Diagnosis("auth", f"the server refused the credentials from {creds_from} (401 Unauthorized)")


def _ask(
    host: str, port: int, tls: bool, request: str, timeout: float
) -> tuple[int, str, dict[str, list[str]], bytes] | Diagnosis | None:
    """One request on a fresh connection (a server may close it after a 401): its response, a Diagnosis of why
    there was none, or None when the answer was not RTSP/HTTP."""
    sock, failed = _connect(host, port, timeout)
    if failed:
        return failed
    assert sock is not None
    try:
        if tls:
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError) as err:
                reason = getattr(err, "reason", None) or err
                return Diagnosis("refused", f"TLS with {_where(host, port)} failed: {reason}")
        sock.sendall(request.encode("latin-1"))
        return _read_response(sock)
    except TimeoutError:
        return Diagnosis(
            "unreachable", f"{_where(host, port)} accepted the connection but did not answer within {timeout:g} s"
        )
    except OSError as err:
        return Diagnosis("unreachable", f"connection to {_where(host, port)} failed ({err.strerror or err})")
    finally:
        sock.close()


def _ask_with_auth(
    host: str,
    port: int,
    tls: bool,
    method: str,
    target: str,
    headers: str,
    *,
    username: str | None,
    password: str | None,
    timeout: float,
    protocol: str,
) -> tuple[int, str, dict[str, list[str]], bytes] | Diagnosis | None:
    """The request, and once more with an Authorization header if the server asked for credentials we have."""
    auth: str | None = None
    for cseq in (1, 2):
        request = f"{method} {target} {protocol}\r\n" + headers.replace("{cseq}", str(cseq))
        if auth:
            request += f"Authorization: {auth}\r\n"
        response = _ask(host, port, tls, request + "\r\n", timeout)
        if not isinstance(response, tuple):
            return response
        status, _, got, _ = response
        if status == 401 and auth is None and username is not None:
            challenge = _challenge(got.get("www-authenticate", []))
            if challenge is None:
                return response
            auth = _authorization(challenge, method, target, username, password or "")
            continue
        return response
    return response


def probe_rtsp(
    url: str,
    *,
    username: str | None,
    password: str | None,
    timeout: float,
    creds_from: str = "username_env/password_env",
) -> Diagnosis:
    """Ask an RTSP server for ``url`` (DESCRIBE, with credentials if needed) and say what is wrong."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (322 if parts.scheme == "rtsps" else 554)
    response = _ask_with_auth(
        host,
        port,
        parts.scheme == "rtsps",
        "DESCRIBE",
        _bare(url),
        "CSeq: {cseq}\r\nAccept: application/sdp\r\nUser-Agent: edge-runtime\r\n",
        username=username,
        password=password,
        timeout=timeout,
        protocol="RTSP/1.0",
    )
    if isinstance(response, Diagnosis):
        return response
    if response is None:
        return Diagnosis("not_rtsp", f"{_where(host, port)} does not answer as an RTSP server")
    status, reason, _, body = response
    if status == 401:
        return _auth_failure(username, creds_from)
    if status == 404:
        return Diagnosis("not_found", f"no stream at path {_shown_path(url)!r} on {_where(host, port)} (404 Not Found)")
    if status != 200:
        return Diagnosis("refused", f"the RTSP server answered {status} {reason}")
    sdp = body.decode("latin-1", "replace")
    video = re.search(r"^m=video .*$", sdp, re.M)
    if not video:
        return Diagnosis("not_video", "the RTSP stream has no video track")
    codec = re.search(r"^a=rtpmap:\d+ ([A-Za-z0-9-]+)", sdp[video.start() :], re.M)
    return Diagnosis(
        "decode",
        f"the camera offers {codec.group(1) if codec else 'video'} but OpenCV's FFmpeg could not open the stream",
    )


def probe_http(
    url: str,
    *,
    username: str | None,
    password: str | None,
    timeout: float,
    creds_from: str = "username_env/password_env",
) -> Diagnosis:
    """GET ``url`` (headers only, with credentials if needed) and say why it is not a video stream."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The body of a 200 is a stream that never ends: _read_response reads only what Content-Length says (none).
    response = _ask_with_auth(
        host,
        port,
        https,
        "GET",
        path,
        f"Host: {host}\r\nUser-Agent: edge-runtime\r\nConnection: close\r\n",
        username=username,
        password=password,
        timeout=timeout,
        protocol="HTTP/1.1",
    )
    if isinstance(response, Diagnosis):
        return response
    if response is None:
        return Diagnosis("refused", f"{_where(host, port)} does not answer as an HTTP server")
    status, reason, headers, _ = response
    if status == 401:
        return _auth_failure(username, creds_from)
    if status == 404:
        return Diagnosis("not_found", f"nothing at {_shown_path(url)!r} on {_where(host, port)} (404 Not Found)")
    if status != 200:
        return Diagnosis("refused", f"the HTTP server answered {status} {reason}")
    ctype = (headers.get("content-type") or ["(none)"])[0].split(";")[0].strip().lower()
    if ctype.startswith("image/"):
        return Diagnosis(
            "not_video", f"the URL serves a single image ({ctype}), not a stream: use the camera's MJPEG or RTSP URL"
        )
    if not (ctype.startswith("multipart/") or ctype.startswith("video/") or ctype == "application/octet-stream"):
        return Diagnosis("not_video", f"the URL serves {ctype}, not a video stream")
    return Diagnosis("decode", f"the server sends {ctype} but OpenCV's FFmpeg could not read it as video")
