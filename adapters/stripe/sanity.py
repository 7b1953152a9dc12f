"""Loading a webhook body as JSON that every store and read model can hold.

`json.loads` accepts things Stripe never sends and our storage cannot keep: lone UTF-16
surrogates (`"\\ud800"`: not encodable as UTF-8, so the write fails and the sender would retry a
poison event for days), NUL characters (PostgreSQL text refuses them, so the projection that
copies the field would stall forever on that event), integers beyond 64 bits (SQLite refuses
them), `NaN`/`Infinity` (not JSON), and nesting so deep that the decoder overflows the stack
(`RecursionError`, which would otherwise surface as a 500). Such a body is refused up front, with
nothing written, rather than accepted and left to jam a read model later.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # Stripe payloads nest about ten levels deep
INT64 = 2**63


class UnstorableJson(ValueError):
    """The body is JSON, but holds values that cannot be stored as they are."""


def load_json(raw: str) -> Any:
    """`json.loads`, refusing what storage cannot hold. Raises `json.JSONDecodeError` for
    malformed JSON and `UnstorableJson` (a `ValueError`) for the cases in the module docstring."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as error:
        raise UnstorableJson(f"JSON nested deeper than {MAX_DEPTH} levels") from error
    check_storable(value)
    return value


def check_storable(value: Any) -> None:
    """Walk the document without recursion (it may be deep) and refuse unstorable values."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, bool | float) or item is None:
            continue
        elif isinstance(item, int):
            if not -INT64 <= item < INT64:
                raise UnstorableJson("an integer does not fit in 64 bits")
        elif depth > MAX_DEPTH:
            raise UnstorableJson(f"JSON nested deeper than {MAX_DEPTH} levels")
        elif isinstance(item, dict):
            pending.extend((key, depth) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        else:
            pending.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise UnstorableJson("a string contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UnstorableJson("a string contains an unpaired UTF-16 surrogate") from error


def _refuse_constant(name: str) -> Any:
    raise UnstorableJson(f"{name} is not a JSON number")
