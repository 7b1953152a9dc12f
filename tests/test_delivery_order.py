"""Stripe delivers at least once and in no particular order: whatever the order, whatever the
duplicates, the engine ends with the same entitlements (through ingestion, projection, query)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bootstrap import Engine
from tests.conftest import fresh_engine, ingest, settle
from tests.lifecycles import CATALOGUE, DAY, T0, customids, lifecycles

INSTANTS = [T0 + d * DAY for d in (1, 4, 12, 20, 33, 36, 70)]


def answers(engine: Engine, people: list[str]) -> dict:
    settle(engine)
    return {
        (customid, at): engine.entitlements.permissions("demo", customid, at)
        for customid in people
        for at in INSTANTS
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_order_and_any_duplication_give_the_same_permissions(backend, data) -> None:
    bodies = data.draw(lifecycles())
    shuffled = data.draw(st.permutations(bodies))
    duplicates = data.draw(st.lists(st.sampled_from(bodies), max_size=6))
    with fresh_engine(backend, CATALOGUE) as in_order, fresh_engine(backend, CATALOGUE) as mixed:
        ingest(in_order, bodies)
        ingest(mixed, [*shuffled[:2], *duplicates, *shuffled[2:], *duplicates])
        people = customids(bodies)
        assert answers(mixed, people) == answers(in_order, people)
