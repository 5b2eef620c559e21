"""Home Assistant MQTT discovery: what each result topic looks like as a Home Assistant entity.

Discovery needs concrete topics, and a route's result topic depends on its input (``results/{1}``), so
the runtime announces a topic the first time it publishes a result there (``[homeassistant]`` in the
config; ``discovery.Discovery`` keeps what was announced). The config message is retained, so Home
Assistant finds it whenever it starts.

Ids: input topics are chosen by whoever publishes, so an entity's object id is a readable slug plus 64
bits of a hash of the exact topic. ``results/pump_1/x``, ``results/pump 1/x`` and ``results/pump.1/x``
are three entities; no topic can be chosen to take over another's entity (its config topic and
``unique_id``) and point it at a topic the chooser feeds.

All entities of a runtime belong to one device (model "edge-runtime", the runtime's version); the model
that answered, and its version, are in each result, so in the entity's attributes.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from .. import __version__
from ..bundle.manifest import Manifest

__all__ = ["Announcement", "result_entity", "release_entity", "entity", "object_id", "node_id"]

Announcement = tuple[str, dict[str, Any]]  # (config topic, payload), published retained

_SLUG_CHARS = 48
_TRUE_WORDS = {"1", "true", "yes", "on"}
_BOOLEAN_LABELS = ({"0", "1"}, {"false", "true"}, {"no", "yes"}, {"off", "on"})


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_")[:_SLUG_CHARS].strip("_") or "x"


def object_id(readable: str, exact: str) -> str:
    """``readable`` as a slug, then 16 hex digits of a hash of ``exact`` (what tells entities apart)."""
    return f"{_slug(readable)}_{hashlib.blake2b(exact.encode(), digest_size=8).hexdigest()}"


def node_id(node: str) -> str:
    """The runtime's client id where Home Assistant takes it as it is, else a slug and a hash of it."""
    return node if re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", node) else object_id(node, node)


def entity(
    *, prefix: str, component: str, node: str, name: str, readable: str, exact: str, **fields: Any
) -> Announcement:
    """(config topic, payload) of an entity: ``fields``, and what every entity we announce shares: ids (from
    ``readable`` and ``exact``, see ``object_id``), availability from the runtime's status, the runtime's
    device, the origin."""
    nid, oid = node_id(node), object_id(readable, exact)
    payload = {
        "name": name,
        "unique_id": f"edge-runtime-{nid}-{oid}",
        "availability_topic": f"edge-runtime/{node}/status",
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"edge-runtime-{nid}"],
            "name": f"edge-runtime {node}",
            "manufacturer": "edge-runtime",
            "model": "edge-runtime",
            "sw_version": __version__,
        },
        "origin": {"name": "edge-runtime", "sw_version": __version__},
        **fields,
    }
    return f"{prefix}/{component}/{nid}/{oid}/config", payload


def _literal(value: str | int) -> str:
    """``value`` as a template literal (JSON's strings and numbers are Jinja's too)."""
    return orjson.dumps(value).decode()


def _true_label(labels: list[str | int] | None) -> str | int | None:
    """For a classifier whose two labels read as a yes/no (0/1, false/true, no/yes, off/on): the "yes" one."""
    if not labels or len(labels) != 2:
        return None
    words = [str(label).lower() for label in labels]
    if set(words) not in _BOOLEAN_LABELS:
        return None
    return next(label for label, word in zip(labels, words) if word in _TRUE_WORDS)


def _scalar_value(manifest: Manifest) -> bool:
    """Whether a regressor answers one number per row (a state Home Assistant can keep statistics of)."""
    spec = next((o for o in manifest.outputs if o.name == manifest.value_output), None)
    return spec is not None and all(d == 1 for d in spec.shape[1:])


def _state(manifest: Manifest) -> tuple[str, dict[str, Any]] | None:
    """(component, how it reads a result) for the model's task; None for tasks with no single state."""
    task = manifest.task
    if task in ("classifier", "image_classifier"):
        yes = _true_label(manifest.labels)
        if yes is not None:
            return "binary_sensor", {
                "value_template": f"{{{{ 'ON' if value_json.label == {_literal(yes)} else 'OFF' }}}}"
            }
        return "sensor", {"value_template": "{{ value_json.label }}"}
    if task == "anomaly":
        template = "{{ 'ON' if value_json.anomaly else 'OFF' }}"
        return "binary_sensor", {"value_template": template, "device_class": "problem"}
    if task == "regressor":
        numeric = {"state_class": "measurement"} if _scalar_value(manifest) else {}
        return "sensor", {"value_template": "{{ value_json.value }}", **numeric}
    if task == "detector":
        template = "{{ value_json.detections | count }}"
        return "sensor", {"value_template": template, "state_class": "measurement", "unit_of_measurement": "objects"}
    return None


def result_entity(*, prefix: str, node: str, result_topic: str, manifest: Manifest) -> list[Announcement]:
    """The entity showing the results on ``result_topic``: its state from the model's task (a label, a value,
    a yes/no, a count), the whole result (model and version included) as attributes."""
    state = _state(manifest)
    if state is None:
        return []
    component, reading = state
    made = entity(
        prefix=prefix,
        component=component,
        node=node,
        name=f"{manifest.name} {result_topic}",
        readable=result_topic,
        exact=f"result\x00{result_topic}",
        state_topic=result_topic,
        json_attributes_topic=result_topic,
        **reading,
    )
    return [made]


def release_entity(*, prefix: str, node: str, model: str) -> Announcement:
    """A fleet device's ``model`` (its retained ``edge-runtime/<node>/models``, fleet/agent.py) as a sensor: the
    version it serves; the desired version, the rollout's phase and its notes as attributes."""
    topic = f"edge-runtime/{node}/models"
    key = _literal(model)
    return entity(
        prefix=prefix,
        component="sensor",
        node=node,
        name=f"{model} release",
        readable=f"{model} release",
        exact=f"release\x00{model}",
        state_topic=topic,
        value_template=f"{{{{ value_json.models[{key}].actual }}}}",
        json_attributes_topic=topic,
        json_attributes_template=f"{{{{ value_json.models[{key}] | tojson }}}}",
    )
