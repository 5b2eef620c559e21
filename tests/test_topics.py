import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.topics import TopicFilter, TopicTemplate, capture_patterns, template_pattern


@pytest.mark.parametrize(
    "flt,topic,captures",
    [
        ("sensors/+/vibration", "sensors/d1/vibration", ["d1"]),
        ("sensors/+/vibration", "sensors/d1/temperature", None),
        ("sensors/+/vibration", "sensors/d1/vibration/x", None),
        ("sensors/#", "sensors/a/b", ["a/b"]),
        ("sensors/#", "sensors", [""]),
        ("+/+", "a/b", ["a", "b"]),
        ("#", "$SYS/broker", None),
        ("$share/g/sensors/+", "sensors/x", ["x"]),
        ("a/b", "a/b", []),
    ],
)
def test_filter_matches_like_a_broker(flt, topic, captures):
    assert TopicFilter(flt).match(topic) == captures


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "$share/g", "$share//a", "$share/g+/a"])
def test_bad_filters_are_refused(bad):
    with pytest.raises(ValueError):
        TopicFilter(bad)


def test_template_fills_wildcards_and_topic():
    t = TopicTemplate("results/{1}/{2}/from/{topic}", wildcards=2)
    assert t.render(["a", "b"], "in/a/b") == "results/a/b/from/in/a/b"
    assert TopicTemplate("plain/topic", wildcards=0).render([], "x") == "plain/topic"


@pytest.mark.parametrize("bad", ["r/{3}", "r/{0}", "r/{name}", "r/+", "r/#", "r/{1:>3}"])
def test_bad_templates_are_refused(bad):
    with pytest.raises(ValueError):
        TopicTemplate(bad, wildcards=2)


@pytest.mark.parametrize(
    "a,b,overlap",
    [
        ("a/+", "a/#", True),
        ("a/+", "a/b", True),
        ("a/#", "a", True),  # '#' matches its parent level too
        ("#", "a", True),
        ("$share/g/a/+", "a/x", True),
        ("a/+", "b/+", False),
        ("a", "a/+", False),
        ("a/+/c", "a/b/d", False),
        ("#", "$SYS/x", False),  # a leading wildcard never matches a $ topic
        ("+/x", "$SYS/x", False),
    ],
)
def test_filters_overlap_when_some_topic_matches_both(a, b, overlap):
    assert TopicFilter(a).overlaps(TopicFilter(b)) is overlap
    assert TopicFilter(b).overlaps(TopicFilter(a)) is overlap


# --- what a template can render, against a filter ---------------------------------------------------------------
def _may(template: str, inputs: str, target: str) -> bool:
    return TopicFilter(target).may_match(template_pattern(template, capture_patterns(TopicFilter(inputs))))


@pytest.mark.parametrize(
    "template,inputs,target,can",
    [
        ("results/{1}", "sensors/+", "results/#", True),  # a placeholder is a wildcard
        ("results/{1}", "sensors/+", "results/+", True),
        ("results/{1}", "sensors/+", "results/+/x", False),  # {1} from + is one level
        ("results/{1}", "sensors/#", "results/+/x", True),  # {1} from # may be several
        ("results/{1}-out", "sensors/+", "results/in", False),  # text around a placeholder still counts
        ("results/{1}-out", "sensors/+", "results/+", True),
        ("{topic}/out", "sensors/#", "sensors/+/out", True),  # {topic} is any topic the filter matches
        ("{topic}/out", "sensors/#", "sensors", False),
        ("{topic}", "sensors/#", "sensors", True),  # sensors/# matches sensors itself
        ("{topic}/error", "a/+/b", "a/+/b", False),
        ("{1}/x", "a/+", "+/x", True),
        ("$x/y", "a/+", "+/y", False),  # a leading wildcard never matches a $ topic
        ("a/b", "a/+", "#", True),
        ("res/{1}", "a/+", "resx/#", False),
        ("a", "z/+", "a/#", True),
        ("ab", "z/+", "a/#", False),
        ("out/{1}/error", "out/+/error", "out/+/error", True),
    ],
)
def test_a_template_can_render_into_a_filter(template, inputs, target, can):
    assert _may(template, inputs, target) is can


_level = st.text(alphabet="ab/", max_size=3)
_filters = st.lists(st.sampled_from(["a", "b", "ab", "+"]), min_size=1, max_size=3).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join(levels) + "/#", "#"])
)
_templates = st.lists(st.sampled_from(["a", "b", "/", "{1}", "{topic}", "x"]), min_size=1, max_size=5).map("".join)


@settings(max_examples=400, deadline=None)
@given(inputs=_filters, target=_filters, template=_templates, topic_levels=st.lists(_level, min_size=1, max_size=4))
def test_no_rendered_topic_matches_a_filter_the_check_says_it_cannot(inputs, target, template, topic_levels):
    """Any real input the route takes, rendered, and matched by the target: the check must have said so."""
    source = TopicFilter(inputs)
    if "{1}" in template and source.wildcards == 0:
        return
    topic = "/".join(topic_levels)
    captures = source.match(topic)
    if captures is None:
        return
    rendered = TopicTemplate(template, wildcards=source.wildcards).render(captures, topic)
    if TopicFilter(target).match(rendered) is not None:
        assert _may(template, inputs, target), (template, inputs, target, topic, rendered)
