"""One-time purchases, and the refunds and disputes that take money back from any payment.

A purchase is one payment, however many facts told us about it: a payment-mode Checkout Session,
its PaymentIntent and its charge, or a paid invoice of no subscription (a one-off invoice), are
joined by the ids they share (session, payment intent, charge, invoice). It grants its SKUs once
paid and once its products are known: for life, or until its SKU's duration has run out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TypeAlias

from domain.catalogue import Catalogue
from domain.durations import add_duration
from domain.facts import (
    ChargeRefunded,
    CheckoutCompleted,
    CreditNoteIssued,
    DisputeObserved,
    Fact,
    InvoiceObserved,
    InvoicePaymentObserved,
    LineItemsUnresolvable,
    PaymentSucceeded,
)
from domain.ordering import fact_order
from domain.outcomes import (
    Entitlement,
    Outcome,
    Purchase,
    Revocation,
    apply_revocations,
    merge_ids,
    outcome_grants,
)
from domain.policy import AppPolicy

# payment key (charge id, payment intent id or invoice id) -> the revocations that hit it
Revocations: TypeAlias = Mapping[str, frozenset[Revocation]]


# --- refunds and disputes -------------------------------------------------------------------------


def revocations_by_payment(known: Iterable[Fact], policy: AppPolicy) -> Revocations:
    """Every refund that counts under the app's refund policy, and every lost dispute, by the
    ids of the payment they hit.

    A lost dispute revokes whatever the policy (even "never"): the money was taken back by force,
    and the policy only says which *voluntary* refunds the merchant wants to revoke access.
    A credit note gives back the whole amount paid when it covers the `amount_paid` of its
    invoice (as the invoice's own facts, or the note's expanded invoice, tell).
    """
    index: dict[str, set[Revocation]] = defaultdict(set)
    notes: list[CreditNoteIssued] = []
    for fact in known:
        if isinstance(fact, CreditNoteIssued):  # judged once every amount paid is known
            notes.append(fact)
        elif isinstance(fact, ChargeRefunded | DisputeObserved):
            _index(index, fact, _revocation(fact, policy, {}))
    if notes:
        paid = _amounts_paid(known)
        for note in notes:
            _index(index, note, _revocation(note, policy, paid))
    return {key: frozenset(found) for key, found in index.items()}


def _index(index: dict[str, set[Revocation]], fact: Fact, revocation: Revocation | None) -> None:
    if revocation is not None:
        for key in _payment_keys(fact):
            if key is not None:
                index[key].add(revocation)


def revocations_for(revocations: Revocations, keys: Iterable[str | None]) -> frozenset[Revocation]:
    found: set[Revocation] = set()
    for key in keys:
        if key is not None:
            found |= revocations.get(key, frozenset())
    return frozenset(found)


def _amounts_paid(known: Iterable[Fact]) -> dict[str, int]:
    """invoice id -> the most its facts say was paid (`amount_paid` only grows)."""
    paid: dict[str, int] = {}
    for fact in known:
        if isinstance(fact, InvoiceObserved) and fact.amount_paid is not None:
            paid[fact.invoice_id] = max(paid.get(fact.invoice_id, 0), fact.amount_paid)
    return paid


def _revocation(fact: Fact, policy: AppPolicy, paid: dict[str, int]) -> Revocation | None:
    if isinstance(fact, DisputeObserved) and fact.lost:
        return Revocation(at=fact.at, rule="dispute.lost", event_id=fact.event_id)
    if isinstance(fact, ChargeRefunded):
        full, amount = fact.full, fact.amount_refunded
    elif isinstance(fact, CreditNoteIssued):
        full, amount = _credit_note_is_full(fact, paid), fact.amount
    else:
        return None
    if _refund_counts(full, amount, policy):
        rule = "refund.full" if full else "refund.partial"
        if isinstance(fact, CreditNoteIssued):
            rule = f"{rule}.credit_note"
        return Revocation(at=fact.at, rule=rule, event_id=fact.event_id)
    return None


def _credit_note_is_full(note: CreditNoteIssued, paid: dict[str, int]) -> bool:
    amount_paid = note.invoice_amount_paid
    if note.invoice_id is not None and note.invoice_id in paid:
        amount_paid = max(amount_paid or 0, paid[note.invoice_id])
    # Nothing known to be paid: never more than a partial refund (its refund's charge.refunded
    # event, when it comes, says whether the charge was refunded in full).
    return amount_paid is not None and 0 < amount_paid <= note.amount


def _refund_counts(full: bool, amount: int, policy: AppPolicy) -> bool:
    if policy.refund_policy == "full":
        return full
    if policy.refund_policy == "any":
        return full or amount > 0
    return False


def _payment_keys(fact: Fact) -> tuple[str | None, ...]:
    if isinstance(fact, ChargeRefunded | CreditNoteIssued):
        return (fact.charge_id, fact.payment_intent_id, fact.invoice_id)
    if isinstance(fact, DisputeObserved):
        return (fact.charge_id, fact.payment_intent_id)
    return ()


# --- purchases ------------------------------------------------------------------------------------

PurchaseFact: TypeAlias = CheckoutCompleted | PaymentSucceeded | InvoiceObserved


def derive_purchases(
    known: tuple[Fact, ...], catalogue: Catalogue, at: int, revocations: Revocations
) -> tuple[Purchase, ...]:
    """Every paid one-time purchase, sorted by id (unresolved ones included, granting nothing)."""
    context = _PurchaseContext(known, revocations)
    purchases = []
    for group in _group_by_payment(context.purchase_facts()):
        purchase = _purchase(group, catalogue, at, context)
        if purchase is not None:
            purchases.append(purchase)
    return tuple(sorted(purchases, key=lambda p: p.purchase_id))


class _PurchaseContext:
    """The facts purchases are made of, read in one pass over a history, and what purchases
    need from facts that are not purchases themselves: the revocations, the payments that paid
    invoices (InvoicePayments from basil on, payments naming their invoice before), and the
    resolver's refusals to fetch a checkout's line items."""

    def __init__(self, known: tuple[Fact, ...], revocations: Revocations) -> None:
        self.revocations = revocations
        self.checkouts: list[CheckoutCompleted] = []
        self.one_off: list[InvoiceObserved] = []
        self.payments: list[PaymentSucceeded] = []
        self.invoice_keys: set[str | None] = set()  # charges and intents that paid invoices
        self.invoice_payments: dict[str, set[str]] = defaultdict(set)
        self.failures: dict[str, LineItemsUnresolvable] = {}
        for fact in known:  # in fact_order: the last failure of a session is kept
            if isinstance(fact, InvoiceObserved):
                self.invoice_keys.add(fact.charge_id)
                self.invoice_keys.add(fact.payment_intent_id)
                if fact.subscription_id is None:
                    self.one_off.append(fact)
            elif isinstance(fact, InvoicePaymentObserved | PaymentSucceeded):
                self._payment(fact)
            elif isinstance(fact, CheckoutCompleted) and fact.mode == "payment":
                self.checkouts.append(fact)
            elif isinstance(fact, LineItemsUnresolvable):
                self.failures[fact.session_id] = fact
        self.invoice_keys.discard(None)

    def _payment(self, fact: InvoicePaymentObserved | PaymentSucceeded) -> None:
        paid_by = [k for k in (fact.payment_intent_id, fact.charge_id) if k]
        if isinstance(fact, PaymentSucceeded):
            self.payments.append(fact)
        else:
            self.invoice_keys.update(paid_by)
        if fact.invoice_id:
            self.invoice_payments[fact.invoice_id].update(paid_by)

    def purchase_facts(self) -> list[PurchaseFact]:
        """Payment-mode checkouts, one-off invoices (of no subscription), and payments that
        do not pay an invoice."""
        payments = [f for f in self.payments if not _pays_invoice(f, self.invoice_keys)]
        return [*self.checkouts, *self.one_off, *payments]

    def revoked(self, group: list[PurchaseFact]) -> frozenset[Revocation]:
        keys = {key for f in group for key in _ids(f)}
        for fact in group:
            if isinstance(fact, InvoiceObserved):
                keys |= self.invoice_payments.get(fact.invoice_id, set())
        return revocations_for(self.revocations, keys)

    def resolution_error(self, checkouts: list[CheckoutCompleted]) -> str | None:
        failed = [self.failures[c.session_id] for c in checkouts if c.session_id in self.failures]
        if not failed:
            return None
        last = max(failed, key=fact_order)
        return last.reason if last.status is None else f"HTTP {last.status}: {last.reason}"


def _pays_invoice(payment: PaymentSucceeded, invoice_payments: set[str | None]) -> bool:
    return payment.invoice_id is not None or bool(
        {payment.payment_intent_id, payment.charge_id} & invoice_payments
    )


def _ids(fact: PurchaseFact) -> list[str]:
    """The ids that name the payment; the first anchors its group. A payment-mode checkout
    may have made an invoice (`invoice_creation`): then both are one purchase."""
    if isinstance(fact, CheckoutCompleted):
        ids = [fact.payment_intent_id, fact.session_id, fact.invoice_id]
    elif isinstance(fact, InvoiceObserved):
        ids = [fact.payment_intent_id, fact.invoice_id, fact.charge_id]
    else:
        ids = [fact.payment_intent_id, fact.charge_id]
    return [i for i in ids if i is not None]


def _group_by_payment(facts: list[PurchaseFact]) -> list[list[PurchaseFact]]:
    """Facts that share a session, payment intent or charge id describe one payment."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for fact in facts:
        ids = _ids(fact)
        for other in ids[1:]:
            a, b = root(ids[0]), root(other)
            parent[max(a, b)] = min(a, b)  # deterministic whatever the order
    groups: dict[str, list[PurchaseFact]] = defaultdict(list)
    for fact in facts:
        ids = _ids(fact)
        groups[root(ids[0]) if ids else f"event:{fact.event_id}"].append(fact)
    return list(groups.values())


