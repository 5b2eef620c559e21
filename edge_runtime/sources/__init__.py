"""Video sources: RTSP, HTTP MJPEG, V4L2 devices and files through OpenCV, newest frame only.

```python
source = VideoSource("rtsp://cam:554/stream1", name="driveway", fps=5, username_env="CAM_USER",
                     password_env="CAM_PASS").start()
ready, _, _ = select.select([mqtt_socket, source], [], [], timeout)   # the slot's pipe wakes the loop
frame = source.take()          # Frame(source, seq, timestamp, image=BGR ndarray, ...) or None
source.status()                # for the status topic: state, error, counters; the URL redacted
source.stop()                  # within a second
```
"""

from .capture import STATES, VideoSource
from .config import SourceConfig
from .probe import Diagnosis
from .slot import Frame, LatestFrame
from .urls import default_name, redact_url, source_kind

__all__ = [
    "VideoSource",
    "SourceConfig",
    "LatestFrame",
    "Frame",
    "Diagnosis",
    "STATES",
    "redact_url",
    "source_kind",
    "default_name",
]
