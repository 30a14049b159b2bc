"""Tests of segmentation.resolve: driver-opt, label, default, quarantine."""

import pytest

from segmentation.options import NetworkOptions
from segmentation.resolve import decide_segment

DEFAULTS = NetworkOptions()
COMPOSE = NetworkOptions(segment_label="com.docker.compose.service", default_segment="misc")


def test_label_names_the_segment():
    assert decide_segment(DEFAULTS, None, {"secnet.segment": "web", "x": "y"}) == ("web", None)


@pytest.mark.parametrize("labels", [{}, None, {"other": "web"}, {"com.docker.compose.service": "api"}])
def test_unlabelled_is_in_the_default_segment(labels):
    assert decide_segment(DEFAULTS, None, labels) == ("default", None)


def test_the_network_chooses_the_label_key_and_default():
    labels = {"com.docker.compose.service": "api", "secnet.segment": "web"}
    assert decide_segment(COMPOSE, None, labels) == ("api", None)
    assert decide_segment(COMPOSE, None, {"secnet.segment": "web"}) == ("misc", None)


def test_driver_opt_wins_over_the_label():
    assert decide_segment(DEFAULTS, "api", {"secnet.segment": "web"}) == ("api", None)
    assert decide_segment(DEFAULTS, "api", {"secnet.segment": ""}) == ("api", None)
    assert decide_segment(COMPOSE, "api", {}) == ("api", None)


def test_empty_label_quarantines():
    assert decide_segment(DEFAULTS, None, {"secnet.segment": ""}) == (
        None, "label secnet.segment='' is not a valid segment name: a segment name must not be empty")


@pytest.mark.parametrize("value, why", [
    ("-web", "a segment name is 1-63 letters"),
    ("a" * 64, "a segment name is 1-63 letters"),
    ("web api", "a segment name is 1-63 letters"),
    ("10.0.0.1", "it is an IP address"),
    ("10.0.0.300", "looks like an IPv4 address"),
    ("127.1", "it is the IPv4 address 127.0.0.1 in short form"),   # U11-F2
])
def test_bad_label_value_quarantines_with_a_reason(value, why):
    segment, reason = decide_segment(DEFAULTS, None, {"secnet.segment": value})
    assert segment is None
    assert reason.startswith(f"label secnet.segment='{value}' is not a valid segment name: ")
    assert why in reason


def test_reason_stays_one_line():
    _, reason = decide_segment(COMPOSE, None, {"com.docker.compose.service": "a\nb"})
    assert "\n" not in reason
    assert reason.startswith("label com.docker.compose.service='a\\nb' is not a valid")


def test_invalid_driver_opt_quarantines_rather_than_passes():
    # The driver refuses a bad driver-opt at CreateEndpoint; a stored one that
    # slipped through must still never become a segment.
    segment, reason = decide_segment(DEFAULTS, "", {"secnet.segment": "web"})
    assert segment is None
    assert reason.startswith("driver-opt secnet.segment='' is not a valid segment name")


def test_non_string_label_value_quarantines():
    segment, reason = decide_segment(DEFAULTS, None, {"secnet.segment": 5})
    assert segment is None and "must be a string" in reason
