import subprocess
import sys

import pytest

from edge_runtime.config import load_config, parse_config
from edge_runtime.errors import ConfigError

GOOD = """\
[broker]
url = "mqtt://127.0.0.1:1883"
client_id = "edge-1"

[[models]]
name = "vibration"
bundle = "bundles/vibration"

[[routes]]
subscribe = "sensors/+/vibration"
model = "vibration"
publish = "results/{1}/vibration"
errors = "errors/{1}"
max_batch = 32
max_delay_ms = 2
qos = 1
"""


def test_the_readme_example_is_valid(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    config = load_config(path)
    route = config.routes[0]
    assert (route.max_batch, route.max_delay_ms, route.qos) == (32, 2.0, 1)
    assert config.models[0].bundle == tmp_path / "bundles" / "vibration"  # relative to the config file
    assert config.broker.port == 1883


@pytest.mark.parametrize(
    "old,new,key,line,words",
    [
        ("max_batch = 32", "max_batch = 0", "routes[0].max_batch", 14, "greater than or equal to 1"),
        ("max_batch = 32", 'max_batch = "32"', "routes[0].max_batch", 14, "integer"),
        ("qos = 1", "qoss = 1", "routes[0].qoss", 16, "unknown key"),
        ("qos = 1", "qos = 3", "routes[0].qos", 16, "qos is 0 or 1"),
        ("qos = 1", "qos = 2", "routes[0].qos", 16, "qos 2 is not supported: use qos = 1"),
        ("qos = 1", 'qos = 1\nreply_to = ["a/+b"]', "routes[0].reply_to", 17, "whole level"),
        ('"sensors/+/vibration"', '"sensors/x+/vibration"', "routes[0].subscribe", 10, "whole level"),
        ('"sensors/+/vibration"', '"sensors/#/vibration"', "routes[0].subscribe", 10, "last one"),
        ('"results/{1}/vibration"', '"results/{2}/vibration"', "routes[0].publish", 12, "only 1"),
        ('"errors/{1}"', '"errors/{x}"', "routes[0].errors", 13, "unknown placeholder"),
        ('model = "vibration"', 'model = "nope"', "routes[0].model", 11, "no model named"),
        ('"mqtt://127.0.0.1:1883"', '"http://127.0.0.1"', "broker.url", 2, "mqtt://"),
        ('client_id = "edge-1"', 'client_id = "edge-1"\npassword = "secret"', "broker.password", 4, "unknown key"),
    ],
)
def test_bad_config_names_key_and_line(old, new, key, line, words):
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace(old, new, 1), path="edge.toml")
    err = info.value
    assert err.key == key and err.line == line, str(err)
    assert words in str(err)
    assert str(err).startswith(f"edge.toml:{line}: {key}: ")


def test_toml_syntax_error_has_a_line():
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace("[broker]", "[broker"), path="edge.toml")
    assert info.value.line == 1 and "not valid TOML" in str(info.value)


def test_validate_config_cli_prints_one_line(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD.replace("max_batch = 32", "max_batch = -1"))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(path), "--validate-config"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"{path}:14: routes[0].max_batch" in proc.stderr


def test_validate_config_checks_the_bundle(tmp_path, vibration_bundle):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD.replace('"bundles/vibration"', f'"{vibration_bundle}"'))
    ok = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(path), "--validate-config"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "ok" in ok.stdout
    path.write_text(GOOD)  # bundles/vibration does not exist next to this config
    bad = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(path), "--validate-config"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no such directory" in bad.stderr


# --- answers that would come back as inputs ---------------------------------------------------------------------
ROUTE = '\n[[routes]]\nmodel = "vibration"\n'


