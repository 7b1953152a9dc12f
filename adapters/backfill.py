"""Backfill: the events Stripe still keeps (30 days), recorded as their webhooks would be.

Each page of `GET /v1/events` goes through the webhook's recording path (`Ingestor`), in one
group commit: an event already recorded (by a webhook, or by an earlier backfill) is a
duplicate and is written nothing, so a backfill running beside live webhooks, or rerun after it
was killed (Ctrl-C, SIGKILL), records each event once. Resuming needs no checkpoint of its own:
the webhook receipts are the checkpoint, checked for a whole page in one query before anything
is written, so a rerun passes over what is already recorded at the speed of reading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.eventstore import EventLog
from adapters.ingest import Ingestor, Outcome, Webhook
from adapters.stripe.envelope import NotAStripeEvent, parse_event
from adapters.stripe.listing import Listed, StripeLister
from domain.aggregates import receipt_id


@dataclass
class BackfillSummary:
    seen: int = 0
    recorded: int = 0
    duplicate: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the operator

    def render(self) -> str:
        return (
            f"seen {self.seen}, recorded {self.recorded}, "
            f"duplicate {self.duplicate}, failed {self.failed}"
        )

    def counts(self) -> dict[str, int]:
        return {"seen": self.seen, "recorded": self.recorded,
                "duplicate": self.duplicate, "failed": self.failed}  # fmt: skip

    def fail(self, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(reason)


def events_query(since: int | None, until: int | None) -> dict[str, Any]:
    """`created` bounds of `GET /v1/events` (inclusive, epoch seconds)."""
    query: dict[str, Any] = {}
    if since is not None:
        query["created[gte]"] = since
    if until is not None:
        query["created[lte]"] = until
    return query


class Backfill:
    def __init__(self, log: EventLog, ingestor: Ingestor, lister: StripeLister, app_id: str):
        self.log = log
        self.ingestor = ingestor
        self.lister = lister
        self.app_id = app_id

    def run(
        self,
        since: int | None = None,
        until: int | None = None,
        on_page: Callable[[int], None] = lambda count: None,
    ) -> BackfillSummary:
        """Page every event in [since, until] and record each; `on_page(n)` after each page.
        Raises what the lister raises when Stripe cannot be read at all."""
        summary = BackfillSummary()
        for page in self.lister.pages("/v1/events", events_query(since, until)):
            self.record_page(page, summary)
            on_page(len(page))
        return summary

    def record_page(self, page: list[Listed], summary: BackfillSummary) -> None:
        summary.seen += len(page)
        webhooks: list[Webhook] = []
        for listed in page:
            try:
                envelope, _ = parse_event(listed.raw)
            except (ValueError, NotAStripeEvent) as error:
                summary.fail(f"{listed.obj.get('id')}: not a Stripe event: {error}")
                continue
            webhooks.append(Webhook(self.app_id, envelope, listed.raw, source="backfill"))
        new = self._not_recorded(webhooks)
        summary.duplicate += len(webhooks) - len(new)
        outcomes = self.ingestor.record_many(new) if new else []
        for webhook, outcome in zip(new, outcomes, strict=True):
            if outcome is Outcome.RECORDED:
                summary.recorded += 1
            elif outcome is Outcome.DUPLICATE:  # a webhook got there first, meanwhile
                summary.duplicate += 1
            else:
                summary.fail(f"{webhook.envelope.event_id}: {outcome}")

    def _not_recorded(self, webhooks: list[Webhook]) -> list[Webhook]:
        """The webhooks whose receipt is not in the log yet (one query for the page)."""
        ids = [receipt_id(self.app_id, w.envelope.event_id) for w in webhooks]
        known = self.log.last_versions(ids)
        return [w for w, rid in zip(webhooks, ids, strict=True) if rid not in known]
