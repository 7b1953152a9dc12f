"""Resolving one-time purchases: fetching the line items of checkouts whose products are unknown.

Webhooks never carry a Checkout Session's line items, so a payment-mode checkout without
`metadata.sku`/`metadata.product` is recorded as an unresolved purchase that grants nothing. This
resolver finds those checkouts in the buyer-facts read model, asks Stripe for their line items
with the app's restricted key, and appends `Buyer.LineItemsResolved` to the buyer's history; the
projection then fills in the checkout's lines and the purchase grants what it bought.

It never runs on the webhook request path: ingestion stays independent of Stripe's API. A fetch
that fails (Stripe unreachable, slow, erroring, rate limiting) appends nothing and is retried
later with an exponential backoff, so the purchase resolves once Stripe answers. A fetch that
cannot succeed however often it is asked (404: no such session; 401, 403: a key Stripe refuses,
or one without the permission) appends `Buyer.LineItemsUnresolvable` with Stripe's reason,
once: the purchase says why it stays unresolved (`/v1/subscriber`, `/metrics`), and it is asked
again only when told to (`entitlements resolve-checkouts --retry-failed`).

Idempotence: a session is resolved at most once per buyer history. The check and the append use
one read of the history: the new event's version follows the last event read, so a concurrent
resolver (another thread or server) that appended first makes this append fail on the version
and the re-check then finds its event.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from prometheus_client import Counter

from adapters.config import AppConfig
from adapters.storage.appending import save_retrying
from adapters.storage.eventstore import EventLog
from adapters.stripe.api import StripeApi, StripeApiError
from domain.aggregates import Buyer, buyer_id
from domain.facts import CheckoutCompleted, LineItemsUnresolvable
from projections.buyer_facts import checkouts_of_apps
from projections.follower import Follower
from projections.store import Cursor

log = logging.getLogger("entitlements.line_items")

POLL_INTERVAL = 5.0  # seconds between passes when nothing is due
FIRST_RETRY = 5.0  # seconds; doubled after each failure of the same session
LAST_RETRY = 300.0


class LineItemsApi(Protocol):
    def checkout_line_items(self, session_id: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class UnresolvedCheckout:
    app_id: str
    buyer_key: str
    session_id: str


@dataclass
class Pending:
    """A checkout waiting for its line items, and when to ask Stripe next."""

    checkout: UnresolvedCheckout
    failures: int = 0
    next_try: float = 0.0


CHECKOUT_RESOLUTIONS = Counter(
    "entitlements_checkout_resolutions",
    "Checkouts whose line items the background resolver looked up, by outcome",
    ["outcome"],
)


def count_pass(summary: PassSummary) -> None:
    """A background pass's outcomes, for /metrics (`resolve-checkouts` prints its own)."""
    for outcome in ("resolved", "already", "failed", "refused"):
        if count := getattr(summary, outcome):
            CHECKOUT_RESOLUTIONS.labels(outcome).inc(count)


@dataclass
class PassSummary:
    found: int = 0
    resolved: int = 0
    already: int = 0  # resolved meanwhile (by another process, or before the read model knew)
    failed: int = 0  # Stripe unreachable, slow or erroring: retried with a backoff
    refused: int = 0  # Stripe refused for good (404, 401, 403): recorded, not retried
    errors: list[str] = field(default_factory=list)

    def render(self) -> str:
        retry = " (they stay unresolved until Stripe answers)" if self.failed else ""
        refused = (
            f", {self.refused} refused by Stripe (recorded; "
            "`resolve-checkouts --retry-failed` asks again)"
            if self.refused
            else ""
        )
        return (
            f"resolve-checkouts: {self.found} unresolved checkout(s), {self.resolved} resolved, "
            f"{self.already} already resolved, {self.failed} failed{retry}{refused}"
        )


class _AlreadyResolved(Exception):
    pass


