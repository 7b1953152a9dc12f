"""The entitlement rules: a pure function of (facts, catalogue, policy, instant) -> permissions.

    derive(facts, catalogue, policy, at) -> Derivation(subscriptions, purchases, permissions)

Only facts with `fact.at <= at` count (the state "as of `at`" by Stripe's clock) and validity is
evaluated at `at`. The result depends on the *set* of facts only: never on delivery order or on
duplicates, because every "latest" choice is made by Stripe's clock and then by content.

Layout:
- this module: the vocabulary (codes, grants, states), the shared "which ending wins" rule, and
  how grants combine into permissions;
- `domain/subscriptions.py`: the code of each subscription and of each SKU it ever carried;
- `domain/purchases.py`: one-time purchases, and the refunds/disputes that take money back.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from itertools import compress

from domain.catalogue import Catalogue
from domain.facts import Fact, LineItem
from domain.policy import AppPolicy


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


# --- derive ---------------------------------------------------------------------------------------


def derive(facts: Iterable[Fact], catalogue: Catalogue, policy: AppPolicy, at: int) -> Derivation:
    """Subscriptions, purchases and permissions as of instant `at` by Stripe's clock."""
    # Imported here: both modules build on the vocabulary defined above.
    from domain.purchases import derive_purchases, revocations_by_payment
    from domain.subscriptions import derive_subscriptions

    known = known_facts(facts, at)
    revocations = revocations_by_payment(known, policy)
    subscriptions = derive_subscriptions(known, catalogue, policy, at, revocations)
    purchases = derive_purchases(known, catalogue, at, revocations)
    grants = [g for s in subscriptions for g in s.grants] + [g for p in purchases for g in p.grants]
    return Derivation(
        subscriptions=subscriptions,
        purchases=purchases,
        permissions=combine_permissions(grants, catalogue),
    )


def permissions(
    facts: Iterable[Fact], catalogue: Catalogue, policy: AppPolicy, at: int
) -> tuple[PermissionStatus, ...]:
    return derive(facts, catalogue, policy, at).permissions


def known_facts(facts: Iterable[Fact], at: int) -> tuple[Fact, ...]:
    """The distinct facts heard of by `at`, in a canonical order (duplicates count once)."""
    if isinstance(facts, FactHistory):
        return facts.until(at)
    distinct = {fact for fact in facts if fact.at <= at}
    return tuple(in_fact_order(distinct))


class FactHistory:
    """A customer's distinct facts, sorted once in `fact_order`, each with when it was first
    recorded: what an auditor's queries about many instants of one long history share.

    `derive` accepts it wherever it accepts facts. Since `fact_order` sorts by `at` first, the
    facts known at an instant are a prefix, found by bisection instead of a sort per query."""

    __slots__ = ("_ats", "_last_recorded", "_recorded", "facts")

    def __init__(self, recorded: Iterable[tuple[Fact, float]]) -> None:
        """`recorded`: each fact with when it was recorded (a fact recorded twice counts once,
        from its first recording)."""
        pairs = list(recorded)
        self._build([fact for fact, _ in pairs], [when for _, when in pairs])

    @classmethod
    def of(cls, facts: Sequence[Fact], recorded: Sequence[float]) -> FactHistory:
        """`FactHistory(zip(facts, recorded))`, from the two columns as read."""
        history = cls.__new__(cls)
        history._build(facts, recorded)
        return history

    def _build(self, facts: Sequence[Fact], recorded: Sequence[float]) -> None:
        # Sorted by (clock, event, kind) first, keeping the order given among ties. Equal facts
        # tie (they have equal fields), so only the facts of a tied run need deduplicating and
        # ordering by content: hashing every fact of a long history cost more than sorting it.
        keys = list(map(_CLOCK_EVENT_KIND, facts))
        ordered, times = list(facts), list(recorded)
        if not all(map(operator.le, keys, keys[1:])):  # rows usually come in this order already
            order = sorted(range(len(keys)), key=keys.__getitem__)
            ordered = [ordered[i] for i in order]
            times = [times[i] for i in order]
            keys = [keys[i] for i in order]
        runs = _tied_runs(keys)
        if runs:
            ordered, times = _distinct_in_runs(ordered, times, runs)
        self._set(tuple(ordered), times)

    def _set(self, facts: tuple[Fact, ...], recorded: list[float]) -> None:
        self.facts = facts
        self._recorded = recorded
        self._last_recorded = max(recorded, default=None)
        self._ats = list(map(_AT, facts))

    def __len__(self) -> int:
        return len(self.facts)

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def until(self, at: int) -> tuple[Fact, ...]:
        """The facts with `fact.at <= at`, in `fact_order`."""
        end = bisect.bisect_right(self._ats, int(at))
        if type(at) is not int and end < len(self._ats):
            # An `Instant` (domain/clock.py) notes when the answer would change: when the first
            # later fact comes in (comparing it with any other later fact notes nothing nearer).
            at.__ge__(self._ats[end])
        return self.facts[:end]

    def known_by(self, known_at: float | None) -> FactHistory:
        """The facts recorded by `known_at` (our clock), still sorted; None: all of them."""
        if known_at is None or self._last_recorded is None or self._last_recorded <= known_at:
            return self  # every fact was recorded by then: the usual audit question
        kept = [i for i, recorded in enumerate(self._recorded) if recorded <= known_at]
        narrower = FactHistory(())
        narrower._set(tuple(self.facts[i] for i in kept), [self._recorded[i] for i in kept])
        return narrower


