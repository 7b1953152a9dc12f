"""The code of each subscription, and of every SKU it ever carried.

A subscription's state is its latest snapshot by Stripe's clock. Snapshots of the same second
(Stripe's `created` has a one-second resolution, and event ids are random) are ordered by what
they say happened: a deletion last, a creation before any update, an update after the state its
`previous_attributes` describe; what stays tied goes to the status furthest along the lifecycle,
then to the content, so the answer never depends on delivery order. Invoices complete the
picture: a paid invoice may tell of a renewal (or of a recovered payment) before the
subscription update arrives, a failed one of a renewal that failed (grace, then retry) or of why
an old payload was canceled, and refunds and disputes reach a subscription through the payment
of its latest paid invoice (named by the invoice before basil, by an InvoicePayment from then).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

from domain.catalogue import Catalogue
from domain.facts import (
    Fact,
    InvoiceObserved,
    InvoicePaymentObserved,
    PaymentSucceeded,
    SubscriptionObserved,
    snapshot_attribute,
)
from domain.policy import AppPolicy
from domain.purchases import Revocations, revocations_for
from domain.rules import (
    Entitlement,
    Outcome,
    SubscriptionState,
    apply_revocations,
    fact_order,
    merge_ids,
    outcome_grants,
)

# Lifecycle order, used only to break ties between snapshots of the same second.
_STATUS_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 5,
    "canceled": 6,
    "incomplete_expired": 6,
}
_RECOVERABLE = {"incomplete", "past_due", "unpaid"}
_CANCELED_FOR_NON_PAYMENT = {"payment_failed", "payment_disputed"}
# A cancellation that ends the subscription this close to its scheduled end (the period end,
# or `cancel_at`) is that scheduled one; ended well before it, it was canceled at once.
SCHEDULED_END_SLACK = 3600


def derive_subscriptions(
    known: tuple[Fact, ...],
    catalogue: Catalogue,
    policy: AppPolicy,
    at: int,
    revocations: Revocations,
) -> tuple[SubscriptionState, ...]:
    """Every subscription heard of, sorted by id.

    A subscription heard of only through a paid invoice (apps that, like Glassfy's setup, do not
    subscribe to customer.subscription.created) counts as active for the period it paid, until
    a snapshot arrives to say more (cancel flags, status).
    """
    snapshots: dict[str, list[SubscriptionObserved]] = defaultdict(list)
    for fact in known:
        if isinstance(fact, SubscriptionObserved):
            snapshots[fact.subscription_id].append(fact)
    invoices = _invoices_by_subscription(known)
    for sub_id, its_invoices in invoices.items():
        if sub_id not in snapshots and (paid := its_invoices.renewal()) is not None:
            snapshots[sub_id].append(_snapshot_from_invoice(sub_id, paid))
    return tuple(
        _subscription(
            snapshots[sub_id], invoices.get(sub_id, Invoices()), catalogue, policy, at, revocations
        )
        for sub_id in sorted(snapshots)
    )


# --- invoices -------------------------------------------------------------------------------------


class Invoices:
    """What a subscription's invoices tell (paid periods, failures, the payments behind them).

    Facts are added in `fact_order` (`derive` passes the known facts sorted), so "the last of
    equals" below is the greatest in `fact_order` without computing it for every invoice: a
    customer renewed hourly for a year has thousands."""

    def __init__(self) -> None:
        self.facts: list[InvoiceObserved] = []
        self._paid: list[InvoiceObserved] = []
        self._paid_ends: list[int | None] = []  # `_period_end` of each paid invoice
        # (invoice id, charge, intent) of the payments that name an invoice (see `payment_keys`)
        self._payments: list[tuple[str, str | None, str | None]] = []
        self._renewal: tuple[InvoiceObserved | None] | None = None  # computed once
        self._unpaid_failures: list[InvoiceObserved] | None = None  # computed once

    def add(self, fact: InvoiceObserved) -> None:
        self.facts.append(fact)
        if fact.paid:
            self._paid.append(fact)
            self._paid_ends.append(_period_end(fact))

    def add_payment(self, invoice_id: str, charge_id: str | None, intent_id: str | None) -> None:
        self._payments.append((invoice_id, charge_id, intent_id))

    def payment_keys(self, invoice_id: str) -> set[str]:
        """The ids a refund or dispute of this invoice may name: its own, its charges, its
        intents. Asked for one invoice (the latest paid), so gathered only then: a customer
        renewed hourly for a year has thousands of invoices."""
        named = [(f.invoice_id, f.charge_id, f.payment_intent_id) for f in self.facts]
        keys = {invoice_id}
        for paid, charge_id, intent_id in named + self._payments:
            if paid == invoice_id:
                keys.update(key for key in (charge_id, intent_id) if key is not None)
        return keys

    def paid(self) -> list[InvoiceObserved]:
        return self._paid

    def renewal(self) -> InvoiceObserved | None:
        """The paid invoice reaching furthest in time (a renewal heard before the update)."""
        if self._renewal is None:
            best, best_end = None, None
            for fact, end in zip(self._paid, self._paid_ends, strict=True):
                if end is not None and (best_end is None or end >= best_end):
                    best, best_end = fact, end  # `>=`: the later of equals in fact_order
            self._renewal = (best,)
        return self._renewal[0]

    def latest_paid_id(self) -> str | None:
        """The invoice paid last: refunding it is what ends the subscription's access."""
        first_paid: dict[str, tuple] = {}
        # In fact_order: the first sighting of each invoice is kept.
        for fact, end in zip(self._paid, self._paid_ends, strict=True):
            if fact.invoice_id not in first_paid:
                first_paid[fact.invoice_id] = (fact.at, end or 0)
        return max(first_paid, key=lambda i: (*first_paid[i], i), default=None)

    def paid_after(self, snapshot: SubscriptionObserved) -> InvoiceObserved | None:
        """A payment covering the snapshot's period, made at or after the snapshot."""
        return next(  # the first in fact_order
            (
                f
                for f, end in zip(self._paid, self._paid_ends, strict=True)
                if f.at >= snapshot.at
                and (
                    snapshot.current_period_end is None or (end or 0) >= snapshot.current_period_end
                )
            ),
            None,
        )

    def paid_until(self) -> int | None:
        """The end of the furthest period a paid invoice covers."""
        renewal = self.renewal()
        return None if renewal is None else _period_end(renewal)

    def unpaid_failures(self) -> list[InvoiceObserved]:
        """Failed payments of invoices never paid since (a retry that succeeds pays the same
        invoice) nor voided (nothing is owed then), in fact_order."""
        if self._unpaid_failures is None:
            settled = {f.invoice_id for f in self._paid}
            settled |= {f.invoice_id for f in self.facts if f.status == "void"}
            failed = [f for f in self.facts if f.payment_failed and f.invoice_id not in settled]
            self._unpaid_failures = failed
        return self._unpaid_failures

    def last_outcome_failed(self, until: int) -> InvoiceObserved | None:
        """The failed invoice, if the last payment outcome heard by `until` was a failure.

        Within one second a success is taken as the later outcome (a retry succeeds after a
        failure, never the reverse on the same invoice).
        """
        outcomes = [f for f in self.facts if f.at <= until and (f.paid or f.payment_failed)]
        last = max(outcomes, key=lambda f: (f.at, f.paid, fact_order(f)), default=None)
        return last if last is not None and not last.paid else None


