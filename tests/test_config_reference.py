"""CONFIG.md, the config reference, is generated from the pydantic models and must follow them."""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from edge_runtime.config import Config, parse_config
from edge_runtime.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONFIG_MD = ROOT / "CONFIG.md"
REGENERATE = "run `python tools/config_reference.py` and commit CONFIG.md"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _models_below(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """The models a field holds (walked here independently of the tool), with True for a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    if get_origin(annotation) is list:
        return [(m, True) for m, _ in _models_below(get_args(annotation)[0])]
    return [found for arg in get_args(annotation) for found in _models_below(arg)]


def _expected_tables() -> dict[str, type[BaseModel]]:
    """Heading as users write it (``[[routes.zones]]``) -> model, for every table below Config."""
    out: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            for sub, array in _models_below(field.annotation):
                sub_path = f"{path}.{name}" if path else name
                out[f"[[{sub_path}]]" if array else f"[{sub_path}]"] = sub
                walk(sub, sub_path)

    walk(Config, "")
    return out


def _documented() -> dict[str, list[str]]:
    """Section heading of CONFIG.md -> the keys its table lists, in order."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in CONFIG_MD.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `(.+)`$", line)
        if heading:
            current = sections.setdefault(heading.group(1), [])
        elif line.startswith("## "):
            current = None
        elif current is not None:
            row = re.match(r"^\| `([^`]+)` \|", line)
            if row:
                current.append(row.group(1))
    return sections


def test_config_md_is_up_to_date():
    expected = tool.render()
    current = CONFIG_MD.read_text(encoding="utf-8") if CONFIG_MD.exists() else ""
    if current != expected:
        diff = list(difflib.unified_diff(current.splitlines(), expected.splitlines(), "CONFIG.md", "generated", n=0))
        pytest.fail(f"CONFIG.md is out of date with the config models: {REGENERATE}.\n" + "\n".join(diff[:30]))


def test_every_field_of_every_model_is_in_config_md():
    documented = _documented()
    expected = _expected_tables()
    assert sorted(documented) == sorted(expected), f"CONFIG.md's tables differ from the models': {REGENERATE}"
    for heading, model in expected.items():
        missing = sorted(set(model.model_fields) - set(documented[heading]))
        extra = sorted(set(documented[heading]) - set(model.model_fields))
        assert not missing, f"{heading} keys missing from CONFIG.md: {missing}; {REGENERATE}"
        assert not extra, f"CONFIG.md lists keys {heading} does not take: {extra}; {REGENERATE}"
    # The top level holds tables only; were a plain key added there, CONFIG.md would need a section for it.
    plain = [n for n, f in Config.model_fields.items() if not _models_below(f.annotation)]
    assert plain == [] or set(plain) <= set(documented.get("Top level", []))


def test_every_field_has_a_description():
    undescribed = [
        f"{heading} {name} ({model.__name__})"
        for heading, model in _expected_tables().items()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    undescribed += [f"top level {n}" for n, f in Config.model_fields.items() if not (f.description or "").strip()]
    assert not undescribed, f"give these fields a description= (it is their line in CONFIG.md): {undescribed}"


def test_the_types_are_readable():
    rows = {(heading, key): (kind, default) for heading in _expected_tables() for key, kind, default in _rows(heading)}
    assert rows[("[[routes]]", "max_batch")] == ("integer in [1, 4096]", "`32`")
    assert rows[("[[routes]]", "overflow")] == ("one of: drop_oldest, reject, latest_only", '`"drop_oldest"`')
    assert rows[("[[routes]]", "reply_to")] == ("list of strings", "`[]`")
    assert rows[("[[routes]]", "model")] == ("string", "required")
    assert rows[("[[routes]]", "deadline_ms")] == ("float in (0, 3600000]", "not set")
    assert rows[("[[routes]]", "qos")] == ("integer: 0 or 1", "`0`")
    assert rows[("[broker]", "protocol")] == ('one of: "5", "3.1.1"', '`"5"`')
    assert rows[("[broker]", "keepalive_s")] == ("integer in [5, 3600]", "`30`")
    assert rows[("[routes.tracker]", "match_iou")] == ("float in (0, 1]", "`0.3`")
    assert rows[("[[routes.zones]]", "points")] == ("list of [float, float], 3–64 items", "required")
    assert rows[("[[routes.zones]]", "labels")] == ("list of strings, at least 1 item", "not set")


def _rows(heading: str) -> list[tuple[str, str, str]]:
    text = CONFIG_MD.read_text(encoding="utf-8")
    section = text.split(f"## `{heading}`\n", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        cells = re.split(r"(?<!\\)\|", line)
        if len(cells) == 6 and cells[1].strip().startswith("`"):
            out.append((cells[1].strip().strip("`"), cells[2].strip(), cells[3].strip()))
    return out


def test_the_defaults_are_the_models_defaults():
    """Each default CONFIG.md shows, read back as TOML, is what the model gives when the key is left out."""
    for heading, model in _expected_tables().items():
        for key, _, default in _rows(heading):
            if default.startswith("`"):
                value = tomllib.loads(f"v = {default.strip('`')}")["v"]
                actual = model.model_fields[key].get_default(call_default_factory=True)
                assert value == (str(actual) if isinstance(actual, Path) else actual), (heading, key)


def test_the_tool_checks_and_writes(tmp_path):
    out = tmp_path / "CONFIG.md"
    assert tool.main(["--check", "--output", str(out)]) == 1  # missing: out of date
    assert tool.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == tool.render()
    assert tool.main(["--check", "--output", str(out)]) == 0


GOOD = '[[models]]\nname = "m"\nbundle = "b"\n\n[[routes]]\nsubscribe = "a/+"\nmodel = "m"\npublish = "r/{1}"\n'


@pytest.mark.parametrize(
    "extra,key,words",
    [
        ("qoss = 1", "routes[0].qoss", "did you mean qos? (CONFIG.md lists the keys [[routes]] takes)"),
        ("[routes.tracker]\nhigh = 0.5", "routes[0].tracker.high", "did you mean high_score?"),
        ('[routes.capture]\ndir = "d"\nfraction = 0.1\nmax_MB = 1', "routes[0].capture.max_MB", "max_mb?"),
        (
            'track = true\n[[routes.zones]]\nname = "z"\npoints = [[0, 0], [1, 0], [1, 1]]\nunit = "pixels"',
            "routes[0].zones[0].unit",
            "did you mean units? (CONFIG.md lists the keys [[routes.zones]] takes)",
        ),
        ("[metrics]\nfoo = 1", "metrics.foo", "[metrics] takes interval_s, topic, prometheus_port, prometheus_host"),
        ("zzz = 1", "routes[0].zzz", "unknown key (check the spelling; CONFIG.md lists the keys [[routes]] takes)"),
        ("[brokr]\nurl = 1", "brokr", "did you mean broker?"),
    ],
)
def test_an_unknown_key_points_to_config_md(extra, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD + extra, path="edge.toml")
    assert info.value.key == key
    assert str(info.value).startswith("edge.toml:") and "unknown key" in str(info.value)
    assert words in str(info.value)
    assert "README" not in str(info.value)


def test_a_password_key_is_pointed_to_password_env():
    with pytest.raises(ConfigError, match="did you mean password_env"):
        parse_config('[broker]\npassword = "x"\n' + GOOD)
