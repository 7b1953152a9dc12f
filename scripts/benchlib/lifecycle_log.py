"""An event log of realistic Stripe lifecycles (`tests/lifecycles.py`), recorded in bulk the way
the engine records webhooks (`Ingestor.record_many`: receipts, buyer registrations and Stripe
events), with no projector running. W4 (`scripts/bench_rebuild.py`) rebuilds read models from
it; the growth run (`scripts/bench_scale.py`) grows one such log step by step.

Customers are numbered from 0 (`cus_gen<i>`, customid `user_cus_gen<i>`), so a log can be grown
later from the first customer it does not hold yet.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
if str(PROJECT / "tests") not in sys.path:
    sys.path.insert(0, str(PROJECT / "tests"))

from lifecycles import DAY, FATES, PRODUCTS, T0, event, invoice, lifecycle  # noqa: E402

from adapters.bootstrap import Engine, bootstrap  # noqa: E402
from adapters.config import settings_from_dict  # noqa: E402
from adapters.stripe.envelope import parse_event  # noqa: E402
from adapters.usecases.ingest import Webhook  # noqa: E402

APP_ID = "demo"
CUSTOMERS_PER_BATCH = 1000  # ~3,300 Stripe events, ~7,700 log events per transaction


def open_engine(url: str, catalogue: Path | None = None) -> Engine:
    """An engine on `url`; no projector runs: nothing projects behind our back. With
    `catalogue`, the app's catalogue is recorded first (once), as `serve` would seed it."""
    app: dict = {"webhook_secrets": ["whsec_x"], "rest_api_keys": ["k"]}
    if catalogue is not None:
        app["catalogue"] = str(catalogue)
    doc = {"database": {"url": url}, "apps": {APP_ID: app}}
    return bootstrap(settings_from_dict(doc, env={}))


def customer_bodies(first: int, count: int) -> list[str]:
    """Stripe webhook bodies of `count` customers from `first` on (the mix of
    `lifecycles.population`), interleaved as real traffic is: one event of each in turn."""
    lives = [
        lifecycle(i, PRODUCTS[i % 2], i % 6, FATES[i % len(FATES)], i % 3 == 0)
        for i in range(first, first + count)
    ]
    return [body for turn in itertools.zip_longest(*lives) for body in turn if body]


def build_log(url: str, size: int, catalogue: Path | None = None) -> dict[str, int]:
    """Append customers' lifecycles until the log holds at least `size` events; a log already
    that large is reused as it is. Returns how many events and customers the log holds."""
    engine = open_engine(url, catalogue)
    try:
        customer = customers_recorded(engine)
        while (total := engine.log.recorder.max_notification_id() or 0) < size:
            remaining = (size - total) // 8 + 1  # ~8.8 log events per customer
            count = min(CUSTOMERS_PER_BATCH, remaining)
            bodies = customer_bodies(customer, count)
            webhooks = [Webhook(APP_ID, parse_event(raw)[0], raw) for raw in bodies]
            outcomes = engine.ingestor.record_many(webhooks)
            errors = [o for o in outcomes if isinstance(o, Exception)]
            if errors:
                raise errors[0]
            customer += count
            progress(f"build {size:,}: {total:,} events")
        print(file=sys.stderr)
        return {"events": total, "customers": customer}
    finally:
        engine.close()


def renewal_body(index: int, event_id: str) -> str:
    """A new Stripe event about customer `index` of the log: a later invoice of its
    subscription, paid (`invoice.paid`), with its own event and invoice ids."""
    customer = f"cus_gen{index}"
    paid_at = T0 + (index % 6) * DAY + 60 * DAY  # after every event of its lifecycle
    number = zlib.crc32(event_id.encode()) + 2  # lifecycles use invoices 0 and 1
    paid = invoice(number, customer, f"sub_{customer}_0", PRODUCTS[index % 2], paid_at, True)
    return event(event_id, "invoice.paid", paid_at, paid)


def customers_recorded(engine: Engine) -> int:
    """How many generated customers the log already holds (they are numbered from 0)."""
    from domain.aggregates import buyer_id

    low, high = 0, 1
    while engine.log.last_version(buyer_id(APP_ID, f"cus_gen{high - 1}")) is not None:
        low, high = high, high * 2
    while low < high:  # the first customer not recorded lies in [low, high)
        middle = (low + high) // 2
        if engine.log.last_version(buyer_id(APP_ID, f"cus_gen{middle}")) is not None:
            low = middle + 1
        else:
            high = middle
    return low


def progress(text: str) -> None:
    print(f"\r{text}", end="", file=sys.stderr, flush=True)
