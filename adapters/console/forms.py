"""The console's form bodies (application/x-www-form-urlencoded, small) and its instants."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl

from starlette.requests import Request

from adapters.http.body import read_limited

MAX_FORM_BYTES = 16 * 1024


async def form_fields(request: Request) -> dict[str, str]:
    """The form's fields (the first of each name); parsed here rather than by Starlette, whose
    parser needs python-multipart for these few small fields."""
    body = await read_limited(request, MAX_FORM_BYTES)
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def iso(epoch: float | None) -> str:
    """An instant as the console shows and takes it: ISO 8601, UTC, to the second."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
