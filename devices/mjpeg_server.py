"""The synthetic scene as an HTTP MJPEG stream (multipart/x-mixed-replace), on 127.0.0.1, standard library only.

What many USB-camera bridges and cheap IP cameras serve (``http://host/mjpeg``); it needs no GStreamer,
so the video-source path can be tried anywhere OpenCV is installed. Optional Basic authentication.
"""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MjpegServer"]

_BOUNDARY = "edgeruntimeframe"


class MjpegServer:
    """``MjpegServer(port=0).start()``; ``url`` is the stream; ``stop()`` closes it and every client."""

    def __init__(
        self,
        *,
        port: int = 0,
        path: str = "/mjpeg",
        fps: float = 10.0,
        width: int = 320,
        height: int = 240,
        objects: int = 2,
        seed: int = 0,
        user: str | None = None,
        password: str | None = None,
    ):
        from .cameras import encode_frame
        from .moving import MovingScene

        scene = MovingScene.crossing(width=width, height=height, fps=fps, objects=objects, seed=seed)
        self.frames = [encode_frame(scene.render(n)[0]) for n in range(scene.frames)]
        self.fps, self.path = fps, path
        self._auth = None if user is None else "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        self._stopping = threading.Event()
        self.clients = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: tests read their own output
                pass

            def do_GET(self):
                if outer._auth is not None and self.headers.get("Authorization") != outer._auth:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.split("?")[0] != outer.path:
                    self.send_response(404)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                outer.clients += 1
                start, n = time.monotonic(), 0
                try:
                    while not outer._stopping.is_set():
                        jpeg = outer.frames[n % len(outer.frames)]
                        self.wfile.write(
                            f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg
                            + b"\r\n"
                        )
                        n += 1
                        outer._stopping.wait(max(0.0, start + n / outer.fps - time.monotonic()))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._thread: threading.Thread | None = None

    def start(self) -> MjpegServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(2)

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
