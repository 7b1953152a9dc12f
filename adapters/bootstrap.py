"""The composition root: configuration -> stores -> application services -> HTTP and CLI."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from adapters.config import Settings
from adapters.outbound import sender
from adapters.outbound.publisher import Publisher
from adapters.outbound.store import DeliveryStore
from adapters.outbound.worker import DeliveryWorker
from adapters.storage.eventstore import EventLog, open_event_log
from adapters.storage.grouped_reads import GroupedReads
from adapters.stripe.readers import STRIPE_READERS
from adapters.usecases.catalogues import Catalogues
from adapters.usecases.group_commit import GroupCommitWriter
from adapters.usecases.history import CustomerHistory
from adapters.usecases.ingest import Ingestor
from adapters.usecases.line_items import CheckoutResolver
from adapters.usecases.linking import Linker
from projections.announcements import Announcer
from projections.entitlements import Entitlements
from projections.follower import Follower
from projections.grants import dirty_rows
from projections.read_models import BuyerReadModels
from projections.store import ViewStore, open_view_store

WAIT_SECONDS = 20.0  # how long a write waits for its effects to be projected


class Clock:
    """What "now" is for the read side: the system's clock, unless a test fixes it."""

    def __init__(self) -> None:
        self.fixed: float | None = None

    def __call__(self) -> float:
        return time.time() if self.fixed is None else self.fixed


@dataclass
class Engine:
    settings: Settings
    log: EventLog
    views: ViewStore
    follower: Follower  # the read models' follower (run by the projector, or a thread here)
    ingestor: Ingestor
    linker: Linker
    catalogues: Catalogues
    entitlements: Entitlements
    history: CustomerHistory
    resolver: CheckoutResolver
    writer: GroupCommitWriter  # webhooks from HTTP: batched into shared commits
    clock: Clock
    # Questions about now from HTTP, read together (None: reads are local, ask directly).
    grouped_reads: GroupedReads | None
    # Outbound webhooks: where deliveries live, and the worker that sends them (run by the
    # projector: `entitlements project`; None when no app has an endpoint).
    deliveries: DeliveryStore | None = None
    outbound: DeliveryWorker | None = None

    def wait_until_derived(
        self, position: int, app_id: str | None = None, timeout: float = WAIT_SECONDS
    ) -> bool:
        """Wait until the read models hold the log up to `position` and, with `app_id`, every
        answer of the app is derived with its catalogue (a catalogue change fans out to all of
        them): what a write waits for before it answers. False on timeout."""

        def derived() -> bool:
            with self.follower.reading() as cursor:
                return dirty_rows(cursor, app_id) == 0

        return self.follower.wait_for(position, timeout, derived if app_id else None)

    def project(self) -> int:
        """Apply everything recorded so far, then what is due: what the projector does, here
        and now (commands that run on their own, tests). How many events were applied."""
        applied = self.follower.catch_up()
        self.follower.derive_due()
        return applied

    def close(self) -> None:
        if self.grouped_reads is not None:
            self.grouped_reads.close()
        if self.outbound is not None:
            self.outbound.stop()
        self.writer.stop()
        self.resolver.stop()
        self.follower.stop()
        self.views.close()
        self.log.close()


def delivery_timeout() -> float:
    """Seconds a delivery's POST may take (10, PRODUCT.md); `ENTITLEMENTS_DELIVERY_TIMEOUT`
    shortens it for tests that kill a worker mid-flight (its lease outlives it by 5 s)."""
    return float(os.environ.get("ENTITLEMENTS_DELIVERY_TIMEOUT") or sender.TIMEOUT)


def bootstrap(settings: Settings, read_url: str | None = None) -> Engine:
    """`read_url`: the read models read from this hot standby (only where no follower of
    this process writes them: `serve` with its projector apart)."""
    log = open_event_log(settings.database_url)
    views = open_view_store(settings.database_url, read_url)
    clock = Clock()
    policies = {app_id: app.policy for app_id, app in settings.apps.items()}
    read_models = BuyerReadModels(policies, clock, STRIPE_READERS)
    endpoints = {a: app.endpoints for a, app in settings.apps.items() if app.endpoints}
    if endpoints:  # only apps with endpoints record their changes: nobody else is told
        read_models.grants.announcer = Announcer(endpoints, read_models.name)
    follower = Follower(log, views, read_models)
    deliveries = DeliveryStore(views)
    catalogues = Catalogues(log)
    for app in settings.apps.values():
        if app.catalogue_file is not None:
            catalogues.seed(app.app_id, app.catalogue_file)
    ingestor = Ingestor(log, on_recorded=follower.poke)
    entitlements = Entitlements(follower.reader, catalogues, settings.apps, clock)
    return Engine(
        settings=settings,
        log=log,
        views=views,
        follower=follower,
        ingestor=ingestor,
        linker=Linker(log, follower),
        catalogues=catalogues,
        entitlements=entitlements,
        history=CustomerHistory(log, follower.reader),
        resolver=CheckoutResolver(log, follower, settings.apps),
        writer=GroupCommitWriter(ingestor),
        clock=clock,
        grouped_reads=GroupedReads(entitlements.now_many) if views.remote else None,
        deliveries=deliveries,
        outbound=(
            DeliveryWorker(
                deliveries,
                Publisher(log, deliveries, endpoints),
                endpoints,
                timeout=delivery_timeout(),
            )
            if endpoints
            else None
        ),
    )
