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

from typing import Any

import orjson

# orjson refuses NaN/Infinity, unpaired surrogates and nesting deeper than 1,024 levels with a
# JSONDecodeError (a subclass of the standard library's), and is 3x faster than `json`; every
# reader of stored bodies uses it too, so what was accepted can always be read back.
MAX_DEPTH = 1024
INT64 = 2**63  # integers that become database columns must fit (SQLite refuses more)
_NUL_ESCAPE = "\\u0000"


class UnstorableJson(ValueError):
    """The body is JSON, but holds values that cannot be stored as they are."""


def load_json(raw: str) -> Any:
    """Parse a webhook body, refusing what storage cannot hold. Raises `json.JSONDecodeError`
    (malformed JSON, including the cases above) or `UnstorableJson` (a `ValueError`)."""
    if _NUL_ESCAPE in raw:  # a raw NUL is already invalid JSON; an escaped one is not
        raise UnstorableJson("a string contains a NUL character")
    return orjson.loads(raw)
