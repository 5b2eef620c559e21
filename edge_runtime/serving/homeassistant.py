"""Home Assistant MQTT discovery: each result topic appears in Home Assistant as a sensor.

Discovery needs concrete topics, and a route's result topic depends on its input (``results/{1}``), so
the runtime announces a topic the first time it publishes a result there (``[homeassistant]`` in the
config). The config message is retained, so Home Assistant finds it whenever it starts.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["discovery_message", "release_discovery_message"]

# What Home Assistant shows as the sensor's state, per task; the whole result is in the attributes.
_STATE = {
    "classifier": "{{ value_json.label }}",
    "image_classifier": "{{ value_json.label }}",
    "regressor": "{{ value_json.value }}",
    "anomaly": "{{ value_json.anomaly }}",
    "detector": "{{ value_json.detections | count }}",
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_")[:120] or "x"


def _entity(node: str, object_id: str, name: str, **device: str) -> dict[str, Any]:
    """What every entity we announce shares: its ids, availability from the runtime's status, the device."""
    return {
        "name": name,
        "unique_id": f"edge-runtime-{_slug(node)}-{object_id}",
        "availability_topic": f"edge-runtime/{node}/status",
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"edge-runtime-{_slug(node)}"],
            "name": f"edge-runtime {node}",
            "manufacturer": "edge-runtime",
            **device,
        },
    }


def discovery_message(
    *, prefix: str, node: str, result_topic: str, task: str, model: str, version: str
) -> tuple[str, dict[str, Any]] | None:
    """(config topic, payload) announcing ``result_topic``; None for tasks with no single state to show."""
    template = _STATE.get(task)
    if template is None:
        return None
    object_id = _slug(result_topic)
    payload = {
        **_entity(node, object_id, f"{model} {result_topic}", model=model, sw_version=version),
        "state_topic": result_topic,
        "value_template": template,
        "json_attributes_topic": result_topic,
    }
    return f"{prefix}/sensor/{_slug(node)}/{object_id}/config", payload


def release_discovery_message(*, prefix: str, node: str, model: str) -> tuple[str, dict[str, Any]]:
    """(config topic, payload) announcing a fleet device's ``model`` (its retained ``edge-runtime/<node>/models``)
    as a sensor: the version it serves, with the desired version, the rollout's phase and notes as attributes."""
    topic = f"edge-runtime/{node}/models"
    object_id = f"release_{_slug(model)}"
    payload = {
        **_entity(node, object_id, f"{model} release", model=model),
        "state_topic": topic,
        "value_template": f"{{{{ value_json.models['{model}'].actual }}}}",
        "json_attributes_topic": topic,
        "json_attributes_template": f"{{{{ value_json.models['{model}'] | tojson }}}}",
    }
    return f"{prefix}/sensor/{_slug(node)}/{object_id}/config", payload
