"""Finding a customer from what a support agent has at hand: the app's own user id (customid),
a Stripe customer id, a Stripe event id (each one indexed read), or an email, which Stripe is
asked about (`GET /v1/customers?email=`, with the app's restricted key): the engine keeps no
index of emails, and Stripe's customer is where an email is kept up to date."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.stripe.api import StripeApi, StripeApiError
from domain.aggregates import receipt_id
from projections.buyer_facts import buyers_of_customid, link_of_buyer


@dataclass(frozen=True)
class Found:
    customid: str | None  # None: the thing exists but is linked to no customid yet
    how: str  # what the query was taken for, in the user's words


def find_customer(engine, app_id: str, query: str) -> Found | None:
    """The customer `query` names in this app, else None."""
    with engine.follower.reading() as cursor:
        if buyers_of_customid(cursor, app_id, query):
            return Found(query, "customid")
        if query.startswith("cus_"):
            return _of_buyer(cursor, app_id, query, "Stripe customer")
    if "@" in query:
        return _by_email(engine, app_id, query)
    if query.startswith("evt_"):
        buyer_key = _buyer_of_event(engine, app_id, query)
        if buyer_key is not None:
            with engine.follower.reading() as cursor:
                return _of_buyer(cursor, app_id, buyer_key, "Stripe event")
    return None


def _of_buyer(cursor, app_id: str, buyer_key: str, how: str) -> Found | None:
    cursor.execute(
        "SELECT 1 FROM buyer_links WHERE app_id = ? AND buyer_key = ?", (app_id, buyer_key)
    )
    if cursor.fetchone() is None:
        return None
    return Found(link_of_buyer(cursor, app_id, buyer_key), how)


def _buyer_of_event(engine, app_id: str, event_id: str) -> str | None:
    """The buyer a Stripe event was recorded on, from its receipt (saved with it)."""
    stored = engine.log.recorder.select_events(receipt_id(app_id, event_id), limit=1)
    if not stored:
        return None
    return engine.log.mapper.to_domain_event(stored[0]).buyer_key


class EmailSearchUnavailable(Exception):
    """Stripe cannot be asked: the app has no `stripe_api_key`, or Stripe refused or failed
    (the message says which, never the key)."""


def _by_email(engine, app_id: str, email: str) -> Found | None:
    app = engine.settings.apps[app_id]
    if not app.stripe_api_key:
        raise EmailSearchUnavailable(
            f"Search by email asks Stripe, with the app's stripe_api_key: app {app_id} has none."
        )
    try:
        customer_ids = StripeApi(app.stripe_api_key, app.stripe_api_base).customer_ids_by_email(
            email
        )
    except StripeApiError as error:
        raise EmailSearchUnavailable(f"Stripe could not be asked: {error}") from error
    unlinked = None
    with engine.follower.reading() as cursor:
        for customer_id in customer_ids:
            found = _of_buyer(cursor, app_id, customer_id, "Stripe customer with this email")
            if found is not None and found.customid is not None:
                return found
            unlinked = unlinked or found
    return unlinked
