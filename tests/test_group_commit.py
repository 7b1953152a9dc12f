"""Group commit: concurrent webhooks share one transaction, and each still gets its own exact
answer only once its event is durable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.bootstrap import Engine
from adapters.stripe.envelope import parse_event
from adapters.usecases.ingest import Outcome, Webhook
from domain.aggregates import Buyer, buyer_id
from tests.conftest import make_event


def webhook(n: int, customer: str) -> Webhook:
    raw = make_event("customer.updated", {"id": customer, "object": "customer"}, id=f"evt_g{n}")
    envelope, _ = parse_event(raw)
    return Webhook("demo", envelope, raw)


def record_all(engine: Engine, webhooks: list[Webhook]) -> list[Any]:
    async def run() -> list[Any]:
        tasks = [engine.writer.record(w) for w in webhooks]
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(run())


def spy_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = engine.ingestor.record_many

    def spy(webhooks: list[Webhook]) -> list[Any]:
        sizes.append(len(webhooks))
        return real(webhooks)

    monkeypatch.setattr(engine.ingestor, "record_many", spy)
    return sizes


def stripe_event_ids(engine: Engine, customer: str) -> list[str]:
    history = engine.log.history(buyer_id("demo", customer))
    return [e.stripe_event_id for e in history if isinstance(e, Buyer.StripeEventRecorded)]


def test_concurrent_webhooks_share_commits_and_each_lands_once(engine, monkeypatch) -> None:
    sizes = spy_batches(engine, monkeypatch)
    hooks = [webhook(n, f"cus_{n % 3}") for n in range(60)]
    outcomes = record_all(engine, [*hooks, *hooks[:10]])  # ten delivered twice, at once
    assert outcomes.count(Outcome.RECORDED) == 60
    assert outcomes.count(Outcome.DUPLICATE) == 10
    assert max(sizes) > 1  # requests that arrived together were committed together
    for c in range(3):
        ids = stripe_event_ids(engine, f"cus_{c}")
        assert sorted(ids) == sorted(f"evt_g{n}" for n in range(60) if n % 3 == c)
        versions = [e.originator_version for e in engine.log.history(buyer_id("demo", f"cus_{c}"))]
        assert versions == list(range(1, len(versions) + 1))


def test_a_batch_meeting_an_already_recorded_event_sorts_out_each_outcome(engine) -> None:
    first = [webhook(n, "cus_x") for n in range(5)]
    assert record_all(engine, first) == [Outcome.RECORDED] * 5
    mixed = [webhook(n, "cus_x") for n in range(3, 9)]  # 3 and 4 were recorded before
    outcomes = record_all(engine, mixed)
    assert outcomes == [Outcome.DUPLICATE] * 2 + [Outcome.RECORDED] * 4
    assert sorted(stripe_event_ids(engine, "cus_x")) == sorted(f"evt_g{n}" for n in range(9))


def test_a_storage_failure_fails_every_webhook_of_the_batch(engine, monkeypatch) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(engine.log, "save", broken)
    outcomes = record_all(engine, [webhook(n, f"cus_{n}") for n in range(20)])
    assert all(isinstance(o, OSError) for o in outcomes)
    assert engine.log.recorder.max_notification_id() in (None, 0)
