"""What is announced when an answer changes (domain/announcements.py, pure), how endpoints are
configured, and the publisher's crash-safety: a change appended to the event log but not yet
marked is appended again without a duplicate (its version collides)."""

from __future__ import annotations

import pytest

from adapters.config import ConfigError, settings_from_dict
from domain.announcements import (
    ChangeLog,
    change_id,
    change_log_id,
    changes,
    glassfy_event_type,
)
from tests.conftest import config_doc


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ((-9, None), (5, 100), 5001),  # a first subscription
        ((-5, 50), (5, 100), 5002),  # restarted
        ((5, 100), (5, 200), 5003),  # renewed
        ((5, 100), (-5, 100), 5004),  # expired
        ((5, 100), (0, 100), 5004),  # no renewal heard of past the leeway
        ((5, 100), (4, 100), 5005),  # auto-renew turned off
        ((4, 100), (5, 100), 5005),  # and on again
        ((5, 100), (1, 300), 5006),  # grace
        ((1, 300), (-1, 300), 5006),  # billing retry after the grace
        ((5, 100), (-6, 100), 5007),  # upgraded
        ((-9, None), (3, None), 5008),  # a one-time purchase
        ((3, None), (-8, None), 5009),  # refunded
        ((5, 100), (-10, 100), 5010),  # paused
        ((-10, 100), (5, 200), 5011),  # resumed
        ((-5, 100), (-8, 100), 5009),  # an ended one refunded
        ((-9, None), (-5, 100), None),  # never valid: nothing Glassfy names
        ((-5, 100), (-5, 200), None),
        ((5, 100), (3, None), None),
    ],
)
def test_each_change_gets_the_glassfy_event_type_that_fits(before, after, expected):
    assert glassfy_event_type(before, after) == expected


def test_changes_list_each_permission_whose_code_or_expire_date_moved():
    old = {"premium": (5, 100), "course": (3, None), "gone": (4, 10)}
    new = {"premium": (5, 100), "course": (3, 200), "added": (5, 50)}
    assert [c["permissionId"] for c in changes(old, new)] == ["added", "course", "gone"]
    assert changes(old, old) == []
    [gone] = [c for c in changes(old, new) if c["permissionId"] == "gone"]
    assert gone["to"] == {"entitlement": -9, "expireDate": None}  # unlisted: never bought


def test_a_change_has_the_same_identity_whoever_computes_it():
    assert change_id("a", "u1", 3) == change_id("a", "u1", 3)
    assert len({change_id("a", "u1", 3), change_id("a", "u1", 4), change_id("b", "u1", 3)}) == 3
    event = ChangeLog.changed("a", "u1", 3, "{}")
    assert (event.originator_id, event.originator_version) == (change_log_id("a", "u1"), 3)


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ("https://x", "must be an array of tables"),
        ([{"url": "ftp://x", "secret": "s"}], r"endpoints\[0\]\.url"),
        ([{"url": "https://x"}], r"endpoints\[0\]\.secret"),
        ([{"url": "https://x", "secret": ""}], r"endpoints\[0\]\.secret"),
        ([{"url": "https://x", "secret": "a"}, {"url": "https://x", "secret": "b"}], "once"),
    ],
)
def test_bad_endpoints_are_refused_naming_the_key(endpoints, message):
    doc = config_doc("sqlite:///:memory:")
    doc["apps"]["demo"]["endpoints"] = endpoints
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(doc, env={})


def test_an_endpoint_secret_may_come_from_the_environment():
    doc = config_doc("sqlite:///:memory:")
    doc["apps"]["demo"]["endpoints"] = [{"url": "https://x", "secret": "env:OUT_SECRET"}]
    settings = settings_from_dict(doc, env={"OUT_SECRET": "whsec_from_env"})
    [endpoint] = settings.apps["demo"].endpoints
    assert endpoint.secret == "whsec_from_env"
    assert "whsec" not in repr(endpoint)
