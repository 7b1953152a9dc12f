"""Reconcile: compare each customid's permissions with what Stripe's objects say now.

Stripe's current objects are listed as `import` lists them and observed in memory (the facts an
observation read at that instant states, `adapters/stripe/observations.py`). Each object goes
to the customid its buyer is linked to in the engine, else the one its own metadata claims (a
subscriber the engine never heard of is compared too); a guest payment (a charge or dispute
naming no customer) to the customid whose facts name it. Then `adapters/drift.compare` derives
both answers with the same rules at the same instant. Nothing is written unless `fix`: then the
observations of every object of each drifting customid are recorded (`StripeObjectObserved`,
command "reconcile": the history says where the correction came from), the read models catch
up, and the customids are compared again: what still differs is reported as remaining.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from adapters.bootstrap import Engine
from adapters.drift import Difference, Facts, compare
from adapters.importing import LISTS, Observer, wanted
from adapters.stripe.envelope import buyer_key_of
from adapters.stripe.listing import Listed, StripeLister
from adapters.stripe.observations import facts_from_observation
from domain.facts import Fact
from projections.buyer_facts import (
    CUSTOMID_PREFIX,
    KEY,
    METADATA,
    Claim,
    claimed_customids,
    customer_facts,
    customids_of_app,
    links_of_buyers,
    payment_keys,
    resolve_link,
)
from projections.grants import catalogue_of

RECONCILE = "reconcile"


@dataclass(frozen=True)
class Observed:
    """One object as Stripe listed it, read at `at`, and what it states."""

    listed: Listed
    at: float
    buyer_key: str
    facts: tuple[Fact, ...]

    @property
    def object_id(self) -> str:
        return str(self.listed.obj["id"])


@dataclass
class ReconcileReport:
    objects: int = 0  # listed
    customids: int = 0  # compared
    differences: list[Difference] = field(default_factory=list)  # found
    recorded: int = 0  # observations recorded by --fix
    remaining: list[Difference] = field(default_factory=list)  # after --fix (else as found)

    def render(self) -> str:
        drifting = len({d.customid for d in self.differences})
        return (
            f"objects {self.objects}, customids {self.customids}, "
            f"differences {len(self.differences)} ({drifting} customids), "
            f"recorded {self.recorded}, remaining {len(self.remaining)}"
        )

    def counts(self) -> dict[str, int]:
        return {
            "objects": self.objects,
            "customids": self.customids,
            "differences": len(self.differences),
            "recorded": self.recorded,
            "remaining": len(self.remaining),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "customids": self.customids,
            "differences": [d.to_json() for d in self.differences],
            "recorded": self.recorded,
            "remaining": [d.to_json() for d in self.remaining],
        }


def read_objects(
    lister: StripeLister,
    clock: Callable[[], float],
    on_page: Callable[[str, int], None] = lambda path, count: None,
) -> list[Observed]:
    """Every object the import would record, each with the instant its page was read."""
    found = []
    for path, query in LISTS:
        for page in lister.pages(path, query):
            at = clock()
            for listed in page:
                obj = listed.obj
                if wanted(obj) and isinstance(obj.get("id"), str):
                    facts = tuple(facts_from_observation(obj, at))
                    found.append(Observed(listed, at, buyer_key_of(obj), facts))
            on_page(path, len(page))
    return found


@dataclass
class Snapshot:
    """Stripe's objects as read, arranged for comparison: by buyer key, by owner, by id."""

    observed: list[Observed]
    owners: dict[str, str]  # buyer key -> customid
    at: int  # the instant both answers are derived at
    by_key: dict[str, list[Observed]] = field(default_factory=dict)
    by_customid: dict[str, list[Observed]] = field(default_factory=dict)
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_key: dict[str, list[Observed]] = defaultdict(list)
        by_customid: dict[str, list[Observed]] = defaultdict(list)
        for o in self.observed:
            by_key[o.buyer_key].append(o)
            if o.buyer_key in self.owners:
                by_customid[self.owners[o.buyer_key]].append(o)
            self.by_id[o.object_id] = o.listed.obj
        self.by_key, self.by_customid = dict(by_key), dict(by_customid)

    def objects_of(self, customid: str, named: Iterable[str]) -> list[Observed]:
        """The customid's own objects and those of the guest payments its facts name (unless
        another customid owns them), as `customer_facts` reads guest payments."""
        own = self.by_customid.get(customid, [])
        keys = set(named) | {k for o in own for f in o.facts for k in payment_keys(f)}
        guests = [
            o for key in sorted(keys) if key not in self.owners for o in self.by_key.get(key, [])
        ]
        return own + guests


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        lister: StripeLister,
        app_id: str,
        clock: Callable[[], float] = time.time,
        settle: Callable[[], object] | None = None,
    ) -> None:
        self.engine = engine
        self.lister = lister
        self.app_id = app_id
        self.clock = clock
        # How the read models catch up with the log before a comparison: by projecting here
        # (a command), or by waiting for the projector (inside `serve`).
        self.settle = settle or engine.project

    def run(
        self,
        fix: bool = False,
        on_page: Callable[[str, int], None] = lambda path, count: None,
        progress: Callable[[list[str]], Iterable[str]] = lambda items: items,
    ) -> ReconcileReport:
        """Compare every customid (`progress` wraps their loop: a progress bar); with `fix`,
        record what settles the differences and compare those customids again."""
        observed = read_objects(self.lister, self.clock, on_page)
        at = int(max([self.clock(), *(o.at for o in observed)]))
        self.settle()  # compared with everything recorded so far
        snapshot = Snapshot(observed, self._owners(observed), at)
        customids = sorted(set(self._linked()) | set(snapshot.owners.values()))
        report = ReconcileReport(objects=len(observed), customids=len(customids))
        for customid in progress(customids):
            report.differences += self._compare(customid, snapshot)
        report.remaining = report.differences
        if fix and report.differences:
            drifting = sorted({d.customid for d in report.differences})
            report.recorded = self._record(drifting, snapshot)
            self.settle()
            report.remaining = [d for c in drifting for d in self._compare(c, snapshot)]
        return report

    def _linked(self) -> list[str]:
        with self.engine.follower.reading() as cursor:
            return customids_of_app(cursor, self.app_id)

    def _owners(self, observed: list[Observed]) -> dict[str, str]:
        """Buyer key -> customid: the engine's link, else what the objects claim, resolved as
        the projection resolves claims."""
        keys = sorted({o.buyer_key for o in observed})
        with self.engine.follower.reading() as cursor:
            links = links_of_buyers(cursor, self.app_id, keys)
        claims: dict[str, list[Claim]] = defaultdict(list)
        for o in observed:
            for customid in claimed_customids(o.facts):
                at = min(f.at for f in o.facts)
                claims[o.buyer_key].append(Claim(customid, METADATA, at, o.object_id, 0))
        owners = {}
        for key in keys:
            if key.startswith(CUSTOMID_PREFIX):
                claims[key].append(Claim(key.removeprefix(CUSTOMID_PREFIX), KEY, 0, "", 0))
            owner = links.get(key) or resolve_link(claims[key])
            if owner is not None:
                owners[key] = owner
        return owners

    def _compare(self, customid: str, snapshot: Snapshot) -> list[Difference]:
        with self.engine.follower.reading() as cursor:
            found = customer_facts(cursor, self.app_id, customid)
            catalogue = catalogue_of(cursor, self.app_id)
        objects = snapshot.objects_of(customid, found.named)
        observed = Facts(
            [f for o in objects for f in o.facts], [o.at for o in objects for _ in o.facts]
        )
        engine = Facts(list(found.facts), list(found.recorded))
        policy = self.engine.settings.apps[self.app_id].policy
        return compare(customid, engine, observed, snapshot.by_id, (catalogue, policy, snapshot.at))

    def _record(self, customids: list[str], snapshot: Snapshot) -> int:
        """Record every object of these customids as observed when it was read (even one
        observed before, unchanged: a newer webhook may have said otherwise since)."""
        observer = Observer(self.engine.log, self.app_id, RECONCILE)
        recorded = 0
        for customid in customids:
            with self.engine.follower.reading() as cursor:
                named = customer_facts(cursor, self.app_id, customid).named
            for o in snapshot.objects_of(customid, named):
                recorded += observer.observe(o.listed, o.at, force=True)
        return recorded
