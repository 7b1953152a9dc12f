"""Drift: where the engine's permissions differ from what Stripe's objects say now.

Both answers come from the same pure rules (`domain/rules.derive`) at the same instant: the
engine's from the facts it has recorded, Stripe's from those facts plus the observations of
Stripe's current objects (snapshots at the instant they were read, so they win over any older
webhook, as they would once recorded). A difference is therefore exactly what recording those
observations would change: what `reconcile --fix` records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from domain.catalogue import Catalogue
from domain.facts import Fact
from domain.policy import AppPolicy
from domain.rules import FactHistory, PermissionStatus, derive

OBSERVED_PREFIX = "observed:"  # the event id observation facts name (`observation_id`)


@dataclass(frozen=True)
class Difference:
    customid: str
    permission_id: str
    engine_code: int
    engine_rule: str
    stripe_code: int  # what the rules give with Stripe's objects as they are now
    stripe_rule: str
    stripe_state: str  # the objects' own words, e.g. "sub_1 canceled"
    object_ids: tuple[str, ...]  # the Stripe objects either answer rests on

    def to_json(self) -> dict[str, Any]:
        return {
            "customid": self.customid,
            "permissionId": self.permission_id,
            "engine": {"entitlement": self.engine_code, "rule": self.engine_rule},
            "stripe": {
                "entitlement": self.stripe_code,
                "rule": self.stripe_rule,
                "state": self.stripe_state,
            },
            "objectIds": list(self.object_ids),
        }


@dataclass(frozen=True)
class Facts:
    """Facts with when each was recorded (observations: when read)."""

    facts: list[Fact]
    recorded: list[float]

    def history(self) -> FactHistory:
        return FactHistory.of(self.facts, self.recorded)


def compare(
    customid: str,
    engine: Facts,
    observed: Facts,
    objects: Mapping[str, dict[str, Any]],
    rules: tuple[Catalogue, AppPolicy, int],
) -> list[Difference]:
    """Every permission whose code differs between the engine's facts and the same facts with
    Stripe's current objects observed. `objects`: the observed objects, by id (for their
    state); `rules`: the catalogue, policy and instant to derive at."""
    catalogue, policy, at = rules
    ours = derive(engine.history(), catalogue, policy, at).permissions
    both = Facts(engine.facts + observed.facts, engine.recorded + observed.recorded)
    theirs = {p.permission_id: p for p in derive(both.history(), catalogue, policy, at).permissions}
    found = []
    for mine in ours:
        stripe = theirs.get(mine.permission_id)
        if stripe is None or stripe.entitlement == mine.entitlement:
            continue
        ids = object_ids(mine, stripe)
        found.append(
            Difference(
                customid=customid,
                permission_id=mine.permission_id,
                engine_code=mine.entitlement,
                engine_rule=mine.rule,
                stripe_code=stripe.entitlement,
                stripe_rule=stripe.rule,
                stripe_state=state_of(ids, objects),
                object_ids=ids,
            )
        )
    return found


def object_ids(*permissions: PermissionStatus) -> tuple[str, ...]:
    """The Stripe objects the answers rest on: their grants' sources (subscriptions,
    payments) and the objects observed among the events they name."""
    found: list[str] = []
    for permission in permissions:
        for grant in permission.accountable_skus:
            found.append(grant.source_id)
        found += observed_objects(permission.event_ids)
    return tuple(dict.fromkeys(found))


def observed_objects(event_ids: Iterable[str]) -> list[str]:
    """`observed:<object id>@<instant>` -> the object id."""
    return [
        event_id.removeprefix(OBSERVED_PREFIX).rpartition("@")[0]
        for event_id in event_ids
        if event_id.startswith(OBSERVED_PREFIX)
    ]


def state_of(ids: Iterable[str], objects: Mapping[str, dict[str, Any]]) -> str:
    """What Stripe says of each object now, in its own words: its status (a charge refunded
    says so); an object Stripe did not list is said to be missing."""
    words = []
    for object_id in ids:
        obj = objects.get(object_id)
        if obj is None:
            words.append(f"{object_id} not listed")
            continue
        status = obj.get("status")
        refunded = obj.get("refunded") is True
        words.append(f"{object_id} {'refunded' if refunded else status or obj.get('object')}")
    return ", ".join(words)
