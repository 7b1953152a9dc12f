"""The composition root: configuration -> stores -> application services -> HTTP and CLI."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.catalogues import Catalogues
from adapters.config import Settings
from adapters.eventstore import EventLog, open_event_log
from adapters.group_commit import GroupCommitWriter
from adapters.history import CustomerHistory
from adapters.ingest import Ingestor
from adapters.line_items import CheckoutResolver
from adapters.linking import Linker
from projections.answers import AnswerCache
from projections.entitlements import Entitlements
from projections.follower import Follower
from projections.read_models import BuyerReadModels
from projections.store import ViewStore, open_view_store


@dataclass
class Engine:
    settings: Settings
    log: EventLog
    views: ViewStore
    follower: Follower
    ingestor: Ingestor
    linker: Linker
    catalogues: Catalogues
    entitlements: Entitlements
    history: CustomerHistory
    resolver: CheckoutResolver
    writer: GroupCommitWriter  # webhooks from HTTP: batched into shared commits
    answers: AnswerCache  # permissions now, while they cannot have changed

    @property
    def followers(self) -> tuple[Follower, ...]:
        """Every read model that follows the event log."""
        return (self.follower,)

    def poke_followers(self) -> None:
        for follower in self.followers:
            follower.poke()

    def close(self) -> None:
        self.writer.stop()
        self.resolver.stop()
        for follower in self.followers:
            follower.stop()
        self.views.close()
        self.log.close()


def bootstrap(settings: Settings) -> Engine:
    log = open_event_log(settings.database_url)
    views = open_view_store(settings.database_url)
    follower = Follower(log, views, BuyerReadModels())
    catalogues = Catalogues(log)
    for app in settings.apps.values():
        if app.catalogue_file is not None:
            catalogues.seed(app.app_id, app.catalogue_file)
    ingestor = Ingestor(log)
    answers = AnswerCache()
    engine = Engine(
        settings=settings,
        log=log,
        views=views,
        follower=follower,
        ingestor=ingestor,
        linker=Linker(log, follower),
        catalogues=catalogues,
        entitlements=Entitlements(follower, catalogues, settings.apps, answers=answers),
        history=CustomerHistory(log, follower, follower),
        resolver=CheckoutResolver(log, follower, settings.apps),
        writer=GroupCommitWriter(ingestor),
        answers=answers,
    )
    engine.ingestor.on_recorded = engine.poke_followers
    log.pending = engine.answers  # told of every write before it is saved (read-your-writes)
    follower.on_applied = engine.answers.applied  # what each batch touched ends cached answers
    follower.wants_touched = engine.answers.holds_anything
    return engine
