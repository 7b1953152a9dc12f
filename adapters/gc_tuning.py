"""Garbage-collector settings for a long-running server process.

CPython's default (a young-generation collection every 700 allocations) promotes the objects a
request is still using into the old generation, whose full collections then walk every object
the process keeps (the answer cache, decoded facts, a kept history): 40-50 ms pauses, several per
second while an auditor queries a long history (W5 in docs/benchmarks.md). A larger young
generation lets a request's objects die young, and objects built at start-up are left out of
collections altogether.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)
MIDDLE_THRESHOLD = 20  # young collections between middle ones (default: 10)


def tune_for_server() -> None:
    """Call once the process has built what it keeps for its lifetime."""
    _, _, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, old)
    gc.collect()
    gc.freeze()  # start-up objects: never scanned again