@pytest.mark.parametrize(
    "route,extra,key,words",
    [
        # the route's own filter: each answer is an input again
        ({"subscribe": "results/#", "publish": "results/{1}"}, "", "routes[0].publish", "the route's own filter"),
        # the default error topic (publish + /error) inside the filter: each error answers itself
        (
            {"subscribe": "out/+/error", "publish": "out/{1}"},
            "",
            "routes[0].errors",
            "default error topic 'out/{1}/error'",
        ),
        ({"subscribe": "a/+", "publish": "r/{1}", "errors": "a/{1}"}, "", "routes[0].errors", "own filter"),
        # another route's filter, a placeholder read as a wildcard
        (
            {"subscribe": "in/+", "publish": "mid/{1}"},
            'subscribe = "mid/+"\npublish = "x/{1}"',
            "routes[0].publish",
            "routes[1].subscribe 'mid/+'",
        ),
        (
            {"subscribe": "in/+", "publish": "r/{1}", "snapshot": "snap/{1}"},
            'subscribe = "snap/#"\npublish = "x/{1}"',
            "routes[0].snapshot",
            "routes[1]",
        ),
        # {topic} is any topic of the route's filter
        ({"subscribe": "in/#", "publish": "{topic}/result"}, "", "routes[0].publish", "own filter"),
        # tracking events of a camera route, into a route that reads events
        (
            {"subscribe": "cameras/+/frames", "publish": "det/{1}", "track": True},
            'subscribe = "events/+"\npublish = "x/{1}"',
            "routes[0].events",
            "'events/{1}'",
        ),
        # a source's name is known: {1} is that name
        (
            {"source": "rtsp://127.0.0.1:9/x", "source_name": "door", "publish": "cams/{1}"},
            'subscribe = "cams/door"\npublish = "x"',
            "routes[0].publish",
            "routes[1].subscribe 'cams/door'",
        ),
    ],
)
def test_a_topic_a_route_publishes_on_may_not_match_a_routes_filter(route, extra, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(_routes(route, extra), path="edge.toml")
    err = info.value
    assert err.key == key and words in str(err), str(err)
    assert "in a loop; choose a topic outside every route's filter" in str(err)
    assert str(err).count("\n") == 0


@pytest.mark.parametrize(
    "route,extra",
    [
        ({"subscribe": "results/+/in", "publish": "results/{1}/out"}, ""),
        ({"subscribe": "in/+", "publish": "r/{1}-x"}, 'subscribe = "r/y"\npublish = "z"'),
        (
            {"source": "rtsp://127.0.0.1:9/x", "source_name": "door", "publish": "cams/{1}"},
            'subscribe = "cams/gate"\npublish = "x"',
        ),
    ],
)
def test_topics_that_cannot_come_back_are_accepted(route, extra):
    parse_config(_routes(route, extra))


def _routes(route: dict, extra: str) -> str:
    """GOOD's broker and model with this route (and a second one when ``extra`` is given)."""
    lines = "\n".join(f"{k} = {str(v).lower()}" if isinstance(v, bool) else f"{k} = {v!r}" for k, v in route.items())
    head = GOOD.partition("[[routes]]")[0]
    return head + ROUTE + lines.replace("'", '"') + "\n" + (ROUTE + extra + "\n" if extra else "")


def test_a_leading_placeholder_is_warned_about_at_load_and_by_validate_config(tmp_path, vibration_bundle, caplog):
    text = GOOD.replace('"results/{1}/vibration"', '"{1}/vibration"').replace(
        '"bundles/vibration"', f'"{vibration_bundle}"'
    )
    with caplog.at_level("WARNING", logger="edge_runtime.config"):
        parse_config(text, path="edge.toml")
    (record,) = caplog.records
    assert record.getMessage().startswith("edge.toml:12: routes[0].publish: '{1}/vibration' starts with {1}")
    assert "'results/{1}/vibration'" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge_runtime.config"):
        parse_config(GOOD.replace('"results/{1}/vibration"', '"{topic}/out"'))  # starts with the filter's 'sensors'
    assert not caplog.records
    path = tmp_path / "edge.toml"
    path.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(path), "--validate-config"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "1 warning above" in run.stdout
    assert "routes[0].publish: '{1}/vibration' starts with {1}" in run.stderr
