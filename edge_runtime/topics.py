"""MQTT topic filters and the result-topic templates that refer to what their wildcards matched."""

from __future__ import annotations

import re
import string

__all__ = ["TopicFilter", "TopicTemplate", "check_filter", "topic_problem", "MAX_TOPIC_BYTES"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check_filter(text: str) -> str:
    """Return the filter without a ``$share/<group>/`` prefix, or raise ValueError saying what is wrong."""
    if not text:
        raise ValueError("a topic filter cannot be empty")
    if "\x00" in text:
        raise ValueError("a topic filter cannot contain a NUL character")
    if len(text.encode()) > 65535:
        raise ValueError("a topic filter is at most 65535 bytes")
    inner = text
    if text.startswith("$share/"):
        parts = text.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ValueError("a shared subscription is written $share/<group>/<filter>")
        if "+" in parts[1] or "#" in parts[1]:
            raise ValueError("the group name of a shared subscription cannot contain + or #")
        inner = parts[2]
    levels = inner.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole level and the last one, in {text!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level (write a/+/b, not a/x+/b), in {text!r}")
    return inner


class TopicFilter:
    """A compiled subscription filter: ``match(topic)`` returns what each wildcard matched, or None."""

    __slots__ = ("text", "levels", "wildcards")

    def __init__(self, text: str):
        self.text = text
        self.levels = check_filter(text).split("/")
        self.wildcards = sum(1 for level in self.levels if level in ("+", "#"))

    def match(self, topic: str) -> list[str] | None:
        parts = topic.split("/")
        captures: list[str] = []
        for i, level in enumerate(self.levels):
            if level == "#":
                # MQTT: a leading '#' or '+' does not match topics that start with '$'.
                if i == 0 and topic.startswith("$"):
                    return None
                captures.append("/".join(parts[i:]))
                return captures
            if i >= len(parts):
                return None
            if level == "+":
                if i == 0 and parts[0].startswith("$"):
                    return None
                captures.append(parts[i])
            elif level != parts[i]:
                return None
        return captures if len(parts) == len(self.levels) else None

    def overlaps(self, other: TopicFilter) -> bool:
        """Whether some topic matches both filters: a broker then delivers an input once per subscription."""
        a, b = self.levels, other.levels
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            if x in ("+", "#") or y in ("+", "#"):
                if i == 0 and ((x or "").startswith("$") or (y or "").startswith("$")):
                    return False  # a leading wildcard never matches a $ topic
                if x == "#" or y == "#":
                    return True  # "a/#" also matches "a"
                if x is None or y is None:
                    return False
                continue
            if x != y:  # two literals, or one filter is longer than the other
                return False
        return True


class TopicTemplate:
    """A result topic such as ``results/{1}/vibration``.

    ``{n}`` is what the filter's n-th wildcard matched, ``{topic}`` the whole input topic.
    """

    __slots__ = ("text", "_format", "needs_captures")

    def __init__(self, text: str, *, wildcards: int):
        if not text:
            raise ValueError("a topic cannot be empty")
        if "+" in text or "#" in text:
            raise ValueError(f"a publish topic cannot contain the wildcards + or #: {text!r}")
        fields = []
        for _, name, spec, conv in string.Formatter().parse(text):
            if name is None:
                continue
            if spec or conv:
                raise ValueError(f"placeholders take no format spec: {{{name}}} in {text!r}")
            if name == "topic":
                fields.append(name)
                continue
            if not name.isdigit() or int(name) < 1:
                raise ValueError(f"unknown placeholder {{{name}}} in {text!r}: use {{1}}..{{n}} or {{topic}}")
            if int(name) > wildcards:
                raise ValueError(
                    f"{{{name}}} in {text!r} refers to wildcard {name}, but the filter has only {wildcards}"
                )
            fields.append(name)
        self.text = text
        self.needs_captures = bool(fields)
        # Turn {1} into {0[0]} so str.format can fill it from the capture list in one call.
        self._format = _PLACEHOLDER.sub(
            lambda m: "{topic}" if m.group(1) == "topic" else f"{{c[{int(m.group(1)) - 1}]}}", text
        )

    def render(self, captures: list[str], topic: str) -> str:
        if not self.needs_captures:
            return self.text
        return self._format.format(c=captures, topic=topic)


# The longest topic MQTT can carry: its length is a two-byte prefix.
MAX_TOPIC_BYTES = 65535


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published on (empty, too long, a wildcard, a NUL), or None when it can.

    Result and error topics are rendered from what an input's topic matched, so a legal input topic can
    render an illegal one: checked before every publish, never raised.
    """
    if not topic:
        return "empty topic"
    if len(topic) * 4 > MAX_TOPIC_BYTES and len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return f"topic longer than {MAX_TOPIC_BYTES} bytes"
    if "+" in topic or "#" in topic:
        return "topic contains a wildcard (+ or #)"
    if "\x00" in topic:
        return "topic contains a NUL character"
    return None
