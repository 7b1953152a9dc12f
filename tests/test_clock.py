"""How long a derived answer holds: `Instant` (domain/clock.py) and `derive`.

The permission answer cache serves an answer until `next_change`; these tests are its warrant:
for any lifecycle, any policy and any instant, the rules give the same result at every instant
before `next_change` (and forever after, when it is None).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.stripe.facts import facts_from_event
from domain.catalogue import Catalogue
from domain.clock import Instant
from domain.policy import AppPolicy
from domain.rules import derive
from tests.lifecycles import CATALOGUE, DAY, T0, lifecycles


def test_an_instant_is_an_int_that_notes_the_nearest_instant_a_comparison_would_flip():
    at = Instant(100)
    assert int(at) == 100 and isinstance(at, int) and at.next_change is None
    assert 90 <= at  # noqa: SIM300 (`at` on the right: Python still asks the Instant)
    assert at.next_change is None
    assert at < 150  # false from 150 on
    assert at.next_change == 150
    assert not (at >= 120)  # true from 120 on
    assert at.next_change == 120
    assert at <= 110  # false from 111 on
    assert at.next_change == 111
    assert 100 >= at  # noqa: SIM300 (the same, and the flip is noted)
    assert at.next_change == 101


def test_comparisons_with_what_is_not_a_number_are_left_to_python():
    at = Instant(100)
    assert at != "100"
    assert at.next_change is None


POLICIES = st.builds(
    AppPolicy,
    grace_period=st.sampled_from([0, 3 * DAY, 7 * DAY]),
    renewal_leeway=st.sampled_from([0, DAY]),
    refund_policy=st.sampled_from(["full", "any", "never"]),
    pause_enabled=st.booleans(),
)


def instants_in(value) -> set[int]:
    """Every epoch-seconds value in a fact (its fields, nested)."""
    if isinstance(value, bool):
        return set()
    if isinstance(value, int):
        return {value} if value > 1_000_000_000 else set()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return {i for item in value for i in instants_in(item)}
    return set()


@settings(max_examples=300, deadline=None)
@given(bodies=lifecycles(max_customers=2), policy=POLICIES, data=st.data())
def test_a_derivation_holds_until_its_next_change(bodies, policy, data):
    facts = [fact for body in bodies for fact in facts_from_event(json.loads(body))]
    catalogue = Catalogue.from_json(CATALOGUE)
    # Probe near where answers change: the facts' instants, plus the policy's and a pass's spans.
    spans = (0, policy.grace_period, policy.renewal_leeway, 30 * DAY)
    instants = {t for fact in facts for t in instants_in(fact.to_dict())}
    near = sorted({t + span for t in instants for span in spans})
    anchor = data.draw(st.sampled_from(near) | st.integers(T0 - DAY, T0 + 120 * DAY))
    at = anchor + data.draw(st.sampled_from([-1, 0, 1]))
    instant = Instant(at)
    answer = derive(facts, catalogue, policy, instant)
    end = instant.next_change
    assert end is None or end > at
    last = end - 1 if end is not None else at + 400 * DAY
    probe = data.draw(st.integers(at, last))
    for later in (at, min(at + 1, last), probe, last):
        assert derive(facts, catalogue, policy, later) == answer, (at, later, end)
