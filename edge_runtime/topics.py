"""MQTT topic filters and the result-topic templates that refer to what their wildcards matched.

A template can also be read as the set of topics it may render (``template_pattern``): each placeholder
stands for what it can be (one level, any levels, a filter's topics, a name), and ``TopicFilter.may_match``
says whether any of those topics matches a filter. The config uses it to refuse a route whose answers
could come back in as inputs.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Literal

__all__ = [
    "TopicFilter",
    "TopicTemplate",
    "TopicPattern",
    "Wildcard",
    "LEVEL",
    "LEVELS",
    "template_pattern",
    "capture_patterns",
    "check_filter",
    "topic_problem",
    "MAX_TOPIC_BYTES",
]

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

    def pattern(self) -> TopicPattern:
        """The topics this filter matches, as a ``TopicPattern`` (``a/#`` is ``a`` and ``a/...``)."""
        out: list[str | Wildcard] = []
        for i, level in enumerate(self.levels):
            if level == "#":
                out.append(_TAIL if i else LEVELS)
                break
            if i:
                out.append("/")
            out.append(LEVEL if level == "+" else level)
        return tuple(piece for piece in out if piece != "")

    def may_match(self, pattern: TopicPattern) -> bool:
        """Whether this filter matches some topic of ``pattern`` (say, some topic a template can render)."""
        if self.levels[0] in ("+", "#") and pattern and isinstance(pattern[0], str) and pattern[0].startswith("$"):
            return False  # a leading wildcard never matches a $ topic
        return _intersect(pattern, self.pattern())

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


class Wildcard:
    """A piece of a ``TopicPattern`` that stands for many strings: ``level`` (any text without '/', what ``+``
    matches), ``levels`` (any text, what ``#`` captures) or ``tail`` (nothing, or '/' and any text: what a
    trailing ``/#`` adds to a filter)."""

    __slots__ = ("kind",)

    def __init__(self, kind: Literal["level", "levels", "tail"]):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


LEVEL, LEVELS, _TAIL = Wildcard("level"), Wildcard("levels"), Wildcard("tail")
# A set of topics: literal text and wildcards, in order.
TopicPattern = tuple[str | Wildcard, ...]


def template_pattern(text: str, values: Mapping[str, TopicPattern]) -> TopicPattern:
    """The topics ``text`` can render when each ``{name}`` in it can be any topic of ``values[name]``."""
    out: list[str | Wildcard] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        out += [text[pos : m.start()], *values[m.group(1)]]
        pos = m.end()
    out.append(text[pos:])
    return tuple(piece for piece in out if piece != "")


def capture_patterns(flt: TopicFilter) -> dict[str, TopicPattern]:
    """What ``{1}``..``{n}`` and ``{topic}`` can be in the templates of a route subscribed to ``flt``."""
    wildcards = [level for level in flt.levels if level in ("+", "#")]
    values: dict[str, TopicPattern] = {str(i): (LEVEL if w == "+" else LEVELS,) for i, w in enumerate(wildcards, 1)}
    values["topic"] = flt.pattern()
    return values


def _nfa(pattern: TopicPattern) -> tuple[list[list[tuple[str | None, int]]], int]:
    """A pattern as a small automaton over characters: per state, (label, next state) edges, where a label is
    a character, ``_NOSLASH`` or ``_ANYCHAR`` (None: an empty move); and the accepting state."""
    edges: list[list[tuple[str | None, int]]] = [[]]

    def state() -> int:
        edges.append([])
        return len(edges) - 1

    at = 0
    for piece in pattern:
        if isinstance(piece, str):
            for ch in piece:
                nxt = state()
                edges[at].append((ch, nxt))
                at = nxt
        elif piece.kind == "tail":
            inner, end = state(), state()
            edges[at] += [(None, end), ("/", inner)]
            edges[inner] += [(_ANYCHAR, inner), (None, end)]
            at = end
        else:
            nxt = state()
            edges[at] += [(_NOSLASH if piece.kind == "level" else _ANYCHAR, at), (None, nxt)]
            at = nxt
    return edges, at


_NOSLASH, _ANYCHAR = "[^/]", "<any>"


def _meet(a: str, b: str) -> bool:
    """Whether some character carries both labels."""
    if len(a) == 1 and len(b) == 1:
        return a == b
    if len(a) == 1 or len(b) == 1:
        ch, other = (a, b) if len(a) == 1 else (b, a)
        return other == _ANYCHAR or ch != "/"
    return True


def _intersect(a: TopicPattern, b: TopicPattern) -> bool:
    """Whether some topic is in both patterns: a walk of the two automata side by side."""
    (ea, end_a), (eb, end_b) = _nfa(a), _nfa(b)
    seen = {(0, 0)}
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) == (end_a, end_b):
            return True
        steps = [(ni, j) for la, ni in ea[i] if la is None] + [(i, nj) for lb, nj in eb[j] if lb is None]
        steps += [
            (ni, nj) for la, ni in ea[i] if la is not None for lb, nj in eb[j] if lb is not None and _meet(la, lb)
        ]
        for step in steps:
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return False


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
