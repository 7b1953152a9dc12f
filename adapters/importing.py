"""Import: Stripe's current objects, each recorded as an observation on its buyer's history.

What a merchant who moves in has on day one: subscribers the engine never heard of. Each object
listed becomes a `Buyer.StripeObjectObserved` (the raw object as fetched, when it was read, by
which command) on the history of the buyer it concerns, found as a webhook's is
(`buyer_key_of`: the customer, `metadata.customid`, `client_reference_id`, the payment), so
linking by metadata works as on webhooks. An object whose last observation on that history is
the same object, unchanged, is not recorded again: importing twice records nothing new.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from adapters.appending import next_in_history, save_retrying
from adapters.eventstore import EventLog
from adapters.stripe.envelope import buyer_key_of
from adapters.stripe.listing import Listed, StripeLister
from domain.aggregates import Buyer, buyer_id

# What is listed, in this order (a customer before what names it), with its query. Checkout
# sessions: payment mode only (a subscription's own objects say the rest), with line items,
# which say what was bought.
LISTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("/v1/customers", {}),
    ("/v1/subscriptions", {"status": "all"}),
    ("/v1/invoices", {}),
    ("/v1/payment_intents", {}),
    ("/v1/charges", {}),
    ("/v1/refunds", {}),
    ("/v1/disputes", {}),
    ("/v1/credit_notes", {}),
    ("/v1/checkout/sessions", {"expand[]": "data.line_items"}),
)

IMPORT = "import"


@dataclass
class ImportSummary:
    seen: int = 0
    recorded: int = 0
    unchanged: int = 0
    skipped: int = 0  # not an object the engine keeps (e.g. a subscription-mode checkout)
    by_type: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"seen": self.seen, "recorded": self.recorded,
                "unchanged": self.unchanged, "skipped": self.skipped}  # fmt: skip

    def render(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.by_type.items()))
        return (
            f"seen {self.seen}, recorded {self.recorded}, unchanged {self.unchanged}, "
            f"skipped {self.skipped}" + (f" ({kinds})" if kinds else "")
        )


class Observer:
    """Records observed objects of one app, each at most once while it stays unchanged."""

    def __init__(
        self, log: EventLog, app_id: str, command: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.log = log
        self.app_id = app_id
        self.command = command
        self.clock = clock
        # buyer key -> object id -> its last observed content (read once per buyer per run)
        self._last_seen: dict[str, dict[str, Any]] = {}

    def observe(
        self, listed: Listed, observed_at: float | None = None, force: bool = False
    ) -> bool:
        """Record the object unless its last observation says the same (`force`: even then);
        True if recorded."""
        obj = listed.obj
        object_id, object_type = obj.get("id"), obj.get("object")
        if not isinstance(object_id, str) or not isinstance(object_type, str):
            return False
        buyer_key = buyer_key_of(obj)
        seen = self._observed(buyer_key)
        if seen.get(object_id) == obj and not force:
            return False
        at = self.clock() if observed_at is None else observed_at

        def build() -> list[Any]:
            registration, bid, version = next_in_history(self.log, self.app_id, buyer_key)
            observed = Buyer.StripeObjectObserved(
                originator_id=bid,
                originator_version=version,
                timestamp=Buyer.Event.create_timestamp(),
                object_type=object_type,
                object_id=object_id,
                observed_at=at,
                command=self.command,
                raw=listed.raw,
            )
            return [*registration, observed]

        save_retrying(self.log, build, already_done=lambda: False)
        seen[object_id] = obj
        return True

    def _observed(self, buyer_key: str) -> dict[str, Any]:
        """The last observation of each object on the buyer's history (read once)."""
        if buyer_key not in self._last_seen:
            found: dict[str, Any] = {}
            for event in self.log.events.get(buyer_id(self.app_id, buyer_key)):
                if isinstance(event, Buyer.StripeObjectObserved):
                    found[event.object_id] = json.loads(event.raw)
            self._last_seen[buyer_key] = found
        return self._last_seen[buyer_key]


def wanted(obj: dict[str, Any]) -> bool:
    """Whether the engine keeps this object: checkouts only in payment mode."""
    return obj.get("object") != "checkout.session" or obj.get("mode") == "payment"


class Importer:
    def __init__(self, log: EventLog, lister: StripeLister, app_id: str) -> None:
        self.lister = lister
        self.observer = Observer(log, app_id, IMPORT)

    def run(
        self,
        lists: Iterable[tuple[str, dict[str, Any]]] | None = None,
        on_page: Callable[[str, int], None] = lambda path, count: None,
    ) -> ImportSummary:
        summary = ImportSummary()
        for path, query in LISTS if lists is None else lists:
            for page in self.lister.pages(path, query):
                for listed in page:
                    self._one(listed, summary)
                on_page(path, len(page))
        return summary

    def _one(self, listed: Listed, summary: ImportSummary) -> None:
        summary.seen += 1
        if not wanted(listed.obj):
            summary.skipped += 1
        elif self.observer.observe(listed):
            summary.recorded += 1
            kind = str(listed.obj.get("object"))
            summary.by_type[kind] = summary.by_type.get(kind, 0) + 1
        else:
            summary.unchanged += 1
