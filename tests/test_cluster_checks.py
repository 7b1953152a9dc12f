"""The cluster's outbound checks (scripts/clusterlib/checks.py) on made-up records: they fail
when a change on the change log never reaches the receiver, when a time-driven change is not
recorded exactly once or not delivered, when deliveries come out of order, and when a change
comes twice with no fault to explain it."""

from __future__ import annotations

import sys
from typing import Any

from tests.conftest import PROJECT

sys.path.insert(0, str(PROJECT / "scripts"))
from clusterlib import checks

SETTLED = {"settled": True, "waited_s": 0.5}
TIMED = [["t1", "pass", 1000, -5]]


def change(customid: str, sequence: int, cause: str = "stripe_event", to: int = 5) -> dict:
    return {
        "id": f"pc_{customid}_{sequence}",
        "app": "demo",
        "customid": customid,
        "sequence": sequence,
        "cause": cause,
        "to": [to],
        "sha256": f"digest-{customid}-{sequence}",
    }


def post(c: dict[str, Any], t: float, verified: bool = True) -> dict[str, Any]:
    return {**{k: c[k] for k in ("id", "customid", "sequence", "cause", "to", "sha256")},
            "t": t, "verified": verified}  # fmt: skip


LOG = [change("u1", 1), change("u1", 2), change("t1", 1, to=3), change("t1", 2, "time", -5)]


def verdict(changes, got, faulted=False, timed=TIMED) -> tuple[dict, list[str]]:
    figures = checks.outbound_figures(changes, got, timed, {"delivered": len(changes)})
    return figures, checks.outbound_failures(figures, SETTLED, faulted)


def test_every_change_delivered_once_in_order_passes():
    figures, failures = verdict(LOG, [post(c, 1000 + i) for i, c in enumerate(LOG)])
    assert failures == []
    assert (figures["lost"], figures["duplicates"], figures["received_once_or_more"]) == ([], 0, 4)
    timed = figures["timed"]
    assert (timed["expected"], timed["recorded_once"], timed["delivered"]) == (1, 1, 1)
    assert timed["customers"][0]["delivered_after_s"] == 3


def test_a_change_never_delivered_fails():
    figures, failures = verdict(LOG, [post(c, 1000) for c in LOG[:3]])
    assert figures["lost"] == ["pc_t1_2"]
    assert any("never delivered" in f for f in failures)
    assert any("time-driven" in f for f in failures)  # and its time change is not delivered


def test_a_time_driven_change_recorded_twice_or_never_fails():
    twice = [*LOG, change("t1", 3, "time", -5)]
    figures, failures = verdict(twice, [post(c, 1000 + i) for i, c in enumerate(twice)])
    assert figures["timed"]["recorded_twice_or_more"] == 1 and failures
    never = LOG[:3]
    figures, failures = verdict(never, [post(c, 1000 + i) for i, c in enumerate(never)])
    assert figures["timed"]["not_recorded"] == 1 and failures


def test_duplicates_pass_only_across_a_fault_and_order_counts_first_arrivals():
    got = [post(LOG[0], 1), post(LOG[0], 2), post(LOG[1], 3), post(LOG[2], 4), post(LOG[3], 5)]
    figures, failures = verdict(LOG, got, faulted=True)
    assert (figures["duplicates"], failures) == (1, [])
    assert verdict(LOG, got, faulted=False)[1] == ["1 outbound duplicates with no fault"]
    swapped = [post(LOG[1], 1), post(LOG[0], 2), post(LOG[2], 3), post(LOG[3], 4)]
    figures, failures = verdict(LOG, swapped)
    assert figures["out_of_order"] == ["u1"] and failures


def test_a_bad_signature_or_a_body_not_as_logged_fails():
    got = [post(c, 1000 + i) for i, c in enumerate(LOG)]
    assert verdict(LOG, [*got, post(LOG[0], 9999, verified=False)])[1]
    got[0] = {**got[0], "sha256": "other"}
    figures, failures = verdict(LOG, got)
    assert figures["bodies_differing"] == ["pc_u1_1"] and failures
