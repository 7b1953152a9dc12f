"""Signing and sending one delivery: a POST whose 2xx within the timeout is success.

The signature is Stripe's scheme, so an app verifies it with `stripe.WebhookSignature`:
`Entitlements-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body" with the endpoint's secret>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass

import httpx

SIGNATURE_HEADER = "Entitlements-Signature"
TIMEOUT = 10.0  # seconds: a 2xx later than this is a failure (PRODUCT.md)
USER_AGENT = "entitlements-webhooks/1"
MAX_ERROR = 300  # characters of an error kept on a delivery


def signature(body: str, secret: str, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


@dataclass(frozen=True)
class Attempt:
    status: int | None  # the HTTP status, None when none came (refused, timed out)
    error: str | None  # None: delivered

    @property
    def delivered(self) -> bool:
        return self.error is None


async def post(
    client: httpx.AsyncClient, url: str, body: str, secret: str, timeout: float = TIMEOUT
) -> Attempt:
    """POST the body, signed; never raises for what the endpoint or the network does. The
    whole exchange must end within `timeout` (httpx's own timeouts are per phase)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(body, secret),
    }
    try:
        request = client.post(url, content=body.encode(), headers=headers)
        response = await asyncio.wait_for(request, timeout)
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(None, "timed out")
    except httpx.HTTPError as error:
        return Attempt(None, f"{type(error).__name__}: {error}"[:MAX_ERROR] or "request failed")
    if 200 <= response.status_code < 300:
        return Attempt(response.status_code, None)
    return Attempt(response.status_code, f"HTTP {response.status_code}")


def client(timeout: float = TIMEOUT, connections: int = 64) -> httpx.AsyncClient:
    """One client per worker; redirects are not followed (a 3xx is not a delivery)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