class CheckoutResolver:
    """Finds unresolved checkouts, fetches their line items, records them once."""

    def __init__(
        self,
        log: EventLog,
        follower: Follower,
        apps: dict[str, AppConfig],
        api_for: Callable[[AppConfig], LineItemsApi] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.follower = follower
        self.apps = {app_id: app for app_id, app in apps.items() if app.stripe_api_key}
        self.api_for = api_for or _stripe_api
        self.clock = clock
        self._apis: dict[str, LineItemsApi] = {}
        self._pending: dict[tuple[str, str], Pending] = {}
        self._scanned_at: tuple[int, bool] | None = None  # position and mode of the last scan
        # How many refused checkouts each app has, as of a read-model position.
        self._refused: tuple[int, dict[str, int]] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()

    # --- one pass ---------------------------------------------------------------------------

    def run_once(self, retry_failed: bool = False) -> PassSummary:
        """Resolve every unresolved checkout that is due; never raises for Stripe's failures.
        `retry_failed`: ask again for the checkouts Stripe refused for good before."""
        summary = PassSummary()
        if not self.apps:
            return summary
        # A resolution of an earlier pass not projected yet is found in the log before any
        # fetch (`_resolve_checkout`): nothing is fetched or recorded twice.
        self._refresh_pending(retry_failed)
        summary.found = len(self._pending)
        now = self.clock()
        for pending in [p for p in self._pending.values() if p.next_try <= now]:
            self._resolve(pending, summary, retry_failed)
        if summary.resolved or summary.refused:
            self.follower.poke()
        return summary

    def refused_by_app(self) -> dict[str, int]:
        """How many checkouts of each app (with a Stripe key) Stripe refused for good and
        are still unresolved (for `/metrics`)."""
        position = self.follower.position()
        if self.apps and (self._refused is None or self._refused[0] != position):
            with self.follower.reading() as cursor:
                found = scan_checkouts(cursor, self.apps)
            self._refused = (position, _count_by_app(found.refused))
        counts = {} if self._refused is None else self._refused[1]
        return {app_id: counts.get(app_id, 0) for app_id in self.apps}

    def _refresh_pending(self, retry_failed: bool) -> None:
        """Re-read the unresolved checkouts when the read model moved; keep retry schedules."""
        scan = (self.follower.position(), retry_failed)
        if scan == self._scanned_at:
            return
        with self.follower.reading() as cursor:
            found = scan_checkouts(cursor, self.apps)
        self._refused = (scan[0], _count_by_app(found.refused))
        due = found.unresolved if retry_failed else found.to_ask()
        keep = {(c.app_id, c.session_id): c for c in due}
        self._pending = {
            key: self._pending.get(key) or Pending(checkout) for key, checkout in keep.items()
        }
        self._scanned_at = scan

    def _resolve(self, pending: Pending, summary: PassSummary, retry_failed: bool) -> None:
        checkout = pending.checkout
        key = (checkout.app_id, checkout.session_id)
        try:
            appended = self._resolve_checkout(checkout, retry_failed)
        except StripeApiError as error:
            if not error.permanent:
                self._failed(pending, summary, error)
                return
            # Asking again cannot help: say why, once, and stop asking.
            self._refuse(checkout, error)
            summary.refused += 1
            summary.errors.append(f"{checkout.app_id} {checkout.session_id}: {error}")
            log.warning("line items of %s (app %s) refused by Stripe, not retried: %s",
                        checkout.session_id, checkout.app_id, error)  # fmt: skip
        except Exception as error:  # Stripe down or erroring: nothing written, try again later
            self._failed(pending, summary, error)
            return
        else:
            if appended:
                summary.resolved += 1
            else:
                summary.already += 1
        del self._pending[key]

    def _failed(self, pending: Pending, summary: PassSummary, error: Exception) -> None:
        checkout = pending.checkout
        self._back_off(pending)
        summary.failed += 1
        summary.errors.append(f"{checkout.app_id} {checkout.session_id}: {error}")
        log.warning(
            "line items of %s (app %s) not fetched, retry in %.0fs: %s",
            checkout.session_id,
            checkout.app_id,
            pending.next_try - self.clock(),
            error,
        )

    def _resolve_checkout(self, checkout: UnresolvedCheckout, retry_failed: bool = False) -> bool:
        """Fetch and record the session's line items; False if they were already on record
        (or, unless `retry_failed`, Stripe's refusal to give them)."""
        bid = buyer_id(checkout.app_id, checkout.buyer_key)
        history = self.log.history(bid)
        if _resolves(history, checkout.session_id):
            return False
        if not retry_failed and _refused_in(history, checkout.session_id):
            return False  # another process was refused meanwhile
        items = self._api(checkout.app_id).checkout_line_items(checkout.session_id)
        return self._append(bid, checkout.session_id, json.dumps(items))

    def _append(self, bid: UUID, session_id: str, line_items: str) -> bool:
        def build() -> list[Any]:
            history = self.log.history(bid)
            if not history:
                raise LookupError(f"buyer {bid} has no history")
            if _resolves(history, session_id):
                raise _AlreadyResolved(session_id)
            return [
                Buyer.LineItemsResolved(
                    originator_id=bid,
                    originator_version=history[-1].originator_version + 1,
                    timestamp=Buyer.Event.create_timestamp(),
                    session_id=session_id,
                    line_items=line_items,
                )
            ]

        try:
            saved = save_retrying(
                self.log, build, already_done=lambda: self._resolved_in_history(bid, session_id)
            )
        except _AlreadyResolved:
            return False
        return saved is not None

    def _refuse(self, checkout: UnresolvedCheckout, error: StripeApiError) -> None:
        """Record Stripe's refusal on the buyer's history (unless resolved meanwhile)."""
        bid = buyer_id(checkout.app_id, checkout.buyer_key)

        def build() -> list[Any]:
            history = self.log.history(bid)
            if not history:
                raise LookupError(f"buyer {bid} has no history")
            if _resolves(history, checkout.session_id):
                raise _AlreadyResolved(checkout.session_id)
            return [
                Buyer.LineItemsUnresolvable(
                    originator_id=bid,
                    originator_version=history[-1].originator_version + 1,
                    timestamp=Buyer.Event.create_timestamp(),
                    session_id=checkout.session_id,
                    status=error.status,
                    reason=error.reason,
                )
            ]

        with contextlib.suppress(_AlreadyResolved):
            save_retrying(self.log, build, already_done=lambda: False)

    def _resolved_in_history(self, bid: UUID, session_id: str) -> bool:
        return _resolves(self.log.history(bid), session_id)

    def _api(self, app_id: str) -> LineItemsApi:
        if app_id not in self._apis:
            self._apis[app_id] = self.api_for(self.apps[app_id])
        return self._apis[app_id]

    def _back_off(self, pending: Pending) -> None:
        """Exponential, capped and jittered, so that many waiting sessions do not retry in
        lock-step against a Stripe that just came back."""
        pending.failures += 1
        delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (pending.failures - 1))
        pending.next_try = self.clock() + delay * random.uniform(0.8, 1.2)

    # --- in the background ------------------------------------------------------------------

    def run_forever(self, poll_interval: float | None = None) -> None:
        while not self._stop.is_set():
            try:
                count_pass(self.run_once())
            except Exception:  # e.g. the database is briefly unreachable: the next pass retries
                log.exception("resolving checkouts failed; retrying")
            self._wake.wait(POLL_INTERVAL if poll_interval is None else poll_interval)
            self._wake.clear()

    def start_background(self, poll_interval: float | None = None) -> threading.Thread | None:
        """A daemon thread resolving checkouts; none when no app has a Stripe API key."""
        if not self.apps:
            return None
        thread = threading.Thread(
            target=self.run_forever, args=(poll_interval,), name="line_items", daemon=True
        )
        thread.start()
        return thread

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