def _snapshot_from_invoice(subscription_id: str, invoice: InvoiceObserved) -> SubscriptionObserved:
    """What a paid invoice tells of its subscription: active, for the period it paid."""
    starts = [invoice.period_start, *(line.period_start for line in invoice.lines)]
    return SubscriptionObserved(
        event_id=invoice.event_id,
        at=invoice.at,
        subscription_id=subscription_id,
        customer_id=invoice.customer_id,
        status="active",
        items=invoice.lines,
        current_period_start=min((t for t in starts if t is not None), default=None),
        current_period_end=_period_end(invoice),
        customid=invoice.customid,
    )


def _period_end(invoice: InvoiceObserved) -> int | None:
    """The latest end among the invoice's and its lines' periods (None: none given)."""
    end = invoice.period_end
    for line in invoice.lines:
        if line.period_end is not None and (end is None or line.period_end > end):
            end = line.period_end
    return end


def _invoices_by_subscription(known: tuple[Fact, ...]) -> dict[str, Invoices]:
    by_sub: dict[str, Invoices] = defaultdict(Invoices)
    sub_of_invoice: dict[str, str] = {}
    for fact in known:
        if isinstance(fact, InvoiceObserved) and fact.subscription_id is not None:
            by_sub[fact.subscription_id].add(fact)
            sub_of_invoice[fact.invoice_id] = fact.subscription_id
    # Pre-basil payments name the invoice they pay, from basil on InvoicePayments do: their
    # charge or payment intent is what a refund or a dispute names.
    for fact in known:
        if not isinstance(fact, PaymentSucceeded | InvoicePaymentObserved) or not fact.invoice_id:
            continue
        sub_id = sub_of_invoice.get(fact.invoice_id)
        if sub_id is None and isinstance(fact, InvoicePaymentObserved):
            sub_id = fact.subscription_id
        if sub_id in by_sub:
            by_sub[sub_id].add_payment(fact.invoice_id, fact.charge_id, fact.payment_intent_id)
    return by_sub


