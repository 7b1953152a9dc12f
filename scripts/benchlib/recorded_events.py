"""A recorded `GET /v1/events` with no latency, for W6 (`python -m benchlib.recorded_events
FILE PORT`, FILE a JSON array of the event bodies as text, oldest first).

Stripe's list semantics, newest first: `limit`, `starting_after`, `has_more`. Every page is
written out before the server starts, so answering costs no more than sending bytes: what W6
measures is the engine's backfill, not this stand-in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn

PAGE = 100  # what the lister asks for (Stripe's maximum)


def pages(bodies: list[str]) -> dict[str, bytes]:
    """starting_after ("" for the first page) -> the page's body."""
    newest_first = bodies[::-1]
    ids = [json.loads(body)["id"] for body in newest_first]
    found = {}
    for start in range(0, len(newest_first), PAGE):
        chunk = newest_first[start : start + PAGE]
        more = "true" if start + PAGE < len(newest_first) else "false"
        text = '{"object": "list", "data": [' + ", ".join(chunk) + "], "
        text += f'"has_more": {more}, "url": "/v1/events"}}'
        found[ids[start - 1] if start else ""] = text.encode()
    return found


def app(answers: dict[str, bytes]):
    empty = b'{"object": "list", "data": [], "has_more": false, "url": "/v1/events"}'

    async def serve(scope, receive, send) -> None:
        assert scope["type"] == "http"
        query = parse_qs(scope["query_string"].decode())
        body = answers.get(query.get("starting_after", [""])[0], empty)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return serve


def main(path: str, port: int) -> None:
    bodies = json.loads(Path(path).read_text())
    uvicorn.run(app(pages(bodies)), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
