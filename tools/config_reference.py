"""Write CONFIG.md: every key of the runtime's TOML config, generated from the pydantic models.

    python tools/config_reference.py           # rewrite CONFIG.md
    python tools/config_reference.py --check   # exit 1 when CONFIG.md is out of date

The models are walked from ``edge_runtime.config.Config`` down: a field holding a model is a table
(``[routes.tracker]``), a field holding a list of models an array of tables (``[[routes.zones]]``). Types,
bounds (pydantic's ge/gt/le/lt and length metadata), defaults and descriptions all come from the fields,
so a key cannot be added or changed without CONFIG.md following (``tests/test_config_reference.py``).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edge_runtime.config import Config

__all__ = ["OUTPUT", "Table", "render", "tables", "keys_in_order"]

OUTPUT = ROOT / "CONFIG.md"

# What validators enforce beyond the field's metadata, where the type alone would mislead: (model, key) -> type.
TYPE_OVERRIDES: dict[tuple[str, str], str] = {
    ("RouteConfig", "qos"): "integer: 0 or 1",
}

# What a table cell cannot hold (a picture), shown below a table's keys: table path -> Markdown.
NOTES: dict[str, str] = {
    "routes.lines": """\
Which way is `in`: `in_direction` names it across the frame, as you look at the picture. The line
`points = [[0.5, 0.0], [0.5, 1.0]]` with `in_direction = "left_to_right"`:

```
(0, 0) +---------------------+ (1, 0)
       |          |          |
       |   o ---- in ---->   |      an object whose anchor (bottom_center by default)
       |   <---- out ---- o  |      goes from one side to the other, within the segment
       |          |          |
(0, 1) +---------------------+ (1, 1)
                x = 0.5
```

