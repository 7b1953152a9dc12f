"""A small read-only client of Stripe's API, with an app's restricted key.

Only what the engine needs to read after the fact: the line items of a Checkout Session, which
webhooks never carry. Answers are returned as plain dicts parsed from the raw JSON body, never as
`StripeObject`s (not dicts since stripe-python 15; their `to_dict()` turns decimal strings into
`Decimal`, which `json.dumps` refuses). Timeouts are short and the library never retries on its
own: the caller decides when to try again (see `adapters/line_items.py`), so an unreachable or
slow Stripe cannot pile up requests.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import stripe

CONNECT_TIMEOUT = 3.0  # seconds
READ_TIMEOUT = 5.0
PAGE_SIZE = 100  # Stripe's maximum
MAX_PAGES = 50  # 5,000 line items: more means a broken answer, not a real session


# What asking again cannot change: no such object (404), a key Stripe does not accept (401) or
# one without the permission (403). Rate limits (429), 5xx and timeouts pass.
PERMANENT_STATUSES = frozenset({401, 403, 404})


class StripeApiError(RuntimeError):
    """Stripe could not be asked or did not answer usefully. `permanent`: it will answer the
    same until something changes on Stripe's side (see `PERMANENT_STATUSES`); otherwise try
    again later. `reason` is Stripe's message (or what failed), `status` its HTTP status."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message
        self.permanent = status in PERMANENT_STATUSES


class StripeApi:
    """Read-only calls to one Stripe account, through the official library."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        timeout: float | tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    def checkout_line_items(self, session_id: str) -> list[dict[str, Any]]:
        """Every line item of a Checkout Session (`GET /v1/checkout/sessions/{id}/line_items`,
        all pages), as the JSON objects Stripe sent."""
        path = f"/v1/checkout/sessions/{quote(session_id, safe='')}/line_items"
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            page = self._get(path, params)
            data = page.get("data")
            if not isinstance(data, list):
                raise StripeApiError(f"GET {path}: the answer is not a list")
            items.extend(item for item in data if isinstance(item, dict))
            if page.get("has_more") is not True or not items or "id" not in items[-1]:
                return items
            params = {"limit": PAGE_SIZE, "starting_after": items[-1]["id"]}
        raise StripeApiError(f"GET {path}: more than {MAX_PAGES} pages")

    def customer_ids_by_email(self, email: str, limit: int = 10) -> list[str]:
        """The ids of the customers Stripe holds with this email (`GET /v1/customers?email=`,
        an exact, case-sensitive match, as Stripe makes it), newest first."""
        page = self._get("/v1/customers", {"email": email, "limit": limit})
        data = page.get("data")
        if not isinstance(data, list):
            raise StripeApiError("GET /v1/customers: the answer is not a list")
        return [c["id"] for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)]

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.raw_request("get", path, **params)
            body = json.loads(response.body)
        except stripe.StripeError as error:
            status = error.http_status if isinstance(error.http_status, int) else None
            message = f"GET {path}: {_describe(error)}"
            raise StripeApiError(message, status, _stripe_message(error)) from error
        except (OSError, ValueError) as error:  # a transport surprise or a non-JSON body
            raise StripeApiError(f"GET {path}: {error}") from error
        if not isinstance(body, dict):
            raise StripeApiError(f"GET {path}: the answer is not a JSON object")
        return body


def _stripe_message(error: stripe.StripeError) -> str:
    """Stripe's own message, on one line (never the key)."""
    return " ".join((error.user_message or str(error) or type(error).__name__).split())[:300]


def _describe(error: stripe.StripeError) -> str:
    """One line: the HTTP status, or the network error, and Stripe's message (never the key).

    A connection error's text is mostly boilerplate; its last paragraph says what failed."""
    if isinstance(error, stripe.APIConnectionError):
        detail = str(error).rsplit("\n\n", 1)[-1].strip("()")
        return f"Stripe unreachable: {detail[:300]}"
    status = f"HTTP {error.http_status}: " if error.http_status else ""
    return f"{status}{_stripe_message(error)}"
