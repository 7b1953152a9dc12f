"""One-time purchases, and the refunds and disputes that take money back from any payment.

A purchase is one payment, however many facts told us about it: a payment-mode Checkout Session,
its PaymentIntent and its charge are joined by the ids they share (session, payment intent,
charge). It grants its SKUs once paid and once its products are known: for life, or until its
SKU's duration has run out.
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
    DisputeObserved,
    Fact,
    InvoiceObserved,
    PaymentSucceeded,
)
from domain.policy import AppPolicy
from domain.rules import (
    Entitlement,
    Outcome,
    Purchase,
    Revocation,
    apply_revocations,
    fact_order,
    merge_ids,
    outcome_grants,
)

# payment key (charge id, payment intent id or invoice id) -> the revocations that hit it
Revocations: TypeAlias = Mapping[str, frozenset[Revocation]]


# --- refunds and disputes -------------------------------------------------------------------------


def revocations_by_payment(known: Iterable[Fact], policy: AppPolicy) -> Revocations:
    """Every refund that counts under the app's refund policy, and every lost dispute, by the
    ids of the payment they hit.

    A lost dispute revokes whatever the policy (even "never"): the money was taken back by force,
    and the policy only says which *voluntary* refunds the merchant wants to revoke access.
    """
    index: dict[str, set[Revocation]] = defaultdict(set)
    for fact in known:
        revocation = _revocation(fact, policy)
        if revocation is None:
            continue
        for key in _payment_keys(fact):
            index[key].add(revocation)
    return {key: frozenset(found) for key, found in index.items()}


def revocations_for(revocations: Revocations, keys: Iterable[str | None]) -> frozenset[Revocation]:
    found: set[Revocation] = set()
    for key in keys:
        if key is not None:
            found |= revocations.get(key, frozenset())
    return frozenset(found)


def _revocation(fact: Fact, policy: AppPolicy) -> Revocation | None:
    if isinstance(fact, DisputeObserved) and fact.lost:
        return Revocation(at=fact.at, rule="dispute.lost", event_id=fact.event_id)
    if isinstance(fact, ChargeRefunded) and _refund_counts(fact, policy):
        rule = "refund.full" if fact.full else "refund.partial"
        return Revocation(at=fact.at, rule=rule, event_id=fact.event_id)
    return None


def _refund_counts(refund: ChargeRefunded, policy: AppPolicy) -> bool:
    if policy.refund_policy == "full":
        return refund.full
    if policy.refund_policy == "any":
        return refund.full or refund.amount_refunded > 0
    return False


def _payment_keys(fact: Fact) -> tuple[str | None, ...]:
    if isinstance(fact, ChargeRefunded):
        return (fact.charge_id, fact.payment_intent_id, fact.invoice_id)
    if isinstance(fact, DisputeObserved):
        return (fact.charge_id, fact.payment_intent_id)
    return ()


# --- purchases ------------------------------------------------------------------------------------

PurchaseFact: TypeAlias = CheckoutCompleted | PaymentSucceeded


def derive_purchases(
    known: tuple[Fact, ...], catalogue: Catalogue, at: int, revocations: Revocations
) -> tuple[Purchase, ...]:
    """Every paid one-time purchase, sorted by id (unresolved ones included, granting nothing)."""
    purchases = []
    for group in _group_by_payment(_purchase_facts(known)):
        purchase = _purchase(group, catalogue, at, revocations)
        if purchase is not None:
            purchases.append(purchase)
    return tuple(sorted(purchases, key=lambda p: p.purchase_id))


def _purchase_facts(known: tuple[Fact, ...]) -> list[PurchaseFact]:
    """Payment-mode checkouts, and payments that do not pay an invoice."""
    invoice_payments = {
        key
        for fact in known
        if isinstance(fact, InvoiceObserved)
        for key in (fact.charge_id, fact.payment_intent_id)
        if key is not None
    }
    checkouts = [f for f in known if isinstance(f, CheckoutCompleted) and f.mode == "payment"]
    payments = [
        f
        for f in known
        if isinstance(f, PaymentSucceeded) and not _pays_invoice(f, invoice_payments)
    ]
    return [*checkouts, *payments]


def _pays_invoice(payment: PaymentSucceeded, invoice_payments: set[str]) -> bool:
    return payment.invoice_id is not None or bool(
        {payment.payment_intent_id, payment.charge_id} & invoice_payments
    )


def _ids(fact: PurchaseFact) -> list[str]:
    ids = [fact.payment_intent_id]
    ids.append(fact.session_id if isinstance(fact, CheckoutCompleted) else fact.charge_id)
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
    group: list[PurchaseFact], catalogue: Catalogue, at: int, revocations: Revocations
) -> Purchase | None:
    checkouts = [f for f in group if isinstance(f, CheckoutCompleted)]
    payments = [f for f in group if isinstance(f, PaymentSucceeded)]
    paying = [c for c in checkouts if c.paid] + [p for p in payments if not p.partially_funded]
    sku_ids, product_facts = _products(checkouts, payments, catalogue)
    if not paying or (sku_ids is None and not checkouts):
        # Not paid yet; or a bare payment with no product hint (e.g. a subscription's payment
        # seen without its invoice id): nothing was bought as a one-time purchase.
        return None
    paid_at = min(f.at for f in paying)
    event_ids = merge_ids((f.event_id for f in paying), (f.event_id for f in product_facts))
    purchase_id = _purchase_id(group)
    revoked = revocations_for(revocations, {key for f in group for key in _ids(f)})
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
    """The payment intent when known, else the checkout session, else the charge."""
    for candidates in (
        _all(f.payment_intent_id for f in group),
        _all(f.session_id for f in group if isinstance(f, CheckoutCompleted)),
        _all(f.charge_id for f in group if isinstance(f, PaymentSucceeded)),
    ):
        if candidates:
            return min(candidates)
    return min(f.event_id for f in group)


def _products(
    checkouts: list[CheckoutCompleted], payments: list[PaymentSucceeded], catalogue: Catalogue
) -> tuple[tuple[str, ...] | None, list[PurchaseFact]]:
    """The catalogue SKUs bought (None while unknown), and the facts that told us.

    Checkout line items come from the latest session fact that has them (a later fact with
    resolved lines beats an earlier one without); `metadata.sku` / `metadata.product` hints of
    any fact add to them. Products that no SKU of the catalogue matches grant nothing.
    """
    sources: list[PurchaseFact] = []
    skus: set[str] = set()
    with_lines = [c for c in checkouts if c.lines is not None]
    if with_lines:
        chosen = max(with_lines, key=fact_order)
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
