"""GET /v1/customers/{customid}/history: every domain event of an app user, oldest first.

Query parameters: `limit` (default 100, at most 1000), `cursor` (from the previous page's
`nextCursor`), `since` and `until` (inclusive bounds on Stripe's `created`; ISO 8601 or epoch
seconds), `type` (repeatable: a Stripe event type or a domain event topic), `include=raw`.
"""

from __future__ import annotations

import base64
import binascii

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.http.auth import authenticated_app
from adapters.http.errors import SUBSCRIBER_NOT_FOUND, ApiError, bad_request
from adapters.http.params import instant, no_nul, required_text
from adapters.usecases.history import MAX_PAGE, HistoryPage, entry_json
from projections.history import HistoryFilter

DEFAULT_PAGE = 100
_CURSOR_PREFIX = "h1:"


async def get_history(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    customid = required_text(request.path_params.get("customid"), "customid")
    where = history_filter(request)
    include_raw = "raw" in request.query_params.getlist("include")
    history = request.app.state.engine.history
    page = await run_in_threadpool(history.page, app.app_id, customid, where)
    if page is None:  # also when the customid belongs to another app: nothing of it shows
        raise ApiError(404, SUBSCRIBER_NOT_FOUND, f"subscriber {customid!r} not found")
    return JSONResponse(page_json(customid, page, include_raw))


def history_filter(request: Request) -> HistoryFilter:
    params = request.query_params
    return HistoryFilter(
        after=decode_cursor(params.get("cursor")),
        limit=page_limit(params.get("limit")),
        since=instant(params.get("since"), "since"),
        until=instant(params.get("until"), "until"),
        types=tuple(no_nul(t, "type") for t in params.getlist("type") if t),
    )


def page_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE
    try:
        limit = int(value)
    except ValueError as error:
        raise bad_request("'limit' must be an integer") from error
    if not 1 <= limit <= MAX_PAGE:
        raise bad_request(f"'limit' must be between 1 and {MAX_PAGE}")
    return limit


def encode_cursor(position: int) -> str:
    """Opaque to clients: they pass it back as is; we may change what it holds."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{position}".encode()).decode().rstrip("=")


def decode_cursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        if text.startswith(_CURSOR_PREFIX):
            position = int(text.removeprefix(_CURSOR_PREFIX))
            if 0 <= position < 2**63:  # a forged cursor must not overflow the database
                return position
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise bad_request("invalid 'cursor'")


def page_json(customid: str, page: HistoryPage, include_raw: bool) -> dict:
    return {
        "subscriberId": customid,
        "events": [entry_json(entry, include_raw) for entry in page.entries],
        "nextCursor": encode_cursor(page.next_after) if page.next_after is not None else None,
    }
