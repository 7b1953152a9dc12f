"""Webhooks and observations of the same objects (import, reconcile) arrive in any order, some
more than once: whatever the order and the duplicates, the engine ends with the same
entitlements (through recording, projection, query). An observation shows the object as it was
at the instant it was read: as its latest event had left it, read then or a little later, never
past the object's next change.

Recorded as `reconcile --fix` records them (every one), the answers are equal in every field.
Recorded as `import` does (an object whose last observation on the history is the same is not
recorded again), which of two equal observations gets recorded depends on the order: the codes,
rules and dates are equal, and the explanation names whichever was recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bootstrap import Engine
from adapters.importing import IMPORT, Observer
from adapters.stripe.listing import Listed
from adapters.stripe.observations import OBSERVED_AS
from domain.rules import PermissionStatus
from tests.conftest import fresh_engine, ingest
from tests.lifecycles import CATALOGUE, customids, lifecycles
from tests.test_delivery_order import answers

Observation = tuple[dict[str, Any], float]  # the object, when it was read


def observable(bodies: list[str]) -> list[tuple[dict[str, Any], int, int | None]]:
    """Each state an event left an object in: (object, from, until its next change or None)."""
    states: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for body in bodies:
        envelope = json.loads(body)
        obj = envelope["data"]["object"]
        if obj.get("object") in OBSERVED_AS and isinstance(obj.get("id"), str):
            states.setdefault(obj["id"], []).append((envelope["created"], obj))
    found = []
    for snapshots in states.values():
        snapshots.sort(key=lambda pair: pair[0])
        for i, (created, obj) in enumerate(snapshots):
            after = [c for c, _ in snapshots[i + 1 :] if c >= created]
            found.append((obj, created, after[0] if after else None))
    return found


@st.composite
def observations(draw: st.DrawFn, bodies: list[str]) -> list[Observation]:
    states = [s for s in observable(bodies) if s[2] is None or s[2] > s[1]]
    chosen = draw(st.lists(st.sampled_from(states), max_size=6)) if states else []
    read = []
    for obj, start, until in chosen:
        latest = start + 86400 if until is None else until - 1
        read.append((obj, draw(st.sampled_from([start, start + 0.5, latest + 0.25]))))
    return read


def record(engine: Engine, steps: list[str | Observation], every: bool) -> None:
    """Each step a webhook or an observation; each observation by a run of its own (an
    observer reads the history afresh and, unless `every`, passes over what it observed last
    unchanged)."""
    for step in steps:
        if isinstance(step, str):
            ingest(engine, [step])
            continue
        obj, observed_at = step
        observer = Observer(engine.log, "demo", IMPORT, clock=lambda at=observed_at: at)
        observer.observe(Listed(obj, json.dumps(obj)), force=every)


def unexplained(found: dict[Any, tuple[PermissionStatus, ...]]) -> dict[Any, Any]:
    """The answers without the event ids they rest on."""
    return {
        key: [(replace(p, event_ids=(), accountable_skus=tuple(
            replace(g, event_ids=()) for g in p.accountable_skus))) for p in permissions]
        for key, permissions in found.items()
    }  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_order_of_webhooks_and_observations_gives_the_same_permissions(backend, data):
    bodies = data.draw(lifecycles())
    observed = data.draw(observations(bodies))
    steps: list[str | Observation] = [*bodies, *observed]
    shuffled = data.draw(st.permutations(steps))
    again = data.draw(st.lists(st.sampled_from(steps), max_size=6))
    every = data.draw(st.booleans())
    with fresh_engine(backend, CATALOGUE) as in_order, fresh_engine(backend, CATALOGUE) as mixed:
        record(in_order, steps, every)
        record(mixed, [*shuffled[:3], *again, *shuffled[3:], *again], every)
        people = customids(bodies)
        ours, theirs = answers(mixed, people), answers(in_order, people)
        if every:
            assert ours == theirs
        else:
            assert unexplained(ours) == unexplained(theirs)
