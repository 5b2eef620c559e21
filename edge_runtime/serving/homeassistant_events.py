"""Home Assistant MQTT discovery for tracked objects: zone occupancy and line counts as sensors, object
events as MQTT ``event`` entities.

Like ``edge_runtime.serving.homeassistant``, each function returns ``(config topic, payload)`` to publish retained; the
runtime announces a source's entities when it starts serving it (the topics are known from the config,
unlike result topics). Availability follows the runtime's status topic.

Home Assistant's MQTT event entity wants a JSON payload with an ``event_type`` among ``event_types``; our
events say ``"event": "new"|"update"|"end"``, so the ``value_template`` renames it and passes the useful
fields on as the event's attributes.
"""

from __future__ import annotations

from typing import Any

from .homeassistant import _entity, _slug

__all__ = ["zone_occupancy_discovery", "line_count_discovery", "object_events_discovery", "EVENT_TYPES"]

EVENT_TYPES = ("new", "update", "end")
_EVENT_TEMPLATE = (
    '{"event_type": "{{ value_json.event }}", "id": "{{ value_json.id }}", '
    '"label": "{{ value_json.label }}", "score": {{ value_json.score }}, '
    '"zones": {{ value_json.zones | tojson }}, "source": "{{ value_json.source }}"}'
)


def zone_occupancy_discovery(
    *, prefix: str, node: str, source: str, zone: str, state_topic: str
) -> tuple[str, dict[str, Any]]:
    """A sensor whose state is the number of objects in ``zone`` (per-label counts as attributes)."""
    object_id = _slug(f"{source}_{zone}_occupancy")
    payload = {
        **_entity(node, object_id, f"{source} {zone} occupancy"),
        "state_topic": state_topic,
        "value_template": "{{ value_json.count }}",
        "json_attributes_topic": state_topic,
        "json_attributes_template": "{{ value_json.labels | tojson }}",
        "state_class": "measurement",
        "unit_of_measurement": "objects",
        "icon": "mdi:account-group",
    }
    return f"{prefix}/sensor/{_slug(node)}/{object_id}/config", payload


def line_count_discovery(
    *, prefix: str, node: str, source: str, line: str, direction: str, state_topic: str
) -> tuple[str, dict[str, Any]]:
    """A sensor counting crossings of ``line`` in ``direction`` (its forward or backward name); a total."""
    object_id = _slug(f"{source}_{line}_{direction}")
    payload = {
        **_entity(node, object_id, f"{source} {line} {direction}"),
        "state_topic": state_topic,
        "value_template": f"{{{{ value_json['{direction}'] }}}}",
        "state_class": "total_increasing",
        "unit_of_measurement": "objects",
        "icon": "mdi:counter",
    }
    return f"{prefix}/sensor/{_slug(node)}/{object_id}/config", payload


def object_events_discovery(*, prefix: str, node: str, source: str, events_topic: str) -> tuple[str, dict[str, Any]]:
    """An MQTT event entity firing ``new``, ``update`` and ``end`` for the objects tracked on ``source``."""
    object_id = _slug(f"{source}_objects")
    payload = {
        **_entity(node, object_id, f"{source} objects"),
        "state_topic": events_topic,
        "event_types": list(EVENT_TYPES),
        "value_template": _EVENT_TEMPLATE,
        "icon": "mdi:cctv",
    }
    return f"{prefix}/event/{_slug(node)}/{object_id}/config", payload
