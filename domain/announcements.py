"""What an app is told when a customid's permissions change (outbound webhooks).

Pure: an answer's summary (per permission, its entitlement code and expireDate), the changes
between two summaries, the Glassfy webhook event type that fits each change, and the domain
event that records an announcement on the customid's change log. Nothing here knows HTTP, SQL
or where the answers come from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

NEVER_BUY = -9
Grant = tuple[int, int | None]  # (entitlement code, expireDate in epoch seconds or None)
Summary = dict[str, Grant]  # permissionId -> grant
NEVER: Grant = (NEVER_BUY, None)  # a permission the answer does not list

CAUSE_KINDS = ("stripe_event", "observation", "link", "catalogue", "rebuild", "time")

# Glassfy's webhook event types (../shared/notes/glassfy.md, b.7).
INITIAL_BUY, RESTARTED, RENEWED, EXPIRED = 5001, 5002, 5003, 5004
RENEWAL_STATUS, BILLING_RETRY, PRODUCT_CHANGE, IN_APP_PURCHASE = 5005, 5006, 5007, 5008
REFUND, PAUSED, RESUMED = 5009, 5010, 5011
AUTO_RENEW_ON, AUTO_RENEW_OFF, NON_RENEWING, IN_GRACE, IN_RETRY = 5, 4, 3, 1, -1
UPGRADED, EXPIRED_CODES, REFUNDED, PAUSED_CODE = -6, (0, -2, -5), -8, -10


@dataclass(frozen=True)
class Cause:
    """Why the answer was derived again: `kind` is one of CAUSE_KINDS."""

    kind: str
    stripe_event_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind}
        if self.kind == "stripe_event":
            body["stripeEventIds"] = list(self.stripe_event_ids)
        return body


def summary(answer: Mapping[str, Any]) -> Summary:
    """The part of a `/v1/permissions` answer whose change is announced."""
    return {p["permissionId"]: (p["entitlement"], p.get("expireDate")) for p in answer["all"]}


def changes(old: Summary, new: Summary) -> list[dict[str, Any]]:
    """Each permission whose code or expireDate differs, from -> to (a permission one side
    does not list counts as never bought), in permissionId order."""
    out = []
    for permission_id in sorted(old.keys() | new.keys()):
        before, after = old.get(permission_id, NEVER), new.get(permission_id, NEVER)
        if before != after:
            out.append(
                {
                    "permissionId": permission_id,
                    "glassfyEventType": glassfy_event_type(before, after),
                    "from": {"entitlement": before[0], "expireDate": before[1]},
                    "to": {"entitlement": after[0], "expireDate": after[1]},
                }
            )
    return out


def glassfy_event_type(before: Grant, after: Grant) -> int | None:
    """The Glassfy webhook type that names this change, where one fits; else None."""
    old, new = before[0], after[0]
    if new > 0 and old <= 0:
        return _gained(old, new)
    if new > 0:
        return _kept(before, after)
    return _lost(old, new)


def _gained(old: int, new: int) -> int | None:
    if new == NON_RENEWING:
        return IN_APP_PURCHASE
    if new == IN_GRACE:
        return BILLING_RETRY
    if old == PAUSED_CODE:
        return RESUMED
    return INITIAL_BUY if old == NEVER_BUY else RESTARTED


def _kept(before: Grant, after: Grant) -> int | None:
    old, new = before[0], after[0]
    if {old, new} == {AUTO_RENEW_ON, AUTO_RENEW_OFF}:
        return RENEWAL_STATUS
    if new == IN_GRACE:
        return BILLING_RETRY
    if old == new == AUTO_RENEW_ON and _later(after[1], before[1]):
        return RENEWED
    return None


def _lost(old: int, new: int) -> int | None:
    if old == new:  # still invalid; only the expireDate moved
        return None
    types = {
        REFUNDED: REFUND,
        UPGRADED: PRODUCT_CHANGE,
        PAUSED_CODE: PAUSED,
        IN_RETRY: BILLING_RETRY,
    }
    if new in types:
        return types[new]
    return EXPIRED if new in EXPIRED_CODES and old > 0 else None


def _later(a: int | None, b: int | None) -> bool:
    return a is not None and b is not None and a > b


def change_id(app_id: str, customid: str, sequence: int) -> str:
    """A change's id, the same whoever computes it (a replay after a crash included)."""
    return (
        "pc_" + uuid5(NAMESPACE_URL, f"/apps/{app_id}/customers/{customid}/changes/{sequence}").hex
    )


def change_log_id(app_id: str, customid: str) -> UUID:
    """The customid's change log: its versions are the changes' sequence numbers."""
    return uuid5(NAMESPACE_URL, f"/apps/{app_id}/customers/{customid}/changes")


def payload(
    app_id: str,
    customid: str,
    sequence: int,
    created: int,
    change_list: Iterable[dict[str, Any]],
    cause: Cause,
    answer: Mapping[str, Any],
) -> dict[str, Any]:
    """The `permissions.changed` body (PRODUCT.md, "Outbound webhooks")."""
    return {
        "id": change_id(app_id, customid, sequence),
        "type": "permissions.changed",
        "created": created,
        "app": app_id,
        "data": {
            "customid": customid,
            "sequence": sequence,
            "changes": list(change_list),
            "cause": cause.to_json(),
            "permissions": dict(answer),
        },
    }


class ChangeLog(Aggregate):
    """The changes of one customid's permissions, as announced to its app, in order.

    Never loaded as an aggregate: it is read as a log (`PermissionsChanged` events, whose
    versions are the changes' `sequence`). A change is appended with a version computed from
    the read model, so appending the same change twice collides on (id, version)."""

    TOPIC = "entitlements.change_log"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):  # never recorded: the log starts at sequence 1
        TOPIC = "entitlements.change_log.created"

    class PermissionsChanged(Event):
        TOPIC = "entitlements.change_log.permissions_changed"
        app_id: str
        customid: str
        change_id: str
        body: str  # the permissions.changed payload, as sent (JSON text)

    @classmethod
    def changed(cls, app_id: str, customid: str, sequence: int, body: str) -> Any:
        return cls.PermissionsChanged(
            originator_id=change_log_id(app_id, customid),
            originator_version=sequence,
            timestamp=cls.PermissionsChanged.create_timestamp(),
            app_id=app_id,
            customid=customid,
            change_id=change_id(app_id, customid, sequence),
            body=body,
        )