On a horizontal line use `top_to_bottom` or `bottom_to_top` (it has no left or right side: the config
says so on load); on a vertical one `left_to_right` or `right_to_left`. On a slanted line both pairs
work: its left side is the one a horizontal line from the frame's left edge meets first, its top the one
a vertical line from the top edge meets first, so on a diagonal from top left to bottom right
`left_to_right` and `bottom_to_top` are the same crossing. The order of the two points does not matter
then. Without `in_direction`, `forward` is a crossing from the left to the right of the line as seen
walking from its first point to its second (y points down): for the line above, right to left.""",
}

_NONE = type(None)
_SCALARS: dict[object, str] = {bool: "boolean", int: "integer", float: "float", str: "string", Path: "path"}
_PLURALS = {"boolean": "booleans", "integer": "integers", "float": "floats", "string": "strings", "path": "paths"}
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Table:
    """One TOML table: ``path`` as users write it (``routes.zones``), ``array`` for ``[[...]]``."""

    path: str
    array: bool
    model: type[BaseModel]
    field: FieldInfo | None  # the parent's field that holds it; None for the top level
    parent: Table | None

    @property
    def heading(self) -> str:
        if not self.path:
            return "top level"
        return f"[[{self.path}]]" if self.array else f"[{self.path}]"


def tables(model: type[BaseModel] = Config) -> Iterator[Table]:
    """The tables below ``model`` (not the top level itself), parents before their sub-tables."""

    def walk(table: Table) -> Iterator[Table]:
        for name in keys_in_order(table.model):
            field = table.model.model_fields[name]
            nested = nested_model(field.annotation)
            if nested is not None:
                sub = Table(
                    path=f"{table.path}.{name}" if table.path else name,
                    array=nested[1],
                    model=nested[0],
                    field=field,
                    parent=table,
                )
                yield sub
                yield from walk(sub)

    yield from walk(Table(path="", array=False, model=model, field=None, parent=None))


def keys_in_order(model: type[BaseModel]) -> list[str]:
    """The model's fields, those of its first base first, then its own, then those of mixin bases.

    ``RouteConfig(_Strict, MonitoringFields, TrackingConfig)`` lists its own keys (subscribe, model, publish...)
    before the monitoring and tracking ones; ``ZoneConfig(_Shape)`` lists the shape's keys, then its own.
    """
    order: list[str] = []

    def visit(cls: type) -> None:
        bases = [b for b in cls.__bases__ if issubclass(b, BaseModel) and b is not BaseModel]
        if bases:
            visit(bases[0])
        order.extend(inspect.get_annotations(cls))
        for base in bases[1:]:
            visit(base)

    visit(model)
    fields = model.model_fields
    seen: dict[str, None] = {}
    for name in [*order, *fields]:
        if name in fields:
            seen.setdefault(name)
    return list(seen)


def nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds and whether as a list (an array of tables), or None for a plain key."""
    annotation, _ = _strip_none(annotation)
    annotation, _ = _strip_annotated(annotation)
    if get_origin(annotation) is list:
        inner = nested_model(get_args(annotation)[0])
        return (inner[0], True) if inner is not None and not inner[1] else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not _NONE]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _strip_annotated(annotation: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        for item in extra:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        annotation = base
    return annotation, metadata


def _number(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _bounds(metadata: Sequence[Any]) -> str:
    lower: tuple[str, str, object] | None = None  # (bracket, sign, value)
    upper: tuple[str, str, object] | None = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lower = ("[", "≥", item.ge)
        elif isinstance(item, annotated_types.Gt):
            lower = ("(", ">", item.gt)
        elif isinstance(item, annotated_types.Le):
            upper = ("]", "≤", item.le)
        elif isinstance(item, annotated_types.Lt):
            upper = (")", "<", item.lt)
    if lower and upper:
        return f" in {lower[0]}{_number(lower[2])}, {_number(upper[2])}{upper[0]}"
    if lower:
        return f" {lower[1]} {_number(lower[2])}"
    if upper:
        return f" {upper[1]} {_number(upper[2])}"
    return ""


def _lengths(metadata: Sequence[Any]) -> tuple[int | None, int | None]:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            low = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            high = item.max_length
    return low, high


def _count(low: int | None, high: int | None, one: str, many: str) -> str:
    """``"3–64 items"``, ``"at least 1 item"``, ... or ``""`` without bounds."""

    def n(count: int) -> str:
        return f"{count} {one if count == 1 else many}"

    if low is not None and low == high:
        return f"exactly {n(low)}"
    if low and high is not None:
        return f"{low}–{n(high)}"
    if high is not None:
        return f"at most {n(high)}"
    if low:
        return f"at least {n(low)}"
    return ""


def _literal(value: object) -> str:
    if isinstance(value, str):
        return value if _BARE.match(value) else json.dumps(value)
    return _toml(value)


def describe_type(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """A readable type: "integer ≥ 1", "float in (0, 1]", "one of: a, b", "list of strings", ..."""
    annotation, _ = _strip_none(annotation)
    annotation, inner = _strip_annotated(annotation)
    metadata = [*inner, *metadata]
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(_literal(v) for v in get_args(annotation))
    nested = nested_model(annotation)
    if nested is not None:
        return "array of tables" if nested[1] else "table"
    low, high = _lengths(metadata)
    if origin is list:
        item = describe_type(get_args(annotation)[0])
        if low is not None and low == high and low <= 4 and item in _PLURALS:
            return "[" + ", ".join([item] * low) + "]"
        text = f"list of {_PLURALS.get(item, item)}"
        count = _count(low, high, "item", "items")
        return f"{text}, {count}" if count else text
    if annotation not in _SCALARS:
        raise TypeError(f"no readable name for the type {annotation!r}: teach tools/config_reference.py")
    text = _SCALARS[annotation]
    if text == "string":
        count = _count(low, high, "character", "characters")
        if count == "at least 1 character":
            text = "non-empty string"
        elif count:
            text += f" of {count}"
        pattern = next((p for p in (getattr(m, "pattern", None) for m in metadata) if p), None)
        if pattern:
            text += f" matching `{pattern}`"
        return text
    return text + _bounds(metadata)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for the default {value!r}")


def describe_default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "not set"
    if isinstance(value, BaseModel):
        return "its defaults"
    if value == [] and nested_model(field.annotation) is not None:
        return "none"
    return f"`{_toml(value)}`"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, and ``<...>`` outside code spans kept from being HTML."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a ``## `[x.y]` `` heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _where(table: Table) -> str:
    """Where the table goes, how many times, and whether it may be left out."""
    assert table.field is not None and table.parent is not None
    field, parent = table.field, table.parent
    low, high = _lengths(field.metadata)
    count = _count(low, high, "entry", "entries")
    if table.array:
        text = f"An array of tables: each `{table.heading}` header starts one more entry"
        if parent.path:
            text += f", of the `{parent.heading}` entry above it"
        return text + (f" ({count})." if count else "; none by default.")
    text = "A table"
    if parent.path:
        text = f"A sub-table of a `{parent.heading}` entry, written after that entry's keys"
    if field.is_required():
        return text + "; required."
    if field.default is None:
        return text + "; optional: left out, it is off."
    return text + "; optional: every key has a default."


def _section(table: Table) -> list[str]:
    if table.field is None:  # the top level: only its plain keys (its tables have their own sections)
        out = ["## Top level", "", "Keys before the first table header.", ""]
    else:
        out = [f"## `{table.heading}`", ""]
        if table.field.description:
            out += [table.field.description, ""]
        out += [_where(table), ""]
    out += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name in keys_in_order(table.model):
        field = table.model.model_fields[name]
        nested = nested_model(field.annotation)
        if table.field is None and nested is not None:
            continue
        kind = TYPE_OVERRIDES.get((table.model.__name__, name)) or describe_type(field.annotation, field.metadata)
        description = field.description or "*(no description)*"
        if nested is not None:
            sub = f"{table.path}.{name}"
            heading = f"[[{sub}]]" if nested[1] else f"[{sub}]"
            kind = f"{kind}: [`{heading}`](#{_anchor(f'`{heading}`')})"
        out.append(f"| `{name}` | {_cell(kind)} | {_cell(describe_default(field))} | {_cell(description)} |")
    out.append("")
    if table.path in NOTES:
        out += [NOTES[table.path], ""]
    return out


HEADER = """\
# Configuration reference

<!-- Generated by tools/config_reference.py from the config models: do not edit by hand. -->

Every key of the runtime's TOML config (`edge-runtime run CONFIG`), table by table. This file is generated
from the pydantic models (`edge_runtime/config.py` and the `config.py` of `edge_runtime/sources`,
`edge_runtime/tracking` and `edge_runtime/monitoring`); after changing one, regenerate it with

    python tools/config_reference.py

and commit it with the change (`tests/test_config_reference.py` fails while it is out of date).

How to read it:

- Every table refuses keys it does not know; `edge-runtime run CONFIG --validate-config` checks a file and
  names the key and line of the first problem.
- Types are strict: `max_batch = "32"` is refused. A float key also takes an integer (`fps = 5`).
- Bounds: `[a, b]` includes both ends, `(a, b]` excludes `a`.
- "required": the key must be given. "not set": leave the key out (TOML has no null); the description says
  what happens then.
- Relative paths are relative to the config file.
- Rules that tie keys together (a route takes `subscribe` or `source`, not both; `cert_file` goes with
  `key_file`; ...) are checked on load too, and the description of the keys says so.
"""


def render() -> str:
    """CONFIG.md's text."""
    root = Table(path="", array=False, model=Config, field=None, parent=None)
    found = list(tables())
    plain = [n for n, f in Config.model_fields.items() if nested_model(f.annotation) is None]
    out = HEADER.splitlines()
    out += ["", "Tables:", ""]
    if plain:
        out.append("- [Top level](#top-level)")
    for table in found:
        heading = f"`{table.heading}`"
        indent = "  " * (table.path.count("."))
        out.append(f"{indent}- [{heading}](#{_anchor(heading)})")
    out.append("")
    if plain:
        out += _section(root)
    for table in found:
        out += _section(table)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when CONFIG.md is out of date; write nothing")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: CONFIG.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), str(args.output), "generated", lineterm="", n=1
        )
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        print(f"{args.output} is out of date: run python tools/config_reference.py", file=sys.stderr)
        return 1
    args.output.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