# --- one subscription -----------------------------------------------------------------------------


def _latest(snapshots: list[SubscriptionObserved]) -> SubscriptionObserved:
    """The newest snapshot by Stripe's clock; of several in that second, the one that came
    last (`_last_of_one_second`)."""
    newest_at: int | None = None
    tied: list[SubscriptionObserved] = []
    for snapshot in snapshots:
        if newest_at is None or snapshot.at > newest_at:
            newest_at, tied = snapshot.at, [snapshot]
        elif snapshot.at == newest_at:
            tied.append(snapshot)
    if not tied:
        raise ValueError("no snapshot")
    if len(tied) == 1:
        return tied[0]
    # The state before that second (its own ties by rank only: no recursion over a history).
    earlier = [s for s in snapshots if s.at < tied[0].at]
    before_at = max((s.at for s in earlier), default=None)
    before = max((s for s in earlier if s.at == before_at), key=_tie_rank, default=None)
    return _last_of_one_second(tied, before)


def _last_of_one_second(
    tied: list[SubscriptionObserved], before: SubscriptionObserved | None
) -> SubscriptionObserved:
    """What really happened last within one second, never decided by event ids (random): a
    deletion ends the subscription, so nothing comes after it; a creation comes before any
    update; an update came after a snapshot whose state its `previous_attributes` describe.
    Two updates that each describe the other (a change and its undoing) are ordered by the
    state before that second: the one that changed it came first. What stays tied goes to the
    status furthest along the lifecycle, then to the content."""
    for keep in (_is_deletion, _is_update):
        tied = [s for s in tied if keep(s)] or tied
    followed = {i for i, s in enumerate(tied) for t in tied if t is not s and _came_after(t, s)}
    last = [s for i, s in enumerate(tied) if i not in followed]
    if not last and before is not None:  # each followed by another: start from before
        last = [s for s in tied if not _came_after(s, before)]
    return max(last or tied, key=_tie_rank)


def _is_deletion(snapshot: SubscriptionObserved) -> bool:
    return snapshot.deleted


def _is_update(snapshot: SubscriptionObserved) -> bool:
    return not snapshot.creation


def _came_after(update: SubscriptionObserved, other: SubscriptionObserved) -> bool:
    """`update`'s previous_attributes describe `other`'s state: `other` came just before."""
    return bool(update.previous) and all(
        snapshot_attribute(other, name) == value for name, value in update.previous
    )


