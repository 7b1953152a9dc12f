"""The buyer-facts read model: each buyer's facts, and which app user (customid) each buyer is.

It follows the event log (see `projections/follower.py`). For every recorded Stripe event it stores
the version-neutral facts the Stripe adapter reads from the raw body, so that queries never parse
Stripe JSON; for every customid claim (metadata, client_reference_id, connect_stripe) it stores the
claim, and from the claims it keeps each buyer's current link. Subscriptions, purchases and
permissions are then derived from these facts at the instant asked (`projections/entitlements.py`).

`apply` reports what each event touched (`projections/touched.py`: the buyer, and every customid
it was linked to or claimed before and after the event; an app's catalogue; or, for an event it
does not know, everything), so that the grants read model derives again the answers of exactly
those customids (`projections/grants.py`). `payment_names` says which buyers' facts name each
guest payment: a refund or dispute recorded on the payment's own history changes their answers.

The Stripe payload readers (`adapters/stripe/`) are given to it (`StripeReaders`, wired by
`adapters/bootstrap.py`): the read side never reads Stripe's JSON by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from domain.aggregates import AppCatalogue, AppSync, Buyer, WebhookReceipt
from domain.announcements import ChangeLog
from domain.facts import CheckoutCompleted, Fact, LineItem, LineItemsUnresolvable, fact_from_dict
from projections.store import Cursor, Row, placeholders
from projections.touched import EVERYTHING, Touched

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS buyer_facts (
        app_id TEXT NOT NULL, buyer_key TEXT NOT NULL, position BIGINT NOT NULL,
        seq INTEGER NOT NULL, event_id TEXT NOT NULL, at BIGINT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (app_id, buyer_key, position, seq))""",
    """CREATE TABLE IF NOT EXISTS customid_claims (
        app_id TEXT NOT NULL, buyer_key TEXT NOT NULL, position BIGINT NOT NULL,
        customid TEXT NOT NULL, source TEXT NOT NULL, at BIGINT NOT NULL, event_id TEXT NOT NULL,
        PRIMARY KEY (app_id, buyer_key, customid, source))""",
    """CREATE TABLE IF NOT EXISTS buyer_links (
        buyer_uuid TEXT PRIMARY KEY, app_id TEXT NOT NULL, buyer_key TEXT NOT NULL,
        customid TEXT)""",
    # Both lookups of buyer_links read a covering index: a customid's buyers, in buyer_key order,
    # and the links of given buyer keys. With the two-column indexes of earlier versions (dropped
    # here) SQLite, which has no statistics, scanned every buyer of the app for the first one.
    "DROP INDEX IF EXISTS buyer_links_customid",
    "DROP INDEX IF EXISTS buyer_links_key",
    "CREATE INDEX IF NOT EXISTS buyer_links_by_customid "
    "ON buyer_links (app_id, customid, buyer_key)",
    "CREATE INDEX IF NOT EXISTS buyer_links_by_key ON buyer_links (app_id, buyer_key, customid)",
    # A customer's checkouts, the only fact rows updated in place (`customer_facts`): few rows.
    "CREATE INDEX IF NOT EXISTS buyer_facts_checkouts ON buyer_facts (app_id, buyer_key, position) "
    "WHERE kind = 'checkout'",
    # Which buyers' facts name a payment (`payment:<id>`): whose answers a guest payment's
    # history (a refund or dispute naming no customer) may change.
    """CREATE TABLE IF NOT EXISTS payment_names (
        app_id TEXT NOT NULL, payment_key TEXT NOT NULL, buyer_key TEXT NOT NULL,
        PRIMARY KEY (app_id, payment_key, buyer_key))""",
]

FACT_CACHE_SIZE = 20_000  # decoded facts kept per process (~2 KB each with their text)
CUSTOMID_PREFIX = "customid:"
PAYMENT_PREFIX = "payment:"

# A claim's source, strongest first: an explicit link beats the buyer's own key, which beats
# metadata found on Stripe objects.
CONNECT, KEY, METADATA = "connect_stripe", "buyer_key", "metadata"


@dataclass(frozen=True)
class BuyerRow:
    """A buyer as the read model knows it."""

    uuid: str
    app_id: str
    buyer_key: str
    customid: str | None = None  # its link when read


@dataclass(frozen=True)
class Claim:
    customid: str
    source: str
    at: int
    event_id: str
    position: int


