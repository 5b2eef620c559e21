"""Home Assistant MQTT discovery for tracked objects: zone occupancy and line counts as sensors, object
events as MQTT ``event`` entities.

Like ``edge_runtime.serving.homeassistant``, each function returns ``(config topic, payload)`` to publish
retained, ids hashed from the exact topics (camera names come from whoever publishes frames). The runtime
announces a camera's entities when it starts tracking it. Availability follows the runtime's status topic.

Home Assistant's MQTT event entity wants a JSON object with an ``event_type`` among ``event_types``; our
events say ``"event": "new"|"update"|"end"``, so the ``value_template`` builds that object from the event
with ``tojson`` (never by pasting strings: a label with a quote would make invalid JSON and Home
Assistant would drop the event), and passes every field on as the event's attributes: ``entered``,
``left`` and ``crossed`` (empty lists when the event has none) let an automation trigger on "crossed gate".
"""

from __future__ import annotations

from .homeassistant import Announcement, _literal, entity

__all__ = ["zone_occupancy_discovery", "line_count_discovery", "object_events_discovery", "EVENT_TYPES"]

EVENT_TYPES = ("new", "update", "end")
_EVENT_FIELDS = ("id", "source", "label", "score", "box", "zones", "first_seen", "last_seen")
_ONLY_ON_CHANGE = ("entered", "left", "crossed")  # an update says what it did; every other event: []
_EVENT_TEMPLATE = (
    '{{ {"event_type": value_json.event, '
    + ", ".join(
        [f'"{f}": value_json.{f}' for f in _EVENT_FIELDS]
        + [f'"{f}": value_json.{f} | default([])' for f in _ONLY_ON_CHANGE]
    )
    + "} | tojson }}"
)


def zone_occupancy_discovery(*, prefix: str, node: str, source: str, zone: str, state_topic: str) -> Announcement:
    """A sensor whose state is the number of objects in ``zone`` (per-label counts as attributes)."""
    return entity(
        prefix=prefix,
        component="sensor",
        node=node,
        name=f"{source} {zone} occupancy",
        readable=f"{source}_{zone}_occupancy",
        exact=f"occupancy\x00{state_topic}",
        state_topic=state_topic,
        value_template="{{ value_json.count }}",
        json_attributes_topic=state_topic,
        json_attributes_template="{{ value_json.labels | tojson }}",
        state_class="measurement",
        unit_of_measurement="objects",
        icon="mdi:account-group",
    )


def line_count_discovery(
    *, prefix: str, node: str, source: str, line: str, direction: str, state_topic: str
) -> Announcement:
    """A sensor counting crossings of ``line`` in ``direction`` (its forward or backward name); a total."""
    return entity(
        prefix=prefix,
        component="sensor",
        node=node,
        name=f"{source} {line} {direction}",
        readable=f"{source}_{line}_{direction}",
        exact=f"line\x00{state_topic}\x00{direction}",
        state_topic=state_topic,
        value_template=f"{{{{ value_json[{_literal(direction)}] }}}}",
        state_class="total_increasing",
        unit_of_measurement="objects",
        icon="mdi:counter",
    )


def object_events_discovery(*, prefix: str, node: str, source: str, events_topic: str) -> Announcement:
    """An MQTT event entity firing ``new``, ``update`` and ``end`` for the objects tracked on ``source``."""
    return entity(
        prefix=prefix,
        component="event",
        node=node,
        name=f"{source} objects",
        readable=f"{source}_objects",
        exact=f"events\x00{events_topic}",
        state_topic=events_topic,
        event_types=list(EVENT_TYPES),
        value_template=_EVENT_TEMPLATE,
        icon="mdi:cctv",
    )
