"""The entitlement rules: a pure function of (facts, catalogue, policy, instant) -> permissions.

    derive(facts, catalogue, policy, at) -> Derivation(subscriptions, purchases, permissions)

Only facts with `fact.at <= at` count (the state "as of `at`" by Stripe's clock) and validity is
evaluated at `at`. The result depends on the *set* of facts only: never on delivery order or on
duplicates, because every "latest" choice is made by Stripe's clock and then by content.

Layout:
- `domain/outcomes.py`: the vocabulary (codes, grants, states) and the shared "which ending wins"
  rule; `domain/ordering.py`: the order on facts every "latest" is chosen by;
- `domain/subscriptions.py`: the code of each subscription and of each SKU it ever carried;
- `domain/purchases.py`: one-time purchases, and the refunds/disputes that take money back;
- this module, on top of them all: `derive`, `FactHistory`, and how grants combine into
  permissions.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Iterator, Sequence

from domain.catalogue import Catalogue
from domain.facts import Fact
from domain.ordering import CLOCK_EVENT_KIND, in_fact_order, tied_runs
from domain.outcomes import Derivation, Entitlement, PermissionStatus, SkuGrant
from domain.policy import AppPolicy
from domain.purchases import derive_purchases, revocations_by_payment
from domain.subscriptions import derive_subscriptions

# --- derive ---------------------------------------------------------------------------------------


def derive(facts: Iterable[Fact], catalogue: Catalogue, policy: AppPolicy, at: int) -> Derivation:
    """Subscriptions, purchases and permissions as of instant `at` by Stripe's clock."""
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
        keys = list(map(CLOCK_EVENT_KIND, facts))
        ordered, times = list(facts), list(recorded)
        if not all(map(operator.le, keys, keys[1:])):  # rows usually come in this order already
            order = sorted(range(len(keys)), key=keys.__getitem__)
            ordered = [ordered[i] for i in order]
            times = [times[i] for i in order]
            keys = [keys[i] for i in order]
        runs = tied_runs(keys)
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


_AT = operator.attrgetter("at")


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