INSERT_FACT = "INSERT INTO buyer_facts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
INSERT_NAME = "INSERT INTO payment_names VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
INSERT_LINK = (
    "INSERT INTO buyer_links (buyer_uuid, app_id, buyer_key, customid) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
UPDATE_LINK = "UPDATE buyer_links SET customid = ? WHERE buyer_uuid = ?"
LOOKUP_CHUNK = 500  # buyers read per `IN (...)` when a batch begins


@dataclass(frozen=True)
class StripeReaders:
    """How the facts of a recorded Stripe payload are read, whatever its API version: the Stripe
    adapter's readers (`adapters/stripe/readers.STRIPE_READERS`). Module-level functions, so
    that a projection holding them can be sent to a rebuild's worker processes (pickled)."""

    facts_from_event: Callable[[Any], list[Fact]]  # a parsed Stripe event
    facts_from_observation: Callable[[Any, float], list[Fact]]  # an object, when it was read
    observation_id: Callable[[str, float], str]  # what an observation's facts name as event
    line_items_from_stripe: Callable[[Any], Sequence[LineItem]]  # fetched checkout line items


@dataclass
class _Batch:
    """What one batch (one transaction) knows beyond its rows: the buyers of its events as they
    stand in this transaction (read in one query when it begins, then kept current as its
    events register buyers and move links), and the rows not written yet: nothing in a batch
    reads them back (except a line-item resolution, which writes the fact rows first), so
    they are written in a few statements when it ends."""

    buyers: dict[str, BuyerRow] = field(default_factory=dict)
    facts: list[tuple[Any, ...]] = field(default_factory=list)
    names: set[tuple[str, str, str]] = field(default_factory=set)  # payment_names rows
    # Buyers this batch registered (no row before it), with the (customid, source) of every
    # claim row they have: all written by this batch, since a buyer's claims come only from
    # its own events, which follow its registration. Their link rows are written at the end.
    fresh: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    # Links recomputed for the other buyers, by buyer uuid (the last one counts).
    links: dict[str, str | None] = field(default_factory=dict)


class BuyerFactsProjection:
    """Turns domain events into rows; called by the follower inside one transaction."""

    name = "buyer_facts"
    tables = ("buyer_facts", "customid_claims", "buyer_links", "payment_names")
    indexes = (
        "buyer_links_customid",  # dropped
        "buyer_links_key",  # dropped
        "buyer_links_by_customid",
        "buyer_links_by_key",
        "buyer_facts_checkouts",
    )

    def __init__(self, stripe: StripeReaders) -> None:
        self.stripe = stripe
        # The state of each batch in progress, by its cursor (one instance may serve a live
        # follower and a rebuild's at once, each in its own transaction).
        self._batches: dict[Cursor, _Batch] = {}

    def create_tables(self, cursor: Cursor) -> None:
        for statement in SCHEMA:
            cursor.execute(statement)

    @contextlib.contextmanager
    def batch(self, cursor: Cursor, events: Sequence[Any]) -> Iterator[None]:
        """`apply` each of `events` (in order, on `cursor`) within this block: the buyers they
        name are read at once, and fact and link rows are written in one statement each when
        it ends. Should the block fail, nothing more is written (the transaction is rolled back
        anyway)."""
        state = _Batch()
        uuids = sorted({str(e.originator_id) for e in events if isinstance(e, Buyer.Event)})
        for start in range(0, len(uuids), LOOKUP_CHUNK):
            chunk = uuids[start : start + LOOKUP_CHUNK]
            cursor.execute(
                "SELECT buyer_uuid, app_id, buyer_key, customid FROM buyer_links "
                f"WHERE buyer_uuid IN ({placeholders(chunk)})",
                chunk,
            )
            for uuid, app_id, buyer_key, customid in cursor.fetchall():
                state.buyers[uuid] = BuyerRow(uuid, app_id, buyer_key, customid)
        self._batches[cursor] = state
        try:
            yield
            _write_links(cursor, state)
            _write_facts(cursor, state)
        finally:
            self._batches.pop(cursor, None)

    def apply(self, cursor: Cursor, position: int, event: Any) -> Touched | None:
        """Store the event's rows; returns what it touched (None: nothing answers read)."""
        if isinstance(event, Buyer.Created):
            return self._register(cursor, event)
        if isinstance(event, Buyer.StripeEventRecorded):
            facts = self.stripe.facts_from_event(orjson.loads(event.raw))
            stamp = (event.stripe_created, event.stripe_event_id, event.received_at)
            return self._record_facts(cursor, position, event, facts, stamp)
        if isinstance(event, Buyer.StripeObjectObserved):
            facts = self.stripe.facts_from_observation(orjson.loads(event.raw), event.observed_at)
            observed = self.stripe.observation_id(event.object_id, event.observed_at)
            stamp = (int(event.observed_at), observed, event.observed_at)
            return self._record_facts(cursor, position, event, facts, stamp)
        if isinstance(event, Buyer.CustomidLinked):
            buyer = self._buyer(cursor, event.originator_id)
            claim = Claim(event.customid, CONNECT, 0, f"link:{position}", position)
            return touched(buyer, event.customid, self._claim(cursor, buyer, claim))
        if isinstance(event, Buyer.LineItemsResolved):
            return self._resolve_line_items(cursor, event)
        if isinstance(event, Buyer.LineItemsUnresolvable):
            return self._unresolvable(cursor, position, event)
        if isinstance(event, AppCatalogue.Event):  # answers use the catalogue of their app
            return Touched(catalogue=event.originator_id)
        if isinstance(event, WebhookReceipt.Event | AppSync.Event | ChangeLog.Event):
            return None  # proof of receipt, a sync run's record, an announcement: no row here
        return EVERYTHING  # unknown to this projection: assume it changed anything

    def _register(self, cursor: Cursor, event: Buyer.Created) -> Touched:
        buyer = BuyerRow(str(event.originator_id), event.app_id, event.buyer_key)
        state = self._batches.get(cursor)
        if state is None:
            cursor.execute(INSERT_LINK, (buyer.uuid, buyer.app_id, buyer.buyer_key, None))
        elif buyer.uuid not in state.buyers:  # its row is written when the batch ends
            state.buyers[buyer.uuid] = buyer
            state.fresh[buyer.uuid] = set()
        # else a row already there (read when the batch began) is kept
        if not event.buyer_key.startswith(CUSTOMID_PREFIX):
            return touched(buyer)
        customid = event.buyer_key.removeprefix(CUSTOMID_PREFIX)
        return touched(buyer, customid, self._claim(cursor, buyer, Claim(customid, KEY, 0, "", 0)))

    def _record_facts(
        self,
        cursor: Cursor,
        position: int,
        event: Buyer.Event,
        facts: list[Fact],
        stamp: tuple[int, str, float],
    ) -> Touched:
        """The facts of a Stripe event or observation; `stamp` is (Stripe's clock for its
        metadata claims, the id they name, when it was recorded)."""
        created, source_id, received_at = stamp
        buyer = self._buyer(cursor, event.originator_id)
        rows = [
            (
                buyer.app_id,
                buyer.buyer_key,
                position,
                seq,
                fact.event_id,
                fact.at,
                received_at,
                fact.kind,
                fact_text(fact),
            )
            for seq, fact in enumerate(facts)
        ]
        names = {
            (buyer.app_id, key, buyer.buyer_key)
            for fact in facts
            for key in payment_keys(fact)
            if key != buyer.buyer_key
        }
        state = self._batches.get(cursor)
        if state is not None:
            state.facts.extend(rows)
            state.names |= names
        else:
            if rows:
                cursor.executemany(INSERT_FACT, rows)
            if names:
                cursor.executemany(INSERT_NAME, sorted(names))
        claimed = _claimed_customids(facts)
        linked = []
        for customid in claimed:
            claim = Claim(customid, METADATA, created, source_id, position)
            linked.append(self._claim(cursor, buyer, claim))
        return touched(buyer, *claimed, *linked)

    def _resolve_line_items(self, cursor: Cursor, event: Buyer.LineItemsResolved) -> Touched:
        """Fill in the products of a checkout once fetched from Stripe (a read model may be
        updated: it is derived data; the log keeps both the checkout and the fetched items)."""
        buyer = self._buyer(cursor, event.originator_id)
        lines = self.stripe.line_items_from_stripe(json.loads(event.line_items))
        state = self._batches.get(cursor)
        if state is not None:
            _write_facts(cursor, state)  # the rows read below may be this batch's
        cursor.execute(
            "SELECT position, seq, body FROM buyer_facts "
            "WHERE app_id = ? AND buyer_key = ? AND kind = ?",
            (buyer.app_id, buyer.buyer_key, CheckoutCompleted.kind),
        )
        for position, seq, body in cursor.fetchall():
            fact = load_fact(body)
            if isinstance(fact, CheckoutCompleted) and fact.session_id == event.session_id:
                resolved = {**fact.to_dict(), "lines": [vars(line) for line in lines]}
                cursor.execute(
                    "UPDATE buyer_facts SET body = ? WHERE app_id = ? AND buyer_key = ? "
                    "AND position = ? AND seq = ?",
                    (json.dumps(resolved), buyer.app_id, buyer.buyer_key, position, seq),
                )
        return touched(buyer)

    def _unresolvable(
        self, cursor: Cursor, position: int, event: Buyer.LineItemsUnresolvable
    ) -> Touched:
        """Stripe refused a checkout's line items for good: a fact row of its own (the
        purchase says why it stays unresolved; the resolver stops asking)."""
        buyer = self._buyer(cursor, event.originator_id)
        at = int(event.timestamp.timestamp())
        fact = LineItemsUnresolvable(
            event_id=f"line_items:{event.originator_id}:{event.originator_version}",
            at=at,
            session_id=event.session_id,
            status=event.status,
            reason=event.reason,
        )
        row = (buyer.app_id, buyer.buyer_key, position, 0, fact.event_id, at, at, fact.kind)
        state = self._batches.get(cursor)
        if state is not None:
            state.facts.append((*row, fact_text(fact)))
        else:
            cursor.execute(INSERT_FACT, (*row, fact_text(fact)))
        return touched(buyer)

    def _buyer(self, cursor: Cursor, originator_id: Any) -> BuyerRow:
        """The buyer's row as this transaction sees it (its link before the event)."""
        uuid = str(originator_id)
        state = self._batches.get(cursor)
        if state is not None and uuid in state.buyers:
            return state.buyers[uuid]
        cursor.execute(
            "SELECT app_id, buyer_key, customid FROM buyer_links WHERE buyer_uuid = ?", (uuid,)
        )
        row = cursor.fetchone()
        if row is None:
            raise LookupError(f"buyer {originator_id} has events but no registration")
        buyer = BuyerRow(uuid, row[0], row[1], row[2])
        if state is not None:
            state.buyers[uuid] = buyer
        return buyer

    def _claim(self, cursor: Cursor, buyer: BuyerRow, claim: Claim) -> str | None:
        """Keep one claim per (customid, source): the latest explicit link, the earliest
        metadata claim. The buyer's link is recomputed only when a claim changed, so a buyer
        whose every event repeats its customid costs one no-op upsert per event. Returns the
        buyer's link when it was recomputed (None: unchanged, or linked to no one)."""
        cursor.execute(
            "INSERT INTO customid_claims VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (app_id, buyer_key, customid, source) DO UPDATE SET "
            "position = excluded.position, at = excluded.at, event_id = excluded.event_id "
            "WHERE (customid_claims.source = ? AND excluded.position > customid_claims.position) "
            "OR (customid_claims.source <> ? AND (excluded.at < customid_claims.at "
            "OR (excluded.at = customid_claims.at "
            "AND excluded.event_id < customid_claims.event_id)))",
            (
                buyer.app_id,
                buyer.buyer_key,
                claim.position,
                claim.customid,
                claim.source,
                claim.at,
                claim.event_id,
                CONNECT,
                CONNECT,
            ),
        )
        if cursor.rowcount == 0:
            return None
        state = self._batches.get(cursor)
        claimed = state.fresh.get(buyer.uuid) if state is not None else None
        if claimed is not None:
            claimed.add((claim.customid, claim.source))
        if claimed is not None and len(claimed) == 1:
            linked: str | None = claim.customid  # its one claim: nothing to resolve, or read
        else:
            linked = resolve_link(claims_of(cursor, buyer.app_id, buyer.buyer_key))
        if state is None:
            cursor.execute(UPDATE_LINK, (linked, buyer.uuid))
        elif claimed is None:
            state.links[buyer.uuid] = linked
        if state is not None and buyer.uuid in state.buyers:
            state.buyers[buyer.uuid] = dataclasses.replace(
                state.buyers[buyer.uuid], customid=linked
            )
        return linked


def fact_text(fact: Fact) -> str:
    """A fact as stored: the JSON text of `fact.to_dict()`, byte for byte, without building
    that dict. orjson writes a dataclass's fields in the order of its `__dict__`, which
    `__init__` filled in declaration order, i.e. `to_dict`'s order; line items likewise."""
    return orjson.dumps({"kind": fact.kind, **vars(fact)}).decode()


def _write_links(cursor: Cursor, state: _Batch) -> None:
    """Write the batch's link rows: those of the buyers it registered, with the link each has
    now (as a registration then its link updates would leave them), then the other buyers'
    moved links."""
    if state.fresh:
        buyers = [state.buyers[uuid] for uuid in state.fresh]
        rows = [(b.uuid, b.app_id, b.buyer_key, b.customid) for b in buyers]
        cursor.executemany(INSERT_LINK, rows)
    if state.links:
        cursor.executemany(UPDATE_LINK, [(linked, uuid) for uuid, linked in state.links.items()])
    state.fresh.clear()
    state.links.clear()


def _write_facts(cursor: Cursor, state: _Batch) -> None:
    """Write the batch's pending fact rows, in the order their events came."""
    if state.facts:
        cursor.executemany(INSERT_FACT, state.facts)
        state.facts.clear()
    if state.names:
        cursor.executemany(INSERT_NAME, sorted(state.names))
        state.names.clear()


def touched(buyer: BuyerRow, *customids: str | None) -> Touched:
    """The buyer, its link when read (before the event), and the customids given: those the
    event claimed or linked it to."""
    found = {c for c in (buyer.customid, *customids) if c is not None}
    return Touched(buyer.app_id, buyer.buyer_key, tuple(found))


def _claimed_customids(facts: Iterable[Fact]) -> set[str]:
    claimed = set()
    for fact in facts:
        for name in ("customid", "client_reference_id"):
            value = getattr(fact, name, None)
            if isinstance(value, str) and value:
                claimed.add(value)
    return claimed


def resolve_link(claims: list[Claim]) -> str | None:
    """Which customid a buyer belongs to, from its claims, whatever order they arrived in.

    The latest explicit link (connect_stripe; a relink is a transfer) wins; else the buyer's own
    key (a guest buyer keyed by customid); else the earliest metadata claim by Stripe's clock.
    Disagreeing claims are not resolved silently: `conflicts` reports them.
    """
    connects = [c for c in claims if c.source == CONNECT]
    if connects:
        return max(connects, key=lambda c: c.position).customid
    keys = [c for c in claims if c.source == KEY]
    if keys:
        return keys[0].customid
    metadata = [c for c in claims if c.source == METADATA]
    if metadata:
        return min(metadata, key=lambda c: (c.at, c.event_id)).customid
    return None


def conflicts(claims: list[Claim]) -> list[Claim]:
    """The metadata claims that disagree with the buyer's link (empty when all agree)."""
    linked = resolve_link(claims)
    return [c for c in claims if c.source == METADATA and c.customid != linked]


def claims_of(cursor: Cursor, app_id: str, buyer_key: str) -> list[Claim]:
    cursor.execute(
        "SELECT customid, source, at, event_id, position FROM customid_claims "
        "WHERE app_id = ? AND buyer_key = ? ORDER BY position",
        (app_id, buyer_key),
    )
    return [Claim(*row) for row in cursor.fetchall()]


def claims_of_buyers(cursor: Cursor, app_id: str, keys: Iterable[str]) -> dict[str, list[Claim]]:
    """`claims_of` many buyers, in one query."""
    found: dict[str, list[Claim]] = {key: [] for key in keys}
    if not found:
        return found
    cursor.execute(
        "SELECT buyer_key, customid, source, at, event_id, position FROM customid_claims "
        "WHERE app_id = ? AND buyer_key IN (SELECT key FROM json_each(?)) ORDER BY position",
        (app_id, json_keys(sorted(found))),
    )
    for key, *claim in cursor.fetchall():
        found[key].append(Claim(*claim))
    return found


def buyers_of_customid(cursor: Cursor, app_id: str, customid: str) -> list[str]:
    cursor.execute(
        "SELECT buyer_key FROM buyer_links WHERE app_id = ? AND customid = ? ORDER BY buyer_key",
        (app_id, customid),
    )
    return [row[0] for row in cursor.fetchall()]


def customids_naming(cursor: Cursor, app_id: str, payment_keys: Iterable[str]) -> set[str]:
    """The customids whose buyers' facts name one of these guest payment keys: their answers
    consider those payments' histories (`customer_facts`)."""
    keys = sorted(payment_keys)
    if not keys:
        return set()
    cursor.execute(
        "SELECT DISTINCT buyer_links.customid FROM payment_names JOIN buyer_links "
        "ON buyer_links.app_id = payment_names.app_id "
        "AND buyer_links.buyer_key = payment_names.buyer_key "
        f"WHERE payment_names.app_id = ? AND payment_names.payment_key IN ({placeholders(keys)}) "
        "AND buyer_links.customid IS NOT NULL",
        (app_id, *keys),
    )
    return {row[0] for row in cursor.fetchall()}


def customids_of_app(cursor: Cursor, app_id: str) -> list[str]:
    cursor.execute(
        "SELECT DISTINCT customid FROM buyer_links WHERE app_id = ? AND customid IS NOT NULL "
        "ORDER BY customid",
        (app_id,),
    )
    return [row[0] for row in cursor.fetchall()]


def link_of_buyer(cursor: Cursor, app_id: str, buyer_key: str) -> str | None:
    cursor.execute(
        "SELECT customid FROM buyer_links WHERE app_id = ? AND buyer_key = ?", (app_id, buyer_key)
    )
    row = cursor.fetchone()
    return row[0] if row else None


def checkouts_of_apps(
    cursor: Cursor, app_ids: list[str]
) -> list[tuple[str, str, CheckoutCompleted | LineItemsUnresolvable]]:
    """Every checkout of these apps, and every refusal of Stripe to give a checkout's line
    items, as (app id, buyer key, fact), oldest first."""
    if not app_ids:
        return []
    kinds = (CheckoutCompleted.kind, LineItemsUnresolvable.kind)
    cursor.execute(
        "SELECT app_id, buyer_key, body FROM buyer_facts "
        f"WHERE kind IN (?, ?) AND app_id IN ({placeholders(app_ids)}) ORDER BY position, seq",
        (*kinds, *app_ids),
    )
    rows = [(app_id, key, load_fact(body)) for app_id, key, body in cursor.fetchall()]
    return [
        (app_id, key, fact)
        for app_id, key, fact in rows
        if isinstance(fact, CheckoutCompleted | LineItemsUnresolvable)
    ]


# What `_fact_rows` reads of each row: the body, when it was recorded, and where a later read of
# the same buyers may resume (`CustomerFacts`). Reading no more than used pays: for a history of
# 10,000 facts, each further column costs ~0.5-1 ms.
_RECORDED = "body, recorded_at, position"
_BODY, _RECORDED_AT = operator.itemgetter(0), operator.itemgetter(1)
_POSITION = operator.itemgetter(2, 3)  # of a row of `_rows_by_buyer`


def _fact_rows(cursor: Cursor, app_id: str, buyer_keys: list[str], after: int = 0) -> list[Row]:
    """The buyers' fact rows (`_RECORDED`) past position `after`, in the order their events
    came."""
    if not buyer_keys:
        return []
    marks = placeholders(buyer_keys)
    cursor.execute(
        f"SELECT {_RECORDED} FROM buyer_facts WHERE app_id = ? AND buyer_key IN ({marks}) "
        "AND position > ? ORDER BY position, seq",
        (app_id, *buyer_keys, after),
    )
    return cursor.fetchall()


def load_fact(body: str) -> Fact:
    """A stored fact (memoised by its text: see `_decoded`)."""
    return _decoded(body)[0]


@functools.lru_cache(maxsize=FACT_CACHE_SIZE)
def _decoded(body: str) -> tuple[Fact, tuple[str, ...]]:
    """A stored fact, and the keys of the guest payments it names (`payment:<id>`). orjson
    reads what `json.dumps` wrote ~3x faster; anything it refuses (NaN, integers beyond 64
    bits: never in facts read from Stripe) goes to `json`.

    Memoised by content: the same text always decodes to the same (immutable) fact, so a cache
    keyed by the text itself can never serve a stale one, and a customer with a long history
    is decoded once rather than on every query (its payment keys with it: reading them off
    every fact of a long history cost as much as the rest of the read)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = json.loads(body)
    fact = fact_from_dict(data)
    return fact, payment_keys(fact)


_FACT, _PAYMENT_KEYS = operator.itemgetter(0), operator.itemgetter(1)  # of a `_decoded` fact


@dataclass(frozen=True)
class CustomerFacts:
    """A customid's facts as read (`customer_facts`), with what a later read needs to bring
    them up to date by reading only what may have changed since."""

    facts: list[Fact]  # the linked buyers', in the order their events came, then the guests'
    recorded: list[float]  # when each was recorded
    buyers: list[str]  # linked to the customid
    candidates: list[str]  # every guest payment key considered
    own: int  # how many of `facts` are the linked buyers' (the rest are guest payments')
    last_position: int  # the highest position of a linked buyer's row read (0: none)
    named: frozenset[str]  # the payment keys named by the linked buyers' facts
    checkouts: tuple[Fact, ...]  # the linked buyers' checkouts: the only rows updated in place


def customer_facts(
    cursor: Cursor, app_id: str, customid: str, since: CustomerFacts | None = None
) -> CustomerFacts:
    """The facts of every buyer linked to `customid`, plus those of guest payments they made
    (a dispute or refund on a charge names no customer, so it lands on the payment's history).

    `since`: an earlier read of the same customid on the same generation of the read model.
    Rows are only ever added, at positions past those already applied, except a checkout's,
    whose line items are filled in in place (`_resolve_line_items`). So unless the linked
    buyers or a checkout changed (then all is read afresh), the linked buyers' facts are those
    of `since` plus the rows past its last position. Guest payments are always read afresh:
    their links may move, and their histories are short. For a history of 10,000 facts this
    reads a few rows instead of 10,000 (on PostgreSQL, 27 -> ~7 ms)."""
    buyers = buyers_of_customid(cursor, app_id, customid)
    if since is not None and (
        since.buyers != buyers
        or _checkouts(cursor, app_id, buyers, since.last_position) != since.checkouts
    ):
        since = None
    after = 0 if since is None else since.last_position
    rows = _fact_rows(cursor, app_id, buyers, after)
    # Loops over the rows of a long history run in C (`map`): per-row Python code showed in
    # profiles as much as the query itself.
    decoded = list(map(_decoded, map(_BODY, rows)))
    facts = list(map(_FACT, decoded))
    recorded = list(map(_RECORDED_AT, rows))
    named = frozenset().union(*map(_PAYMENT_KEYS, decoded))
    checkouts = tuple(fact for fact in facts if type(fact) is CheckoutCompleted)
    candidates = None
    if since is not None:
        facts = since.facts[: since.own] + facts
        recorded = since.recorded[: since.own] + recorded
        checkouts = since.checkouts + checkouts
        if named <= since.named:  # no new payment named: the same candidates (10,000: 2 ms)
            named, candidates = since.named, since.candidates
        else:
            named = since.named | named
    last_position = rows[-1][2] if rows else after
    candidates, guest_rows = _guest_rows(cursor, app_id, customid, buyers, named, candidates)
    own = len(facts)
    facts += map(load_fact, map(_BODY, guest_rows))
    recorded += map(_RECORDED_AT, guest_rows)
    return CustomerFacts(facts, recorded, buyers, candidates, own, last_position, named, checkouts)


@dataclass(frozen=True)
class Facts:
    """A customid's buyers and facts, as `customer_facts` reads them (in the same order)."""

    buyers: list[str]
    facts: list[Fact]
    recorded: list[float]


def facts_of_customids(cursor: Cursor, app_id: str, customids: Iterable[str]) -> dict[str, Facts]:
    """`customer_facts` of many customids in a fixed number of queries, whatever their number:
    what the projector derives after a batch (on PostgreSQL, each query is a round trip; one
    customid at a time cost ~8 of them)."""
    wanted = sorted(set(customids))
    buyers: dict[str, list[str]] = {customid: [] for customid in wanted}
    cursor.execute(
        "SELECT customid, buyer_key FROM buyer_links WHERE app_id = ? "
        "AND customid IN (SELECT key FROM json_each(?)) ORDER BY customid, buyer_key",
        (app_id, json_keys(wanted)),
    )
    owner: dict[str, str] = {}
    for customid, key in cursor.fetchall():
        buyers[customid].append(key)
        owner[key] = customid
    own_rows = _rows_by_buyer(cursor, app_id, owner)
    out: dict[str, Facts] = {}
    named: dict[str, set[str]] = {}
    for customid, keys in buyers.items():
        rows = sorted((row for key in keys for row in own_rows.get(key, ())), key=_POSITION)
        decoded = [_decoded(row[0]) for row in rows]
        out[customid] = Facts(keys, [d[0] for d in decoded], [row[1] for row in rows])
        named[customid] = set().union(*(d[1] for d in decoded)).difference(keys)
    links = _links_of_buyers(cursor, app_id, sorted(set().union(*named.values())))
    guest_rows = _rows_by_buyer(cursor, app_id, links)
    for customid, keys in named.items():
        guests = [key for key in keys if key in links and links[key] in (None, customid)]
        rows = sorted((row for key in guests for row in guest_rows.get(key, ())), key=_POSITION)
        out[customid].facts.extend(load_fact(row[0]) for row in rows)
        out[customid].recorded.extend(row[1] for row in rows)
    return out


def _rows_by_buyer(cursor: Cursor, app_id: str, keys: Iterable[str]) -> dict[str, list[Row]]:
    """Each buyer's fact rows (body, recorded_at, position, seq)."""
    found: dict[str, list[Row]] = {}
    keys = sorted(keys)
    if not keys:
        return found
    cursor.execute(
        "SELECT buyer_key, body, recorded_at, position, seq FROM buyer_facts WHERE app_id = ? "
        "AND buyer_key IN (SELECT key FROM json_each(?))",
        (app_id, json_keys(keys)),
    )
    for key, *row in cursor.fetchall():
        found.setdefault(key, []).append(tuple(row))
    return found


def json_keys(keys: list[str]) -> str:
    """The keys as one parameter, a JSON object's keys, for `json_each` (see below)."""
    return orjson.dumps(dict.fromkeys(keys, 0)).decode()


def _checkouts(cursor: Cursor, app_id: str, buyer_keys: list[str], until: int) -> tuple:
    """The buyers' checkouts up to position `until`, as they stand now."""
    if not buyer_keys:
        return ()
    # The kind is written out, not a parameter: only then may the planner use the partial index.
    # Sorted here: asked to sort, SQLite would rather walk every row of the primary key.
    cursor.execute(
        f"SELECT position, seq, body FROM buyer_facts WHERE app_id = ? AND buyer_key IN "
        f"({placeholders(buyer_keys)}) AND kind = 'checkout' AND position <= ?",
        (app_id, *buyer_keys, until),
    )
    return tuple(load_fact(body) for _, _, body in sorted(cursor.fetchall()))


def _guest_rows(
    cursor: Cursor,
    app_id: str,
    customid: str,
    buyers: list[str],
    named: Iterable[str],
    candidates: list[str] | None = None,
) -> tuple[list[str], list[Row]]:
    """Every guest payment key considered (those the buyers' facts name, other than the buyers
    themselves; `candidates` when already known), and the fact rows of those that have a
    history of their own and belong to nobody else."""
    if candidates is None:
        candidates = sorted(set(named).difference(buyers))
    links = _links_of_buyers(cursor, app_id, candidates)
    guests = [key for key, linked in links.items() if linked in (None, customid)]
    return candidates, _fact_rows(cursor, app_id, guests)


def payment_keys(fact: Fact) -> tuple[str, ...]:
    """The buyer keys of the guest payments a fact names (`payment:<id>`)."""
    return tuple(f"{PAYMENT_PREFIX}{ref}" for ref in _payment_refs(fact))


def _payment_refs(fact: Fact) -> list[str]:
    refs = (getattr(fact, "payment_intent_id", None), getattr(fact, "charge_id", None))
    return [ref for ref in refs if isinstance(ref, str)]


def _links_of_buyers(cursor: Cursor, app_id: str, keys: list[str]) -> dict[str, str | None]:
    """The link of each of these buyer keys that has a buyer (a long history names ~10,000
    payments, almost none of them with a buyer of their own).

    The keys go as one parameter, the keys of a JSON object, read by `json_each` (SQLite and
    PostgreSQL both have it, with a `key` column): in `IN (...)` chunks of 500 parameters,
    binding and planning them cost more than the lookups (PostgreSQL: 15 ms for 10,000 keys
    against 4 ms; SQLite: even). Both plans look each key up in `buyer_links_by_key`."""
    if not keys:
        return {}
    cursor.execute(
        "SELECT buyer_key, customid FROM buyer_links "
        "WHERE app_id = ? AND buyer_key IN (SELECT key FROM json_each(?))",
        (app_id, json_keys(keys)),
    )
    return dict(cursor.fetchall())


def links_of_buyers(cursor: Cursor, app_id: str, keys: list[str]) -> dict[str, str | None]:
    """The link of each of these buyer keys that has a buyer (reconcile: whose objects are
    whose)."""
    return _links_of_buyers(cursor, app_id, keys)


def claimed_customids(facts: Iterable[Fact]) -> set[str]:
    """The customids facts claim (metadata, client_reference_id), as the projection reads them."""
    return _claimed_customids(facts)