def _tie_rank(s: SubscriptionObserved) -> tuple:
    status = "canceled" if s.deleted else s.status
    cancel_flag = s.cancel_at_period_end or s.cancel_at is not None
    content = repr(replace(s, event_id=""))  # computed only for snapshots of one second
    return (_STATUS_RANK.get(status, -1), s.deleted, cancel_flag, content, s.event_id)


def _subscription(
    snapshots: list[SubscriptionObserved],
    invoices: Invoices,
    catalogue: Catalogue,
    policy: AppPolicy,
    at: int,
    revocations: Revocations,
) -> SubscriptionState:
    snap = _latest(snapshots)
    status = "canceled" if snap.deleted else snap.status
    outcome, period_end = _base_outcome(snap, status, _History(snapshots, invoices), policy, at)
    latest_paid = invoices.latest_paid_id()
    if latest_paid is not None:
        revoked = revocations_for(revocations, invoices.payment_keys(latest_paid))
        outcome = apply_revocations(outcome, revoked)
    sku_ids = _skus(snap.items, catalogue)
    is_trial = status == "trialing"
    former = _former_skus(snapshots, invoices, snap, catalogue)
    grants = outcome_grants(outcome, catalogue, sku_ids, snap.subscription_id, is_trial)
    for sku_id, (gone_in, replaced) in sorted(former.items()):
        grants += outcome_grants(
            _sku_gone(gone_in, replaced), catalogue, [sku_id], snap.subscription_id
        )
    return SubscriptionState(
        subscription_id=snap.subscription_id,
        customer_id=snap.customer_id,
        status=status,
        items=snap.items,
        sku_ids=sku_ids,
        former_sku_ids=tuple(sorted(former)),
        current_period_start=snap.current_period_start,
        current_period_end=period_end,
        cancel_at_period_end=snap.cancel_at_period_end,
        cancel_at=snap.cancel_at,
        canceled_at=snap.canceled_at,
        ended_at=snap.ended_at,
        is_trial=is_trial,
        entitlement=int(outcome.code),
        expire_date=outcome.expire_date,
        rule=outcome.rule,
        event_ids=outcome.event_ids,
        grants=grants,
    )


def _skus(items: Iterable, catalogue: Catalogue) -> tuple[str, ...]:
    found = {
        s.sku_id for item in items for s in catalogue.skus_for_line(item.product_id, item.price_id)
    }
    return tuple(sorted(found))


def _former_skus(
    snapshots: list[SubscriptionObserved],
    invoices: Invoices,
    latest: SubscriptionObserved,
    catalogue: Catalogue,
) -> dict[str, tuple[SubscriptionObserved, bool]]:
    """SKUs carried by an earlier snapshot or paid invoice and gone from the latest snapshot,
    each with the snapshot that first showed it gone, and whether that update put another
    item in its place (a replacement: -6 Upgraded; else the item was removed).

    Only invoices older than the latest snapshot count: a paid invoice newer than it may show an
    upgrade whose subscription update has not arrived yet.
    """
    skus = _SkusOf(catalogue)
    current = set(skus(latest.items))
    earlier: list[tuple[int, Iterable]] = [(s.at, s.items) for s in snapshots if s is not latest]
    earlier += [(f.at, f.lines) for f in invoices.paid() if f.at < latest.at]
    newest: dict[tuple, tuple[int, Iterable]] = {}  # each distinct list of lines, last seen
    for seen_at, items in earlier:
        key = _lines_key(items)
        if key not in newest or newest[key][0] < seen_at:
            newest[key] = (seen_at, items)
    # SKU -> (the last time it was seen on the subscription, the lines it was seen among)
    sightings: dict[str, tuple[int, tuple]] = {}
    for key, (seen_at, items) in newest.items():
        for sku_id in set(skus(items)) - current:
            if sku_id not in sightings or (seen_at, key) > sightings[sku_id]:
                sightings[sku_id] = (seen_at, key)
    former = {}
    for sku_id, (last_seen, before) in sightings.items():
        without = [s for s in snapshots if s.at >= last_seen and sku_id not in skus(s.items)]
        gone_in = min(without, key=fact_order, default=latest)
        former[sku_id] = (gone_in, bool(set(_lines_key(gone_in.items)) - set(before)))
    return former


