"""``simulate camera --rtsp PORT | --mjpeg PORT`` and ``simulate video``: the synthetic scene as a stream or a file."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

from edge_runtime.errors import EdgeRuntimeError

__all__ = ["serve_camera_stream", "write_scene_video"]


def serve_camera_stream(
    *,
    rtsp: int | None,
    mjpeg: int | None,
    fps: float,
    width: int,
    height: int,
    objects: int = 2,
    duration: float | None = None,
    codec: str = "h264",
) -> int:
    """Serve the moving-shapes scene on 127.0.0.1 until Ctrl-C, SIGTERM or ``duration``."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("simulated cameras need OpenCV: pip install 'edge-runtime[camera]'") from None
    if rtsp is not None:
        from .rtsp_server import gstreamer_available, serve_rtsp

        missing = gstreamer_available(codec)
        if missing:
            raise EdgeRuntimeError(missing)

        def ready(url: str) -> None:
            print(
                f'serving the synthetic scene at {url} ({width}x{height}, {fps:g} fps, {codec}); try: source = "{url}"',
                file=sys.stderr,
                flush=True,
            )

        return serve_rtsp(
            port=rtsp, fps=fps, width=width, height=height, objects=objects, codec=codec, duration=duration, ready=ready
        )
    from .mjpeg_server import MjpegServer

    try:
        server = MjpegServer(port=mjpeg or 0, fps=fps, width=width, height=height, objects=objects)
    except OSError as err:
        raise EdgeRuntimeError(f"cannot listen on 127.0.0.1:{mjpeg}: {err.strerror}") from None
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        print(
            f"serving the synthetic scene at {server.url} (MJPEG, {width}x{height}, {fps:g} fps)",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            done.wait(duration)
    return 0


def write_scene_video(
    output: Path, *, fps: float, width: int, height: int, objects: int, seed: int, travel_s: float = 4.0
) -> int:
    """Write the scene to ``output`` and its ground truth (every object's box per frame) beside it, as .json."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("writing video needs OpenCV: pip install 'edge-runtime[camera]'") from None
    from .moving import MovingScene, save_truth, write_video

    scene = MovingScene.crossing(width=width, height=height, fps=fps, objects=objects, seed=seed, travel_s=travel_s)
    try:
        write_video(scene, output)
    except ValueError as err:
        raise EdgeRuntimeError(f"{err} (use .mp4 or .avi)") from None
    truth = output.with_suffix(".json")
    save_truth(scene, truth)
    print(
        f"wrote {scene.frames} frames ({scene.frames / fps:.1f} s, {objects} objects) to {output}; "
        f"ground truth in {truth}",
        file=sys.stderr,
    )
    return 0
