"""The vocabulary of the entitlement rules: Glassfy's codes, what one source grants (`SkuGrant`,
`Outcome`), the derived states (`SubscriptionState`, `Purchase`, `PermissionStatus`,
`Derivation`), and the shared "which ending wins" rule (`apply_revocations`).

`domain/purchases.py` and `domain/subscriptions.py` build on it; `domain/rules.py` (`derive`)
sits on top of all three. It imports nothing of theirs, so that none of them import in a circle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import IntEnum

from domain.catalogue import Catalogue
from domain.facts import LineItem


class Entitlement(IntEnum):
    """Glassfy's entitlement codes (see PRODUCT.md, "Entitlement codes")."""

    AUTO_RENEW_ON = 5
    AUTO_RENEW_OFF = 4
    NON_RENEWING = 3
    EXPIRED_IN_GRACE = 1
    MISSING_INFO = 0
    IN_RETRY = -1
    EXPIRED_FROM_BILLING = -2
    EXPIRED_VOLUNTARY = -5
    UPGRADED = -6
    OTHER_REFUND = -8
    NEVER_BUY = -9
    PAUSED = -10


@dataclass(frozen=True)
class SkuGrant:
    """One SKU granted by one source (a subscription or a one-time purchase)."""

    sku_id: str
    product_id: str | None  # None when the SKU names only a price
    source_id: str  # "sub_..." or the purchase id (payment intent, else session/charge id)
    entitlement: int
    expire_date: int | None  # None = lifetime
    is_trial: bool
    is_intro: bool
    rule: str  # machine name of the rule that produced the code, e.g. "subscription.active"
    event_ids: tuple[str, ...]  # the Stripe events this code rests on

    @property
    def is_valid(self) -> bool:
        return self.entitlement > 0


@dataclass(frozen=True)
class PermissionStatus:
    permission_id: str
    entitlement: int
    expire_date: int | None
    accountable_skus: tuple[SkuGrant, ...]  # all valid grants; if none, the best invalid one
    rule: str
    event_ids: tuple[str, ...]

    @property
    def is_valid(self) -> bool:
        return self.entitlement > 0


@dataclass(frozen=True)
class SubscriptionState:
    """The derived current state of one subscription."""

    subscription_id: str
    customer_id: str | None
    status: str  # Stripe's status on the latest snapshot ("canceled" when deleted)
    items: tuple[LineItem, ...]
    sku_ids: tuple[str, ...]  # catalogue SKUs on the latest snapshot
    former_sku_ids: tuple[str, ...]  # SKUs it carried before and no longer does (-6 Upgraded)
    current_period_start: int | None
    current_period_end: int | None  # effective: a paid renewal invoice may extend the snapshot's
    cancel_at_period_end: bool
    cancel_at: int | None
    canceled_at: int | None
    ended_at: int | None
    is_trial: bool
    entitlement: int
    expire_date: int | None
    rule: str
    event_ids: tuple[str, ...]
    grants: tuple[SkuGrant, ...]  # one per SKU, current and former


@dataclass(frozen=True)
class Purchase:
    """One one-time purchase: a paid payment-mode checkout, a payment with SKU hints, or a paid
    invoice of no subscription (a one-off invoice)."""

    purchase_id: str  # the payment intent id, else the session id, else the invoice's, else the
    # charge id
    customer_id: str | None
    session_id: str | None
    payment_intent_id: str | None
    sku_ids: tuple[str, ...] | None  # None = products not yet known ("unresolved")
    paid_at: int
    expire_date: int | None  # paid_at + SKU duration; None = lifetime
    refunded: bool  # revoked by a refund (per policy) or a lost dispute
    entitlement: int
    rule: str
    event_ids: tuple[str, ...]
    grants: tuple[SkuGrant, ...]
    invoice_id: str | None = None  # a one-off invoice's
    # Why its products cannot be fetched (Stripe's answer to the resolver), while unresolved.
    resolution_error: str | None = None

    @property
    def unresolved(self) -> bool:
        return self.sku_ids is None


@dataclass(frozen=True)
class Derivation:
    subscriptions: tuple[SubscriptionState, ...]
    purchases: tuple[Purchase, ...]
    permissions: tuple[PermissionStatus, ...]


# --- the shared "which ending wins" rule ----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The code of one source, before it is copied onto the grants of its SKUs.

    `moment` orders the endings of an invalid outcome ("the last thing that happened to it"):
    for an ending caused by an event (canceled, refunded) it is that event's `at`; for time
    running out (`passive`: a pass's duration, a grace period) it is the instant it ran out.
    """

    code: int
    rule: str
    expire_date: int | None
    event_ids: tuple[str, ...]
    moment: int = 0
    passive: bool = False

    @property
    def is_valid(self) -> bool:
        return self.code > 0


@dataclass(frozen=True)
class Revocation:
    """Money taken back from a payment: a refund that counts under the policy, or a lost dispute."""

    at: int
    rule: str  # "refund.full", "refund.partial" or "dispute.lost"
    event_id: str


def apply_revocations(outcome: Outcome, revocations: Iterable[Revocation]) -> Outcome:
    """The outcome once the payment behind it was taken back (oldest revocation first).

    - A valid grant ends at the revocation, with -8 OtherRefund.
    - An ended grant is relabelled -8 when the revocation came last (a tie goes to the refund, the
      more telling reason), or when the earlier "ending" was only time running out on a grant that
      the refund had already ended. Otherwise (refunded, then canceled) the later event names it.
    - expireDate stays the instant access first ended.
    """
    for revocation in sorted(revocations, key=lambda r: (r.at, r.rule, r.event_id)):
        outcome = _revoke(outcome, revocation)
    return outcome


def _revoke(outcome: Outcome, revocation: Revocation) -> Outcome:
    refund = Outcome(
        code=Entitlement.OTHER_REFUND,
        rule=revocation.rule,
        expire_date=revocation.at,
        event_ids=merge_ids(outcome.event_ids, (revocation.event_id,)),
        moment=revocation.at,
    )
    if outcome.is_valid:
        return refund
    ended_at = _min_known(outcome.expire_date, revocation.at)
    if revocation.at >= outcome.moment or outcome.passive:
        return replace(refund, expire_date=ended_at)
    return replace(outcome, expire_date=ended_at, event_ids=refund.event_ids)


def _min_known(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)


def merge_ids(*groups: Iterable[str]) -> tuple[str, ...]:
    """Event ids, deduplicated and sorted (so that they never depend on input order)."""
    return tuple(sorted({event_id for group in groups for event_id in group}))


def outcome_grants(
    outcome: Outcome,
    catalogue: Catalogue,
    sku_ids: Iterable[str],
    source_id: str,
    is_trial: bool = False,
) -> tuple[SkuGrant, ...]:
    """The same outcome granted to each catalogue SKU of a source."""
    grants = []
    for sku_id in sorted(set(sku_ids)):
        sku = catalogue.sku(sku_id)
        if sku is None:
            continue
        grants.append(
            SkuGrant(
                sku_id=sku.sku_id,
                product_id=sku.product_id,
                source_id=source_id,
                entitlement=int(outcome.code),
                expire_date=outcome.expire_date,
                is_trial=is_trial,
                # Intro offers are not visible in the facts (Stripe has coupons, not intro
                # prices), so no grant claims one.
                is_intro=False,
                rule=outcome.rule,
                event_ids=outcome.event_ids,
            )
        )
    return tuple(grants)