def _sku_gone(gone_in: SubscriptionObserved, replaced: bool) -> Outcome:
    """A SKU no longer on the subscription: replaced by another item in the same update
    (-6 Upgraded), or removed with nothing in its place (-5, the customer's choice)."""
    ids = (gone_in.event_id,)
    if replaced:
        return Outcome(Entitlement.UPGRADED, "subscription.upgraded", gone_in.at, ids, gone_in.at)
    rule = "subscription.item_removed"
    return Outcome(Entitlement.EXPIRED_VOLUNTARY, rule, gone_in.at, ids, gone_in.at)


def _lines_key(items: Iterable) -> tuple:
    """What `_skus` reads of a list of lines."""
    return tuple(map(_PRODUCT_AND_PRICE, items))


_PRODUCT_AND_PRICE = operator.attrgetter("product_id", "price_id")


class _SkusOf:
    """`_skus` of many item lists, once per distinct list of (product, price): thousands of
    renewals of one subscription carry the same few."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.known: dict[tuple, tuple[str, ...]] = {}

    def __call__(self, items: Iterable) -> tuple[str, ...]:
        key = _lines_key(items)
        found = self.known.get(key)
        if found is None:
            found = self.known[key] = _skus(items, self.catalogue)
        return found


# --- the code of a snapshot -----------------------------------------------------------------------


class _History:
    """What the rules read besides the latest snapshot: every snapshot, and the invoices."""

    def __init__(self, snapshots: list[SubscriptionObserved], invoices: Invoices) -> None:
        self.snapshots = snapshots
        self.invoices = invoices

    def unpaid_since(
        self, snap: SubscriptionObserved, failed: InvoiceObserved | None = None
    ) -> int:
        """The start of the first period not paid for: grace counts from it, not from each
        period a subscription stays past_due over (a dunning setting renews it unpaid).

        The earliest start among the snapshot's period, the periods of the past_due snapshots
        since the last snapshot in another status, and the periods of failed invoices never
        paid; none before the end of the furthest period a paid invoice covers. `failed`: the
        snapshot is active and this renewal failed (`failed_renewal`): the snapshot's own
        period is not what went unpaid, the failed invoices' are."""
        starts: list[int | None] = [failed.period_start or failed.at] if failed else []
        if failed is None:
            starts.append(snap.current_period_start or snap.at)
            others = [s.at for s in self.snapshots if _status(s) != "past_due"]
            last_other = max(others, default=None)
            starts += [
                s.current_period_start
                for s in self.snapshots
                if _status(s) == "past_due" and (last_other is None or s.at > last_other)
            ]
        starts += [f.period_start for f in self.invoices.unpaid_failures()]
        known = [t for t in starts if t is not None]
        paid_until = self.invoices.paid_until()
        unpaid = [t for t in known if paid_until is None or t >= paid_until]
        return min(unpaid or known)

    def failed_renewal(self, snap: SubscriptionObserved) -> InvoiceObserved | None:
        """The last failed payment, not paid since, of an invoice for the snapshot's period or
        a later one, heard at or after the snapshot: the subscription is past_due even before
        (or without) its own update saying so."""
        covered = self.invoices.paid_until()
        found = None
        for failure in self.invoices.unpaid_failures():  # in fact_order: the last one wins
            end = _period_end(failure)
            period = snap.current_period_end
            current = end is None or period is None or end >= period
            paid = covered is not None and end is not None and covered >= end
            if failure.at >= snap.at and current and not paid:
                found = failure
        return found


def _status(snapshot: SubscriptionObserved) -> str:
    return "canceled" if snapshot.deleted else snapshot.status