def _purchase(
    group: list[PurchaseFact], catalogue: Catalogue, at: int, context: _PurchaseContext
) -> Purchase | None:
    checkouts = [f for f in group if isinstance(f, CheckoutCompleted)]
    payments = [f for f in group if isinstance(f, PaymentSucceeded)]
    invoices = [f for f in group if isinstance(f, InvoiceObserved)]
    paying = [
        *(c for c in checkouts if c.paid),
        *(p for p in payments if not p.partially_funded),
        *(i for i in invoices if i.paid),
    ]
    sku_ids, product_facts = _products(checkouts, payments, invoices, catalogue)
    if not paying or (sku_ids is None and not checkouts):
        # Not paid yet; or a bare payment with no product hint (e.g. a subscription's payment
        # seen without its invoice id): nothing was bought as a one-time purchase.
        return None
    paid_at = min(f.at for f in paying)
    event_ids = merge_ids((f.event_id for f in paying), (f.event_id for f in product_facts))
    purchase_id = _purchase_id(group)
    revoked = context.revoked(group)
    outcomes = {
        sku_id: apply_revocations(_sku_outcome(sku_id, catalogue, paid_at, at, event_ids), revoked)
        for sku_id in sku_ids or ()
    }
    grants = tuple(
        grant
        for sku_id, outcome in outcomes.items()
        for grant in outcome_grants(outcome, catalogue, [sku_id], purchase_id)
    )
    outcome = _purchase_outcome(sku_ids, outcomes, paid_at, event_ids, revoked)
    return Purchase(
        purchase_id=purchase_id,
        customer_id=next((f.customer_id for f in group if f.customer_id), None),
        session_id=min((c.session_id for c in checkouts), default=None),
        payment_intent_id=min(_all(f.payment_intent_id for f in group), default=None),
        sku_ids=sku_ids,
        paid_at=paid_at,
        expire_date=outcome.expire_date,
        refunded=bool(revoked),
        entitlement=int(outcome.code),
        rule=outcome.rule,
        event_ids=outcome.event_ids,
        grants=grants,
        invoice_id=min((i.invoice_id for i in invoices), default=None),
        resolution_error=context.resolution_error(checkouts) if sku_ids is None else None,
    )


