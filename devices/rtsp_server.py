"""The synthetic scene as a live RTSP stream, served by GStreamer's RTSP server on 127.0.0.1.

``edge-runtime simulate camera --rtsp PORT`` runs it (and the tests start it as a process, to stop and
restart it). It needs Debian's GStreamer packages, used through PyGObject:

    apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly

(``-ugly`` brings x264enc for H.264, what IP cameras send; with ``--codec jpeg`` it is not needed.) Inside
a virtualenv, Debian's ``gi`` is found in /usr/lib/python3/dist-packages when the venv's Python has the
same minor version as the system's.

Frames are the moving shapes of ``devices.moving.MovingScene`` (looped), pushed at ``fps`` into an
``appsrc`` of one shared pipeline, so every client sees the same live stream, as from a camera.
With ``--user`` and ``--password-env`` the server asks for credentials (Basic, or Digest with ``--digest``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["gstreamer_available", "serve_rtsp"]

_SYSTEM_GI = "/usr/lib/python3/dist-packages"


def _import_gi() -> tuple[Any, Any, Any]:
    """(GLib, Gst, GstRtspServer) from PyGObject; imported by name, as gi has no type stubs."""
    if importlib.util.find_spec("gi") is None and os.path.isdir(os.path.join(_SYSTEM_GI, "gi")):
        sys.path.append(_SYSTEM_GI)  # appended: the venv's own packages still win
    gi = importlib.import_module("gi")
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    return tuple(importlib.import_module(f"gi.repository.{m}") for m in ("GLib", "Gst", "GstRtspServer"))  # type: ignore[return-value]


class _Live:
    """The appsrc of the shared pipeline while clients watch, and the frame count since it was made."""

    src: Any = None
    n: int = 0


def gstreamer_available(codec: str = "h264") -> str | None:
    """None when the RTSP server can run here, else what is missing (and how to install it)."""
    try:
        _, Gst, _ = _import_gi()
    except (ImportError, ValueError) as err:
        return (
            f"GStreamer's RTSP server is not installed ({err}): apt-get install python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly"
        )
    Gst.init(None)
    needed = ["appsrc", "videoconvert"] + (["x264enc", "rtph264pay"] if codec == "h264" else ["jpegenc", "rtpjpegpay"])
    missing = [e for e in needed if Gst.ElementFactory.find(e) is None]
    if missing:
        return (
            f"GStreamer elements missing: {', '.join(missing)} (apt-get install gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly)"
        )
    return None


def serve_rtsp(
    *,
    port: int = 8554,
    path: str = "/cam",
    fps: float = 10.0,
    width: int = 320,
    height: int = 240,
    objects: int = 2,
    seed: int = 0,
    codec: str = "h264",
    user: str | None = None,
    password: str | None = None,
    digest: bool = False,
    duration: float | None = None,
    ready=None,
) -> int:
    """Serve until SIGTERM/SIGINT or ``duration`` seconds; call ``ready(url)`` once listening. Returns 0."""
    GLib, Gst, GstRtspServer = _import_gi()
    Gst.init(None)
    from .moving import MovingScene

    scene = MovingScene.crossing(width=width, height=height, fps=fps, objects=objects, seed=seed)
    frames = [scene.render(n)[0].tobytes() for n in range(scene.frames)]  # rendered once: pushing stays cheap
    duration_ns = int(Gst.SECOND / fps)
    if codec == "h264":
        # A key frame every second so a client that (re)connects decodes within a second.
        encode = (
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={max(1, round(fps))} bitrate=800 "
            "! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    else:
        encode = "jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26"
    launch = (
        f"( appsrc name=src is-live=true format=time do-timestamp=false "
        f"caps=video/x-raw,format=BGR,width={width},height={height},framerate={round(fps * 1000)}/1000 "
        f"! videoconvert ! video/x-raw,format=I420 ! {encode} )"
    )

    live = _Live()
    lock = threading.Lock()

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)

    def on_configure(_factory, media):
        src = media.get_element().get_child_by_name("src")
        with lock:
            live.src, live.n = src, 0
        media.connect("unprepared", lambda *_: setattr(live, "src", None))

    factory.connect("media-configure", on_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    if user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        if digest:
            rtsp = importlib.import_module("gi.repository.GstRtsp")
            auth.set_supported_methods(rtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(user, password or "", token)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(
            Gst.Structure.new_from_string(
                "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )
        )
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1

    def push():
        with lock:
            src, n = live.src, live.n
            live.n = n + 1
        if src is not None:
            buf = Gst.Buffer.new_wrapped(frames[n % len(frames)])
            buf.pts, buf.duration = n * duration_ns, duration_ns
            src.emit("push-buffer", buf)
        return True

    loop = GLib.MainLoop()
    GLib.timeout_add(max(1, round(1000 / fps)), push)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, lambda *_: (loop.quit(), False)[1])
    if duration is not None:
        GLib.timeout_add(int(duration * 1000), lambda: (loop.quit(), False)[1])
    url = f"rtsp://127.0.0.1:{server.get_bound_port()}{path}"
    if ready is not None:
        ready(url)
    loop.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devices.rtsp_server", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8554, help="0: any free port (printed)")
    p.add_argument("--path", default="/cam")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--size", default="320x240")
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec", choices=["h264", "jpeg"], default="h264")
    p.add_argument("--user")
    p.add_argument("--password-env", help="environment variable holding the password clients must give")
    p.add_argument("--digest", action="store_true", help="Digest instead of Basic authentication")
    p.add_argument("--duration", type=float)
    args = p.parse_args(argv)
    missing = gstreamer_available(args.codec)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.lower().split("x"))
    password = os.environ.get(args.password_env) if args.password_env else None
    return serve_rtsp(
        port=args.port,
        path=args.path,
        fps=args.fps,
        width=w,
        height=h,
        objects=args.objects,
        seed=args.seed,
        codec=args.codec,
        user=args.user,
        password=password,
        digest=args.digest,
        duration=args.duration,
        ready=lambda url: print(f"ready {url}", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
