"""Realistic Stripe webhook traffic built from the recorded fixture events.

Each simulated customer lives one lifecycle (customer or checkout created, subscription created,
invoices paid, subscription updated, charge refunded...) taken from real fixture templates. Every
Stripe id a customer owns (`cus_`, `sub_`, `in_`, `ch_`...) is replaced by a fresh one, consistent
across that customer's events; every event gets a fresh `evt_` id; timestamps are shifted so that
`created` is now and subscriptions are current; products map to the demo catalogue's `prod_premium`
so that customers really gain the `premium` permission. Customers' lifecycles are interleaved, so
any slice of the stream holds the whole mix of event types and body sizes.

Templates are compiled once into `str.format` strings, so making tens of thousands of bodies costs
about a second; bodies are signed only just before each run (Stripe's tolerance is 300 s).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.stripe.signature import sign

# Lifecycles: (API-version family, fixture files relative to the fixtures' stripe directory).
LIFECYCLES: dict[str, list[str]] = {
    "2020-08-27 subscription, refunded": [
        "events/customer.created__srm__1.json",
        "events/customer.subscription.created__srm__1.json",
        "events/invoice.paid__srm__1.json",
        "events/invoice.payment_succeeded__srm__1.json",
        "events/charge.succeeded__srm__1.json",
        "events/customer.subscription.updated__srm__1.json",
        "events/charge.refunded__srm__1.json",
    ],
    "2023-10-16 subscription, renewed": [
        "events/customer.created__srm__1.json",
        "events-newer/2023-10-16__customer.subscription.created__alimehndi__1.json",
        "events-newer/2023-10-16__invoice.finalized__alimehndi__1.json",
        "events-newer/2023-10-16__invoice.paid__alimehndi__1.json",
        "events-newer/2023-10-16__payment_intent.succeeded__alimehndi__1.json",
        "events-newer/2023-10-16__charge.updated__alimehndi__1.json",
        "events-newer/2023-10-16__customer.subscription.updated__alimehndi__1.json",
    ],
    "basil checkout subscription": [
        "events-newer/2025-05-28.basil__checkout.session.completed__carledgr__1.json",
        "events-newer/2025-05-28.basil__customer.subscription.created__carledgr__1.json",
        "events-newer/2025-05-28.basil__invoice.payment_succeeded__carledgr__1.json",
        "events-newer/2025-04-30.basil__invoice.paid__godgpt__1.json",
        "events-newer/2025-04-30.basil__customer.subscription.updated__godgpt__1.json",
    ],
}

# Ids a customer owns: fresh per customer. `cus_` and `sub_` name the customer's one customer and
# one subscription whatever the template said, so that events from different sources still agree.
OWNED_PREFIXES = (
    "cus",
    "sub",
    "in",
    "ch",
    "pi",
    "si",
    "pm",
    "txn",
    "il",
    "ii",
    "dp",
    "re",
    "cs",
    "cn",
    "req",
    "py",
    "src",
    "card",
)
SINGLE_PREFIXES = ("cus", "sub")
ID_PATTERN = re.compile(rf"^({'|'.join(OWNED_PREFIXES)})_[A-Za-z0-9]{{6,}}$")
TIMESTAMP_KEYS = re.compile(r"(^created$|_at$|_start$|_end$|_anchor$|date$|^start$|^end$)")
EPOCH_RANGE = (1_000_000_000, 2_200_000_000)
CUSTOMID_OBJECTS = ("customer", "subscription", "checkout.session")
PAYMENT_OBJECTS = ("charge", "payment_intent", "invoice")
INTERLEAVE = 64  # customers whose lifecycles are interleaved in the stream


@dataclass(frozen=True)
class Template:
    """A fixture compiled into a format string; `fields` says what fills each placeholder."""

    name: str
    text: str
    fields: dict[str, tuple[str, Any]]
    shift: int  # seconds added to every timestamp (original `created` -> now)


@dataclass
class Stream:
    """The event bodies of a run, in send order, and the customids they link."""

    bodies: list[str] = field(default_factory=list)
    customids: list[str] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # bodies[i] belongs to customids[owners[i]]
    lifecycles: dict[str, int] = field(default_factory=dict)
    # Each customer with its lifecycle's templates: more events about the same customers (W7).
    people: list[tuple[Customer, list[Template]]] = field(default_factory=list)

    def signed(self, start: int, count: int, secret: str) -> list[tuple[str, str]]:
        """(Stripe-Signature, body) pairs for bodies[start:start+count], signed now."""
        now = int(time.time())
        return [(sign(body, secret, now), body) for body in self.bodies[start : start + count]]

    def customids_before(self, end: int) -> list[str]:
        """The customids of every customer with an event among bodies[:end]."""
        return [self.customids[i] for i in sorted(set(self.owners[:end]))]


def fixtures_dir(project_root: Path) -> Path:
    return (project_root / ".." / "shared" / "fixtures" / "stripe").resolve()


def compile_template(path: Path, now: int) -> Template:
    event = json.loads(path.read_text())
    fields: dict[str, tuple[str, Any]] = {}
    shift = now - int(event["created"])
    marked = _mark(event, fields, shift, key="")
    marked["id"] = _placeholder(fields, ("event_id", None))
    obj = marked["data"]["object"]
    if obj.get("object") in CUSTOMID_OBJECTS and isinstance(obj.get("metadata"), dict):
        obj["metadata"]["customid"] = _placeholder(fields, ("customid", None))
    if obj.get("object") == "checkout.session":
        obj["client_reference_id"] = _placeholder(fields, ("customid", None))
    if obj.get("object") in PAYMENT_OBJECTS and obj.get("customer") is None:
        # One lifecycle, one buyer: guest charges in the templates become this customer's.
        obj["customer"] = _placeholder(fields, ("id", "cus_fromtemplate"))
    text = json.dumps(marked, indent=2).replace("{", "{{").replace("}", "}}")
    text = re.sub(r'"@@(f\d+)@@"', r'"{\1}"', text)
    text = re.sub(r'"##(f\d+)##"', r"{\1}", text)  # timestamps are JSON numbers
    return Template(path.name, text, fields, shift)


def _placeholder(fields: dict[str, tuple[str, Any]], spec: tuple[str, Any], number=False) -> str:
    name = f"f{len(fields)}"
    fields[name] = spec
    return f"##{name}##" if number else f"@@{name}@@"


def _mark(value: Any, fields: dict[str, tuple[str, Any]], shift: int, key: str) -> Any:
    """A copy of `value` with owned ids, products and timestamps replaced by placeholders."""
    if isinstance(value, dict):
        return {k: _mark(v, fields, shift, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark(v, fields, shift, key) for v in value]
    if isinstance(value, str) and ID_PATTERN.match(value):
        return _placeholder(fields, ("id", value))
    if isinstance(value, str) and value.startswith("prod_"):
        return "prod_premium"
    if _is_timestamp(key, value):
        return _placeholder(fields, ("time", value + shift), number=True)
    return value


def _is_timestamp(key: str, value: Any) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return EPOCH_RANGE[0] <= value <= EPOCH_RANGE[1] and bool(TIMESTAMP_KEYS.search(key))


class Customer:
    """One simulated customer: its customid and the fresh ids it owns."""

    def __init__(self, number: int, tag: str) -> None:
        self.customid = f"bench_{tag}_{number}"
        self.ids: dict[str, str] = {}

    def id_for(self, original: str) -> str:
        prefix = original.split("_", 1)[0]
        key = prefix if prefix in SINGLE_PREFIXES else original
        if key not in self.ids:
            self.ids[key] = f"{prefix}_{os.urandom(12).hex()}"
        return self.ids[key]

    def render(self, template: Template) -> str:
        values = {name: self._value(spec) for name, spec in template.fields.items()}
        return template.text.format(**values)

    def _value(self, spec: tuple[str, Any]) -> Any:
        kind, arg = spec
        if kind == "event_id":
            return f"evt_{os.urandom(12).hex()}"
        if kind == "customid":
            return self.customid
        if kind == "id":
            return self.id_for(arg)
        return arg  # a shifted timestamp


def build_stream(
    project_root: Path, customers: int, tag: str | None = None, only: list[str] | None = None
) -> Stream:
    """Every customer's lifecycle, interleaved across INTERLEAVE customers at a time; `only`:
    these lifecycles (names of LIFECYCLES) instead of all of them in turn."""
    now = int(time.time())
    base = fixtures_dir(project_root)
    names = only or list(LIFECYCLES)
    compiled = {n: [compile_template(base / f, now) for f in LIFECYCLES[n]] for n in names}
    tag = tag or os.urandom(3).hex()
    stream = Stream(lifecycles={n: 0 for n in names})
    for group in _groups(customers, INTERLEAVE):
        lives = []
        for number in group:
            name = names[number % len(names)]
            stream.lifecycles[name] += 1
            lives.append((number, Customer(number, tag), compiled[name]))
            stream.customids.append(lives[-1][1].customid)
            stream.people.append((lives[-1][1], compiled[name]))
        for step in range(max(len(t) for _, _, t in lives)):
            for number, customer, templates in lives:
                if step < len(templates):
                    stream.bodies.append(customer.render(templates[step]))
                    stream.owners.append(number)
    return stream


def _groups(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))
