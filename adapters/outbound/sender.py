"""Signing and sending one delivery: a POST whose 2xx within the timeout is success.

The signature is Stripe's scheme, so an app verifies it with `stripe.WebhookSignature`:
`Entitlements-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body" with the endpoint's secret>`.

POSTs are blocking calls of urllib3 (a pool of kept-alive connections per endpoint), made from
threads: on two cores httpx's async client spent 2-3 ms of interpreter time per request
(230-350 POSTs/s to a local receiver); urllib3 from 32 threads made 4,700/s.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import urllib3

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


TIMED_OUT = Attempt(None, "timed out")


def connections(size: int) -> urllib3.PoolManager:
    """Kept-alive connections for up to `size` POSTs at once per host; no retries, no
    redirects followed (a 3xx is not a delivery)."""
    return urllib3.PoolManager(maxsize=size, block=False, retries=False)


def post(
    pool: urllib3.PoolManager, url: str, body: str, secret: str, timeout: float = TIMEOUT
) -> Attempt:
    """POST the body, signed; never raises for what the endpoint or the network does. The
    caller also bounds the whole exchange by the wall clock (`asyncio.wait_for`)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(body, secret),
    }
    try:
        response = pool.request(
            "POST",
            url,
            body=body.encode(),
            headers=headers,
            timeout=urllib3.Timeout(total=timeout),
            redirect=False,
            preload_content=False,
        )
        response.drain_conn()  # the body is not read: the status says it all
    except urllib3.exceptions.TimeoutError:
        return TIMED_OUT
    except (urllib3.exceptions.HTTPError, OSError) as error:
        return Attempt(None, f"{type(error).__name__}: {error}"[:MAX_ERROR])
    if 200 <= response.status < 300:
        return Attempt(response.status, None)
    return Attempt(response.status, f"HTTP {response.status}")