def fact_order(fact: Fact) -> tuple[int, str, str, Content]:
    """A total order on facts: Stripe's clock, then content (never the delivery order)."""
    return (fact.at, fact.event_id, fact.kind, Content(fact))


_CLOCK_EVENT_KIND = operator.attrgetter("at", "event_id", "kind")
_AT = operator.attrgetter("at")


def in_fact_order(facts: Iterable[Fact]) -> list[Fact]:
    """`sorted(facts, key=fact_order)`, faster: sorted by (clock, event, kind) first, then only
    the runs that tie on all three by their content."""
    ordered = sorted(facts, key=_CLOCK_EVENT_KIND)
    for start, end in _tied_runs(list(map(_CLOCK_EVENT_KIND, ordered))):
        ordered[start:end] = sorted(ordered[start:end], key=repr)
    return ordered


def _tied_runs(keys: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """The (start, end) of each run of two or more equal keys in sorted `keys`. Adjacent keys
    are compared in C (`map(eq, ...)`): a loop over a long history showed in profiles."""
    runs: list[tuple[int, int]] = []
    for i in compress(range(1, len(keys)), map(operator.eq, keys, keys[1:])):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i - 1, i + 1))
    return runs


def _distinct_in_runs(
    facts: list[Fact], recorded: list[float], runs: list[tuple[int, int]]
) -> tuple[list[Fact], list[float]]:
    """Sorted facts with each tied run deduplicated (the first of equal facts stays, with the
    earliest recording) and ordered by content, as `in_fact_order` orders it."""
    out_facts: list[Fact] = []
    out_times: list[float] = []
    done = 0
    for start, end in runs:
        out_facts += facts[done:start]
        out_times += recorded[done:start]
        first: dict[Fact, float] = {}
        for fact, when in zip(facts[start:end], recorded[start:end], strict=True):
            if first.setdefault(fact, when) > when:
                first[fact] = when
        distinct = sorted(first, key=repr)
        out_facts += distinct
        out_times += [first[fact] for fact in distinct]
        done = end
    out_facts += facts[done:]
    out_times += recorded[done:]
    return out_facts, out_times


class Content:
    """Orders as `repr(fact)` does, but computes it only when two facts tie on clock, event and
    kind (rare: a tuple comparison stops at the first unequal item). `repr` of a dataclass
    costs microseconds, and rules order facts many times per query."""

    __slots__ = ("_text", "fact")

    def __init__(self, fact: Fact) -> None:
        self.fact = fact
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = repr(self.fact)
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Content) and self.text == other.text

    def __lt__(self, other: Content) -> bool:
        return self.text < other.text

    def __le__(self, other: Content) -> bool:
        return self.text <= other.text

    def __gt__(self, other: Content) -> bool:
        return self.text > other.text

    def __ge__(self, other: Content) -> bool:
        return self.text >= other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text


# --- combining grants into permissions ------------------------------------------------------------

_LIFETIME = float("inf")


def combine_permissions(
    grants: Iterable[SkuGrant], catalogue: Catalogue
) -> tuple[PermissionStatus, ...]:
    """Every permission of the catalogue, in catalogue order, from its best grant."""
    grants = list(grants)
    out = []
    for permission in catalogue.permissions:
        mine = [g for g in grants if g.sku_id in permission.sku_ids]
        out.append(_permission_status(permission.permission_id, mine))
    return tuple(out)


def _permission_status(permission_id: str, grants: list[SkuGrant]) -> PermissionStatus:
    if not grants:
        return PermissionStatus(
            permission_id=permission_id,
            entitlement=int(Entitlement.NEVER_BUY),
            expire_date=None,
            accountable_skus=(),
            rule="never_bought",
            event_ids=(),
        )
    valid = sorted((g for g in grants if g.is_valid), key=_valid_rank, reverse=True)
    # If nothing is valid, the answer is the grant that ended most recently: it is the one a
    # support agent asks about ("why did I lose premium yesterday?").
    accountable = valid or [max(grants, key=_invalid_rank)]
    best = accountable[0]
    return PermissionStatus(
        permission_id=permission_id,
        entitlement=best.entitlement,
        # The best grant's date, so that expireDate always explains the code next to it.
        expire_date=best.expire_date,
        accountable_skus=tuple(accountable),
        rule=best.rule,
        event_ids=best.event_ids,
    )


def _valid_rank(grant: SkuGrant) -> tuple[int, float, str, str]:
    """Among valid grants: higher code, then the later expireDate (None = lifetime = latest)."""
    expire = _LIFETIME if grant.expire_date is None else grant.expire_date
    return (grant.entitlement, expire, grant.source_id, grant.sku_id)


def _invalid_rank(grant: SkuGrant) -> tuple[float, int, str, str]:
    """Among invalid grants: the one that ended last, then the higher code."""
    ended = _LIFETIME if grant.expire_date is None else grant.expire_date
    return (ended, grant.entitlement, grant.source_id, grant.sku_id)
