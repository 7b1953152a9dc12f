"""Stripe-Signature verification (HMAC-SHA256 over "t.body"), through the stripe library."""

from __future__ import annotations

import time
from collections.abc import Sequence

import stripe

DEFAULT_TOLERANCE = 300  # seconds, Stripe's own default


class BadSignature(ValueError):
    """The signature is missing, malformed, too old, or made with none of the app's secrets."""


def verify_signature(
    payload: str, header: str | None, secrets: Sequence[str], tolerance: int = DEFAULT_TOLERANCE
) -> None:
    """Accept when any of the app's secrets verifies (several while a secret is rolled)."""
    if not header:
        raise BadSignature("missing Stripe-Signature header")
    _refuse_future(header, tolerance)
    reason = "no signing secret configured"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError as error:
            reason = _reason(str(error))
        else:
            return
    raise BadSignature(reason)


def _refuse_future(header: str, tolerance: int) -> None:
    """The library refuses a `t` too far in the past only: one too far ahead (a clock far off,
    or a signature made to be replayed later) is refused alike."""
    stamps = [item.strip()[2:] for item in header.split(",") if item.strip().startswith("t=")]
    if not stamps:
        return  # the library says "malformed"
    try:
        stamp = int(stamps[0].strip())
    except ValueError:
        return
    if tolerance and stamp > time.time() + tolerance:
        raise BadSignature("timestamp outside the tolerance zone (in the future)")


def _reason(message: str) -> str:
    # The library's messages are safe to show (they never contain the secret); keep them short.
    if "tolerance" in message:
        return "timestamp outside the tolerance zone (replayed or delayed)"
    if "Unable to extract" in message:
        return "malformed Stripe-Signature header"
    return "no signature matches the payload"


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A valid Stripe-Signature header, as Stripe would send it (for tests and replays)."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