def _base_outcome(
    snap: SubscriptionObserved, status: str, history: _History, policy: AppPolicy, at: int
) -> tuple[Outcome, int | None]:
    """The subscription's own code before refunds, and its effective period end."""
    ids = (snap.event_id,)
    invoices = history.invoices
    if status == "canceled":
        return _canceled(snap, invoices), snap.current_period_end
    if status == "incomplete_expired":
        ended = snap.ended_at or snap.at
        rule = "subscription.incomplete_expired"
        return Outcome(Entitlement.EXPIRED_FROM_BILLING, rule, ended, ids, snap.at), None
    recovery = invoices.paid_after(snap) if status in _RECOVERABLE else None
    if recovery is not None:
        outcome, period_end = _active(snap, history, policy, at)
        rule = f"{outcome.rule}.invoice_paid"
        return replace(
            outcome, rule=rule, event_ids=merge_ids(outcome.event_ids, [recovery.event_id])
        ), period_end
    if status == "paused" or snap.paused:
        return _paused(snap, status, policy, at), snap.current_period_end
    if status in ("active", "trialing"):
        return _active(snap, history, policy, at)
    if status == "past_due":
        return _past_due(history.unpaid_since(snap), ids, policy, at), snap.current_period_end
    if status == "unpaid":
        grace_end = min(_grace_end(history.unpaid_since(snap), policy), snap.at)
        rule = "subscription.unpaid"
        return Outcome(Entitlement.EXPIRED_FROM_BILLING, rule, grace_end, ids, snap.at), None
    # incomplete (first payment not made yet), or a status this engine does not know
    rule = "subscription.incomplete" if status == "incomplete" else "subscription.unknown_status"
    started = snap.current_period_start or snap.at
    return Outcome(Entitlement.MISSING_INFO, rule, started, ids, snap.at), snap.current_period_end


def _canceled(snap: SubscriptionObserved, invoices: Invoices) -> Outcome:
    ended = snap.ended_at or snap.at
    ids = (snap.event_id,)
    if snap.cancellation_reason in _CANCELED_FOR_NON_PAYMENT:
        rule = f"subscription.canceled.{snap.cancellation_reason}"
        return Outcome(Entitlement.EXPIRED_FROM_BILLING, rule, ended, ids, snap.at)
    if snap.cancellation_reason is None:
        # Old payloads carry no reason: canceled while the last invoice had failed = for billing.
        failed = invoices.last_outcome_failed(until=snap.at)
        if failed is not None:
            rule = "subscription.canceled.unpaid_invoice"
            ids = merge_ids(ids, [failed.event_id])
            return Outcome(Entitlement.EXPIRED_FROM_BILLING, rule, ended, ids, snap.at)
    rule = "subscription.canceled"
    if _ended_as_scheduled(snap, ended):
        rule = "subscription.canceled.at_period_end"
    return Outcome(Entitlement.EXPIRED_VOLUNTARY, rule, ended, ids, snap.at)


def _ended_as_scheduled(snap: SubscriptionObserved, ended: int) -> bool:
    """Ended by its scheduled cancellation (at the period end, or `cancel_at`), not at once:
    `cancel_at_period_end` may still be true on a subscription canceled now."""
    scheduled = _cancel_end(snap, snap.current_period_end)
    if scheduled is None:
        return snap.cancel_at_period_end  # no period known: take the flag's word
    return ended >= scheduled - SCHEDULED_END_SLACK


