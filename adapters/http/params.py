"""Query and body parameters: parsed once, refused with Glassfy's 1010 when invalid."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from adapters.http.errors import bad_request
from adapters.stripe.sanity import UnstorableJson, load_json

MAX_ID_LENGTH = 255


def required_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"missing parameter {name!r}")
    if len(value) > MAX_ID_LENGTH:
        raise bad_request(f"{name!r} is longer than {MAX_ID_LENGTH} characters")
    return no_nul(value, name)


def instant(value: str | None, name: str, default: float | None = None) -> float | None:
    """An instant given as ISO 8601 (naive = UTC) or epoch seconds."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # nan and inf compare and convert to nothing sensible
            raise bad_request(f"{name!r} must be a finite number of epoch seconds")
        return seconds
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise bad_request(f"{name!r} must be an ISO 8601 time or epoch seconds") from error
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def no_nul(value: str, name: str) -> str:
    """PostgreSQL cannot store NUL characters: refused on every backend alike."""
    if "\x00" in value:
        raise bad_request(f"{name!r} must not contain NUL characters")
    if not value.isascii():  # a lone surrogate cannot be stored (nor encoded as UTF-8)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise bad_request(f"{name!r} is not valid Unicode") from error
    return value


def flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


async def json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, parsed as webhooks are (`load_json`): nesting too deep for the stack,
    lone surrogates and NULs are refused here, with nothing written, not a 500 later."""
    from adapters.http.body import read_limited

    body = await read_limited(request, max_bytes)
    try:
        return load_json(body.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(f"malformed JSON body: {error}") from error
    except UnstorableJson as error:
        raise bad_request(f"unusable JSON body: {error}") from error