def _purchase_outcome(
    sku_ids: tuple[str, ...] | None,
    outcomes: dict[str, Outcome],
    paid_at: int,
    event_ids: tuple[str, ...],
    revoked: frozenset[Revocation],
) -> Outcome:
    """The purchase's own code: its best SKU (valid first, higher code, later end)."""
    if sku_ids is None:
        return Outcome(Entitlement.MISSING_INFO, "purchase.unresolved", None, event_ids)
    if not outcomes:  # paid for products that no SKU of the catalogue names
        paid = Outcome(Entitlement.NON_RENEWING, "purchase.paid", None, event_ids, paid_at)
        return apply_revocations(paid, revoked)

    def rank(o: Outcome) -> tuple[bool, int, float, str]:
        end = float("inf") if o.expire_date is None else o.expire_date
        return (o.is_valid, int(o.code), end, o.rule)

    return max(outcomes.values(), key=rank)


def _all(values: Iterable[str | None]) -> list[str]:
    return [v for v in values if v is not None]


def _purchase_id(group: list[PurchaseFact]) -> str:
    """The payment intent when known, else the checkout session, else the invoice, else the
    charge."""
    for candidates in (
        _all(f.payment_intent_id for f in group),
        _all(f.session_id for f in group if isinstance(f, CheckoutCompleted)),
        _all(f.invoice_id for f in group if isinstance(f, InvoiceObserved)),
        _all(f.charge_id for f in group if isinstance(f, PaymentSucceeded | InvoiceObserved)),
    ):
        if candidates:
            return min(candidates)
    return min(f.event_id for f in group)


