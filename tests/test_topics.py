import pytest

from edge_runtime.topics import TopicFilter, TopicTemplate


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