@dataclass
class CheckoutScan:
    """Unresolved checkouts of some apps, and those Stripe refused for good."""

    unresolved: list[UnresolvedCheckout]
    refused: dict[tuple[str, str], LineItemsUnresolvable]  # (app id, session id) -> last refusal

    def to_ask(self) -> list[UnresolvedCheckout]:
        return [c for c in self.unresolved if (c.app_id, c.session_id) not in self.refused]


def scan_checkouts(cursor: Cursor, apps: Iterable[str]) -> CheckoutScan:
    """Payment-mode checkouts of these apps whose products are unknown: no lines, no sku.

    Unpaid ones are included: a session completed before its (delayed) payment is paid later,
    and its purchase needs its products then."""
    unresolved: list[UnresolvedCheckout] = []
    refusals: dict[tuple[str, str], LineItemsUnresolvable] = {}
    for app_id, buyer_key, fact in checkouts_of_apps(cursor, sorted(apps)):
        if isinstance(fact, LineItemsUnresolvable):
            refusals[(app_id, fact.session_id)] = fact  # oldest first: the last one stays
        elif _products_unknown(fact):
            unresolved.append(UnresolvedCheckout(app_id, buyer_key, fact.session_id))
    still = {(c.app_id, c.session_id) for c in unresolved}
    refused = {key: fact for key, fact in refusals.items() if key in still}
    return CheckoutScan(unresolved, refused)


def unresolved_checkouts(
    cursor: Cursor, apps: Iterable[str], retry_failed: bool = False
) -> list[UnresolvedCheckout]:
    """The unresolved checkouts to ask Stripe about: those it refused for good only when
    `retry_failed`."""
    scan = scan_checkouts(cursor, apps)
    return scan.unresolved if retry_failed else scan.to_ask()


def _count_by_app(refused: dict[tuple[str, str], LineItemsUnresolvable]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for app_id, _ in refused:
        counts[app_id] = counts.get(app_id, 0) + 1
    return counts


def _products_unknown(checkout: CheckoutCompleted) -> bool:
    return checkout.mode == "payment" and checkout.lines is None and checkout.sku_id is None


def _resolves(history: list[Any], session_id: str) -> bool:
    return any(
        isinstance(event, Buyer.LineItemsResolved) and event.session_id == session_id
        for event in history
    )


def _refused_in(history: list[Any], session_id: str) -> bool:
    return any(
        isinstance(event, Buyer.LineItemsUnresolvable) and event.session_id == session_id
        for event in history
    )


def _stripe_api(app: AppConfig) -> LineItemsApi:
    assert app.stripe_api_key is not None
    return StripeApi(app.stripe_api_key, app.stripe_api_base)