def _active(
    snap: SubscriptionObserved, history: _History, policy: AppPolicy, at: int
) -> tuple[Outcome, int | None]:
    period_end, ids = _effective_period_end(snap, history.invoices)
    cancel_end = _cancel_end(snap, period_end)
    if cancel_end is not None and at >= cancel_end:
        # Stripe ends it exactly then (its deletion event may still be on its way): no leeway.
        rule = "subscription.canceled.at_period_end"
        ended = Outcome(Entitlement.EXPIRED_VOLUNTARY, rule, cancel_end, ids, cancel_end, True)
        return ended, period_end
    failed = history.failed_renewal(snap)
    if failed is not None:
        failed_ids = merge_ids(ids, [failed.event_id])
        outcome = _past_due(history.unpaid_since(snap, failed), failed_ids, policy, at)
        return replace(outcome, rule=f"{outcome.rule}.invoice_failed"), period_end
    if cancel_end is not None:
        code, rule = Entitlement.AUTO_RENEW_OFF, "subscription.active.cancel_pending"
    elif snap.status == "trialing":
        code, rule = Entitlement.AUTO_RENEW_ON, "subscription.trialing"
    else:
        code, rule = Entitlement.AUTO_RENEW_ON, "subscription.active"
    expire = _earliest(period_end, cancel_end)
    if period_end is None or at <= period_end:
        return Outcome(code, rule, expire, ids), period_end
    if at <= period_end + policy.renewal_leeway:  # `at` itself compared: see domain/clock.py
        return Outcome(code, f"{rule}.renewal_leeway", expire, ids), period_end
    missing = Outcome(
        Entitlement.MISSING_INFO,
        "subscription.renewal_missing",
        period_end,
        ids,
        moment=period_end + policy.renewal_leeway,
        passive=True,
    )
    return missing, period_end


def _effective_period_end(
    snap: SubscriptionObserved, invoices: Invoices
) -> tuple[int | None, tuple[str, ...]]:
    """The snapshot's period end, or later when a paid invoice already tells of a renewal."""
    period_end, ids = snap.current_period_end, (snap.event_id,)
    renewal = invoices.renewal()
    renewed_until = None if renewal is None else _period_end(renewal)
    later = renewed_until is not None and (period_end is None or renewed_until > period_end)
    if renewal is not None and later:
        return renewed_until, merge_ids(ids, [renewal.event_id])
    return period_end, ids


def _cancel_end(snap: SubscriptionObserved, period_end: int | None) -> int | None:
    """When a scheduled cancellation ends it: cancel_at, or the period end if that is earlier."""
    at_period_end = period_end if snap.cancel_at_period_end else None
    return _earliest(at_period_end, snap.cancel_at)


def _earliest(*instants: int | None) -> int | None:
    return min((t for t in instants if t is not None), default=None)


def _grace_end(unpaid_since: int, policy: AppPolicy) -> int:
    """Grace counts from the start of the first period not paid for."""
    return unpaid_since + policy.grace_period


def _past_due(unpaid_since: int, ids: tuple[str, ...], policy: AppPolicy, at: int) -> Outcome:
    grace_end = _grace_end(unpaid_since, policy)
    if policy.grace_period > 0 and at < grace_end:  # `at` itself compared: see domain/clock.py
        return Outcome(Entitlement.EXPIRED_IN_GRACE, "subscription.past_due.grace", grace_end, ids)
    rule = "subscription.past_due.retry"
    return Outcome(Entitlement.IN_RETRY, rule, grace_end, ids, grace_end, passive=True)


def _paused(snap: SubscriptionObserved, status: str, policy: AppPolicy, at: int) -> Outcome:
    """Paused: -10 where the app enables it, else 0 (older Glassfy SDKs crash on -10).

    Pausing payment collection on an active subscription stops *future* invoices: the period
    already paid for is honoured, without renewal (4), until it ends.
    """
    ids = (snap.event_id,)
    code = Entitlement.PAUSED if policy.pause_enabled else Entitlement.MISSING_INFO
    period_end = snap.current_period_end
    if status != "paused" and period_end is not None:
        if at < period_end:
            rule = "subscription.active.pause_pending"
            return Outcome(Entitlement.AUTO_RENEW_OFF, rule, period_end, ids)
        return Outcome(code, "subscription.paused", period_end, ids, period_end, passive=True)
    return Outcome(code, "subscription.paused", snap.at, ids, snap.at)
