"""The cluster's outbound endpoint: an ASGI app (uvicorn, in namespace `ent-hooks`) that every
engine host's `[[apps.demo.endpoints]]` names. Each POST's signature is checked with the
endpoint's secret, as an app would (stripe's library); each one is recorded, one JSON line per
request in the file `CLUSTER_RECEIVER_LOG`: when it came and from which host, the change's id,
customid, sequence and cause, the entitlements it changes to, whether the signature verified,
and a digest of the body (to compare with the change log's). A verified POST is answered 200,
any other 400, `CLUSTER_RECEIVER_DELAY` seconds after it came (an app's endpoint does some work
first; and a host killed then has POSTs in flight that its lease must bring back).
`GET /count` says how many POSTs came.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import stripe

LOG = os.environ.get("CLUSTER_RECEIVER_LOG", "received.jsonl")
SECRET = os.environ.get("CLUSTER_RECEIVER_SECRET", "")
DELAY = float(os.environ.get("CLUSTER_RECEIVER_DELAY", "0"))
HEADER = b"entitlements-signature"

received = 0
_out = open(LOG, "a", buffering=1)  # noqa: SIM115 (one line per request, for the life of the app)


def record(body: bytes, signature: str | None, sender: str | None = None) -> bool:
    text = body.decode("utf-8", "replace")
    try:
        stripe.WebhookSignature.verify_header(text, signature or "", SECRET, 300)
        verified = True
    except (stripe.SignatureVerificationError, ValueError):
        verified = False
    try:
        change = json.loads(text)
        data = change["data"]
        fields = {
            "id": change["id"],
            "customid": data["customid"],
            "sequence": data["sequence"],
            "cause": data["cause"]["kind"],
            "to": [c["to"]["entitlement"] for c in data["changes"]],
        }
    except (ValueError, KeyError, TypeError):
        fields = {"id": None}
    line = {
        "t": time.time(),
        "from": sender,  # the engine host's address
        **fields,
        "verified": verified,
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    _out.write(json.dumps(line) + "\n")
    return verified


async def app(scope, receive, send):  # the bare ASGI interface
    global received
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":  # the sender died mid-request: not delivered
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer, status = b"", 200
    if scope["method"] == "GET":
        answer = str(received).encode()
    else:
        received += 1
        headers = dict(scope["headers"])
        signature = headers.get(HEADER)
        sender = (scope.get("client") or [None])[0]
        if not record(body, signature.decode() if signature else None, sender):
            status = 400
        await asyncio.sleep(DELAY)
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
