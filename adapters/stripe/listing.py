"""Paging Stripe's list endpoints with an app's restricted key, within Stripe's limits.

Through the official library (`stripe_api_base` honoured), read-only. What Stripe asks of a
client is kept here, once for every command that reads lists (backfill, import, reconcile): at
most `max_per_second` requests; a 429 waits for `Retry-After` (else backs off); 5xx and network
errors are retried with growing backoff; a refused key (401) or a missing read permission (403)
ends the command with one line that names what is missing, since asking again cannot help.

Each listed object comes with its JSON text exactly as Stripe sent it (cut out of the page's
body), so that what is recorded is what was fetched, not a re-serialisation.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import stripe

from adapters.stripe.api import CONNECT_TIMEOUT, PAGE_SIZE, READ_TIMEOUT, _describe

DEFAULT_MAX_PER_SECOND = 20.0  # Stripe allows 25 in test mode, 100 live
MAX_ATTEMPTS = 8  # per request, counting the first
FIRST_BACKOFF = 0.5  # seconds, doubling per failed attempt
LAST_BACKOFF = 30.0

# The restricted key permission each list needs, named as Stripe's dashboard names it.
PERMISSIONS = {
    "/v1/events": "Events: Read",
    "/v1/customers": "Customers: Read",
    "/v1/subscriptions": "Subscriptions: Read",
    "/v1/invoices": "Invoices: Read",
    "/v1/payment_intents": "PaymentIntents: Read",
    "/v1/charges": "Charges: Read",
    "/v1/refunds": "Refunds: Read",
    "/v1/disputes": "Disputes: Read",
    "/v1/credit_notes": "Credit notes: Read",
    "/v1/checkout/sessions": "Checkout Sessions: Read",
}


class StripeAccessError(RuntimeError):
    """Stripe refused the key, or the key lacks a read permission: one line, never the key."""


class StripeUnavailable(RuntimeError):
    """Stripe kept failing (5xx, 429, network) after every retry."""


@dataclass(frozen=True)
class Listed:
    obj: dict[str, Any]
    raw: str  # its JSON text as Stripe sent it


class RateLimiter:
    """At most `per_second` requests per second, shared by the threads of one command."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class StripeLister:
    """Read-only paging of one Stripe account's lists."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        max_per_second: float = DEFAULT_MAX_PER_SECOND,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=0,  # retried here, where the limits are known
            http_client=stripe.RequestsClient(timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)),
        )
        self.limiter = RateLimiter(max_per_second)
        self.sleep = sleep
        self.requests = 0  # made, retries included
        self.retries = 0

    def pages(
        self, path: str, params: dict[str, Any], starting_after: str | None = None
    ) -> Iterator[list[Listed]]:
        """Every page of a list, oldest request first (Stripe lists newest objects first),
        from just after `starting_after` when given (a resumed run)."""
        cursor = starting_after
        while True:
            query = {**params, "limit": PAGE_SIZE}
            if cursor:
                query["starting_after"] = cursor
            body = self.get(path, query)
            page = parse_page(path, body)
            yield page.items
            if not page.has_more or not page.items:
                return
            last = str(page.items[-1].obj.get("id"))
            if last == cursor:  # a broken answer would otherwise be asked for forever
                raise StripeUnavailable(f"GET {path}: the list does not move past {last}")
            cursor = last

    def get(self, path: str, params: dict[str, Any]) -> str:
        """The body of one GET, retried within Stripe's limits."""
        failure, wait = "", 0.0
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.retries += 1
                self.sleep(wait)
            self.limiter.wait()
            self.requests += 1
            try:
                return self._client.raw_request("get", path, **params).body
            except stripe.StripeError as error:
                wait = self._retry_after(path, error, attempt)
                failure = _describe(error)
            except OSError as error:  # a transport surprise outside the library's errors
                wait, failure = backoff(attempt), str(error)
        raise StripeUnavailable(f"GET {path}: {failure} (failing after {MAX_ATTEMPTS} tries)")

    def _retry_after(self, path: str, error: stripe.StripeError, attempt: int) -> float:
        """How long to wait before asking again; raises when asking again cannot help."""
        status = error.http_status if isinstance(error.http_status, int) else None
        if status == 401:
            raise StripeAccessError(
                f"Stripe refused the app's stripe_api_key (HTTP 401) on GET {path}: "
                "check the key (a restricted key, rk_...)"
            ) from error
        if status == 403:
            needed = PERMISSIONS.get(path, "read")
            raise StripeAccessError(
                f"the app's stripe_api_key lacks the permission {needed!r} (HTTP 403 on "
                f"GET {path}): add it to the restricted key"
            ) from error
        if status is not None and status < 500 and status != 429:
            raise StripeAccessError(f"GET {path}: {_describe(error)}") from error
        if status == 429:
            header = _header(error, "Retry-After")
            if header is not None:
                return min(header, LAST_BACKOFF)
        return backoff(attempt)


def backoff(attempt: int) -> float:
    """Doubling from FIRST_BACKOFF, with jitter so parallel clients do not retry together."""
    return min(LAST_BACKOFF, FIRST_BACKOFF * 2**attempt) * random.uniform(0.5, 1.0)


def _header(error: stripe.StripeError, name: str) -> float | None:
    headers = error.headers or {}
    value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Page:
    items: list[Listed]
    has_more: bool


def parse_page(path: str, body: str) -> Page:
    """A list page: its objects, each with its own text from the body."""
    try:
        page = json.loads(body)
    except ValueError as error:
        raise StripeUnavailable(f"GET {path}: the answer is not JSON") from error
    data = page.get("data") if isinstance(page, dict) else None
    if not isinstance(data, list):
        raise StripeUnavailable(f"GET {path}: the answer is not a list")
    texts = _element_texts(body, data)
    pairs = zip(data, texts, strict=True)
    items = [Listed(obj, raw) for obj, raw in pairs if isinstance(obj, dict)]
    return Page(items, page.get("has_more") is True)


def _element_texts(body: str, data: list[Any]) -> list[str]:
    """The text of each element of the top-level `data` array. Stripe writes `"object":
    "list"` first, so the first `"data"` key is the top-level one; each cut is checked
    against the parsed element, and a mismatch falls back to a re-serialisation."""
    decoder = json.JSONDecoder()
    start = body.find('"data"')
    index = body.find("[", start) + 1 if start >= 0 else -1
    texts: list[str] = []
    for element in data:
        cut: str | None = None
        if index > 0:
            index = _skip(body, index, ",")
            try:
                value, end = decoder.raw_decode(body, index)
            except ValueError:
                index = -1
            else:
                cut, index = (body[index:end], end) if value == element else (None, -1)
        texts.append(cut if cut is not None else json.dumps(element, ensure_ascii=False))
    return texts


def _skip(body: str, index: int, also: str) -> int:
    while index < len(body) and (body[index].isspace() or body[index] in also):
        index += 1
    return index
