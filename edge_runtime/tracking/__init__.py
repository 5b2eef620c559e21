"""Tracking detector results across frames, zones and counting lines, and object events.

```python
events = TrackingConfig(track=True, zones=[...]).build("driveway")   # or ObjectEvents(source=..., tracker=Tracker(...))
out = events.process(detector_result)        # Emitted(events=[...], occupancy=[...], counts=[...])
```
"""

from .config import LineConfig, TrackerConfig, TrackingConfig, ZoneConfig, render_topic
from .events import Emitted, ObjectEvents
from .geometry import Line, Zone, anchor_point, point_in_polygon
from .tracker import Track, Tracker, TrackerUpdate, iou_matrix

__all__ = [
    "Tracker",
    "Track",
    "TrackerUpdate",
    "ObjectEvents",
    "Emitted",
    "Zone",
    "Line",
    "anchor_point",
    "point_in_polygon",
    "iou_matrix",
    "TrackingConfig",
    "TrackerConfig",
    "ZoneConfig",
    "LineConfig",
    "render_topic",
]