def _products(
    checkouts: list[CheckoutCompleted],
    payments: list[PaymentSucceeded],
    invoices: list[InvoiceObserved],
    catalogue: Catalogue,
) -> tuple[tuple[str, ...] | None, list[PurchaseFact]]:
    """The catalogue SKUs bought (None while unknown), and the facts that told us.

    Checkout line items come from the latest session fact that has them (a later fact with
    resolved lines beats an earlier one without); a one-off invoice's from its latest fact;
    `metadata.sku` / `metadata.product` hints of any fact add to them. Products that no SKU of
    the catalogue matches grant nothing.
    """
    sources: list[PurchaseFact] = []
    skus: set[str] = set()
    with_lines: list[PurchaseFact] = [c for c in checkouts if c.lines is not None]
    for candidates in (with_lines, invoices):
        if candidates:
            chosen = max(candidates, key=fact_order)
            sources.append(chosen)
            for line in chosen.lines or ():
                skus |= {s.sku_id for s in catalogue.skus_for_line(line.product_id, line.price_id)}
    for fact in [*checkouts, *payments]:
        product_id = fact.product_id if isinstance(fact, PaymentSucceeded) else None
        if fact.sku_id is None and product_id is None:
            continue
        sources.append(fact)
        if fact.sku_id is not None and catalogue.sku(fact.sku_id) is not None:
            skus.add(fact.sku_id)
        if product_id is not None:
            skus |= {s.sku_id for s in catalogue.skus_for_line(product_id, None)}
    if not sources:
        return None, []
    return tuple(sorted(skus)), sources


def _sku_outcome(
    sku_id: str, catalogue: Catalogue, paid_at: int, at: int, event_ids: tuple[str, ...]
) -> Outcome:
    """A lifetime SKU is 3 for good; a pass is 3 until paid_at + its duration, then -5."""
    sku = catalogue.sku(sku_id)
    if sku is None or sku.duration is None:
        return Outcome(Entitlement.NON_RENEWING, "purchase.lifetime", None, event_ids, paid_at)
    end = add_duration(paid_at, sku.duration)
    if at < end:
        return Outcome(Entitlement.NON_RENEWING, "purchase.pass", end, event_ids, paid_at)
    return Outcome(
        Entitlement.EXPIRED_VOLUNTARY,
        "purchase.duration_elapsed",
        end,
        event_ids,
        moment=end,
        passive=True,
    )
