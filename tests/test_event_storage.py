"""How events are stored: faster paths that must store exactly what the library would.

- `OrjsonTranscoder` writes the library's JSON format byte for byte, and reads either.
- `PostgresEventRecorder` inserts a batch as binary arrays: same rows, same order of ids.
- `EventLog.last_versions` answers as `last_version` does, for many aggregates at once.
- A receipt's event built directly equals the one its aggregate would emit.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    IntegrityError,
    JSONTranscoder,
    StoredEvent,
    UUIDAsHex,
)

from adapters.storage.eventstore import store_env
from adapters.storage.transcoding import OrjsonTranscoder
from adapters.stripe.envelope import parse_event
from adapters.usecases.ingest import Webhook
from domain.aggregates import Buyer, WebhookReceipt, buyer_id
from projections.store import split_schema
from tests.conftest import fixture_files, make_event


def transcoders() -> tuple[JSONTranscoder, OrjsonTranscoder]:
    library, ours = JSONTranscoder(), OrjsonTranscoder()
    for transcoder in (library, ours):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return library, ours


def test_event_states_are_encoded_byte_for_byte_as_the_library_does(engine):
    library, ours = transcoders()
    for path in fixture_files():
        raw = path.read_text()
        envelope, _ = parse_event(raw)
        webhook = Webhook("demo", envelope, raw)
        for event in engine.ingestor.new_events(webhook, version=1):
            state = {k: v for k, v in vars(event).items() if not k.startswith("originator_")}
            assert ours.encode(state) == library.encode(state), path.name
            assert ours.decode(library.encode(state)) == state


def test_other_states_go_to_the_library_encoder_and_still_read_back():
    library, ours = transcoders()
    state = {"id": uuid.uuid4(), "nested": {"at": datetime(2026, 1, 2, tzinfo=UTC)}, "n": [1]}
    assert ours.encode(state) == library.encode(state)
    assert ours.decode(ours.encode(state)) == state


def test_a_batch_of_events_gets_consecutive_notification_ids_in_order(engine):
    bodies = [make_event("customer.created", {"id": f"cus_order{i}"}) for i in range(5)]
    webhooks = [Webhook("demo", parse_event(raw)[0], raw) for raw in bodies]
    before = engine.log.recorder.max_notification_id() or 0
    engine.ingestor.record_many(webhooks)
    stored = engine.log.recorder.select_notifications(start=before, limit=100)
    recorded = [json.loads(n.state)["stripe_event_id"] for n in stored if b"raw" in n.state]
    assert recorded == [json.loads(raw)["id"] for raw in bodies]
    assert [n.id for n in stored] == list(range(stored[0].id, stored[0].id + len(stored)))
    for notification in stored:  # every state reads back through the library's mapper
        engine.log.mapper.to_domain_event(notification)


def test_a_batch_that_fails_stores_nothing_and_leaves_the_store_usable(engine):
    """On PostgreSQL a batch is inserted and committed in one round trip: a uniqueness failure
    skips the commit, and the transaction is rolled back before the connection is reused."""
    recorder = engine.log.recorder
    aggregate = uuid.uuid4()
    first = [StoredEvent(aggregate, 1, "test.a", b"{}")]
    (first_id,) = recorder.insert_events(first)
    clash = [
        StoredEvent(uuid.uuid4(), 1, "test.b", b"{}"),
        StoredEvent(aggregate, 1, "test.c", b"{}"),
    ]
    for _ in range(3):  # more than once: every pooled connection must come back clean
        with pytest.raises(IntegrityError):
            recorder.insert_events(clash)
    assert recorder.max_notification_id() == first_id
    (second_id,) = recorder.insert_events([StoredEvent(aggregate, 2, "test.d", b"{}")])
    assert second_id > first_id
    assert [e.originator_version for e in recorder.select_events(aggregate)] == [1, 2]


def test_last_versions_of_many_buyers_in_one_query(engine):
    bodies = [make_event("customer.created", {"id": f"cus_v{i}"}) for i in range(3)]
    bodies.append(make_event("customer.updated", {"id": "cus_v0"}))
    keys = []
    for raw in bodies:
        envelope, _ = parse_event(raw)
        engine.ingestor.record(Webhook("demo", envelope, raw))
        keys.append(envelope.buyer_key)
    ids = [buyer_id("demo", key) for key in keys[:3]] + [buyer_id("demo", "cus_none")]
    found = engine.log.last_versions(ids)
    assert found == {bid: engine.log.last_version(bid) for bid in ids[:3]}
    assert found[ids[0]] == Buyer.INITIAL_VERSION + 2  # registered, then two events


def test_a_receipt_event_built_directly_is_the_aggregates_own():
    built = WebhookReceipt.received("demo", "evt_1", "cus_1")
    emitted = WebhookReceipt("demo", "evt_1", "cus_1").collect_events()[0]
    assert type(built) is type(emitted)
    assert {**vars(built), "timestamp": None} == {**vars(emitted), "timestamp": None}


# --- PostgreSQL URLs ---------------------------------------------------------------------------


def test_a_postgresql_url_may_name_a_unix_socket_as_libpq_does():
    """`?host=/run/postgresql` reaches a local server by its socket (over TCP loopback, about
    one read in a hundred of a large page stalled for 70-90 ms: docs/audit.md, W5)."""
    url = "postgresql://me@/entitlements?host=/run/postgresql&port=5433&schema=tenant_a"
    env = store_env(url)
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("/run/postgresql", "5433")
    assert (env["POSTGRES_DBNAME"], env["POSTGRES_USER"], env["POSTGRES_SCHEMA"]) == (
        "entitlements",
        "me",
        "tenant_a",
    )
    conninfo, schema = split_schema(url)
    assert schema == "tenant_a"
    assert conninfo == "postgresql://me@/entitlements?host=%2Frun%2Fpostgresql&port=5433"


def test_a_postgresql_url_over_tcp_keeps_its_host_and_port():
    env = store_env("postgresql://me:pw@db.internal:6432/entitlements")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("db.internal", "6432")
    assert split_schema("postgresql://me:pw@db.internal:6432/entitlements") == (
        "postgresql://me:pw@db.internal:6432/entitlements",
        None,
    )
