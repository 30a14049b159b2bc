"""Malformed request bodies to dockerd's routes (U15-F1, U15-F2): one-line 400s naming what
was wrong. Uses test_app's app fixture."""
from __future__ import annotations

import pytest

from test_app import CHECKED_ROUTES, env, new_id  # noqa: F401 (env: the fixture)


@pytest.mark.parametrize("path", CHECKED_ROUTES)
def test_an_id_of_the_wrong_type_is_named_not_called_missing(env, path):
    # U15-F1: a present but non-string id was reported as "missing field"
    status, body = env.post(path, {"NetworkID": 5, "EndpointID": new_id()})
    assert status == 400 and "invalid NetworkID" in body["Err"] and "int" in body["Err"], body
    assert "missing" not in body["Err"], body


@pytest.mark.parametrize("path", CHECKED_ROUTES)
def test_a_body_nested_too_deeply_is_a_bad_request(env, path):
    # U15-F2: json's C scanner raised RecursionError, answered as a 500 internal error
    status, body = env.post(path, raw="[" * 100_000 + "]" * 100_000)
    assert status == 400 and "nested too deeply" in body["Err"], (status, body)
