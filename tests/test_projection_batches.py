"""A follower's batch (`BuyerReadModels.batch`: buyers and claims read at once, rows written
together, answers derived once per customid) stores the same rows as applying event by event."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.bootstrap import bootstrap
from adapters.config import settings_from_dict
from adapters.stripe.readers import STRIPE_READERS
from domain.catalogue import Catalogue
from domain.policy import AppPolicy
from projections.follower import Follower
from projections.read_models import BuyerReadModels
from projections.store import Cursor
from tests.conftest import config_doc, ingest
from tests.lifecycles import CATALOGUE, DAY, T0, population

NOW = T0 + 12 * DAY  # answers derived at one instant, whichever way they were applied


def read_models() -> BuyerReadModels:
    return BuyerReadModels({"demo": AppPolicy(), "other": AppPolicy()}, lambda: NOW, STRIPE_READERS)


class OneByOne:
    """The same read models without `batch`: the follower applies each event on its own."""

    def __init__(self) -> None:
        self.inner = read_models()
        self.name = self.inner.name
        self.tables = self.inner.tables
        self.indexes = self.inner.indexes
        self.ignored_topics = self.inner.ignored_topics

    def create_tables(self, cursor: Cursor) -> None:
        self.inner.create_tables(cursor)

    def apply(self, cursor: Cursor, position: int, event: Any) -> Any:
        return self.inner.apply(cursor, position, event)

    def seed(self, cursor: Cursor, position: int) -> None:
        self.inner.seed(cursor, position)


def follow(engine, projection, generation: int, batch_size: int) -> dict:
    follower = Follower(
        engine.log, engine.views, projection, batch_size=batch_size, generation=generation
    )
    follower.catch_up()
    follower.seed()  # what a projector does once it starts: every answer is derived already
    rows = {}
    with follower.reading() as cursor:
        for table in projection.tables:
            # A row's revision is the position of what last changed it: the event applied on
            # its own, or the end of the batch that held it (the rest of the row is the same).
            columns = "app_id, customid, permissions, explained, subscriber, due, derived_at"
            cursor.execute(f"SELECT {columns if table == 'customer_grants' else '*'} FROM {table}")
            rows[table] = sorted(tuple(str(v) for v in row) for row in cursor.fetchall())
    return rows


@pytest.mark.parametrize("batch_size", [3, 500])
def test_a_batch_stores_and_reports_what_one_event_at_a_time_does(database_url, batch_size) -> None:
    engine = bootstrap(settings_from_dict(config_doc(database_url), env={}))
    engine.clock.fixed = NOW
    engine.follower.start_background(0.02)  # the projector that links wait for
    try:
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        bodies = population(10)
        ingest(engine, bodies[: len(bodies) // 2])
        # Links and relinks between Stripe events: later events read what earlier ones wrote.
        assert engine.linker.link("demo", "user_a", "cus_gen1")
        assert engine.linker.link("demo", "user_b", "cus_gen1")  # a transfer
        assert engine.linker.link("demo", "user_c", "cus_gen2")
        ingest(engine, bodies[len(bodies) // 2 :])
        assert engine.linker.link("demo", "user_a", "cus_gen3")
        ingest(engine, bodies)  # redeliveries: nothing new
        one_by_one = follow(engine, OneByOne(), generation=2, batch_size=batch_size)
        batched = follow(engine, read_models(), generation=3, batch_size=batch_size)
        assert batched == one_by_one
        assert all(batched.values())  # every table has rows
        # And the live read model (its own batches, partly caught up by the links) agrees.
        assert follow(engine, engine.follower.projection, 1, batch_size) == one_by_one
    finally:
        engine.close()
