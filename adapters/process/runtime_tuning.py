"""Garbage-collector and thread-switch settings for a long-running server process.

CPython's default (a young-generation collection every 700 allocations) promotes the objects a
request is still using into the old generation, whose full collections then walk every object
the process keeps (the answer cache, decoded facts, a kept history): 40-50 ms pauses, several per
second while an auditor queries a long history (W5 in docs/benchmarks.md). A larger young
generation lets a request's objects die young, and objects built at start-up are left out of
collections altogether.

The event loop shares the GIL with threads that read PostgreSQL, write the log and project: each
time it makes a system call (a socket write per response) it lets go of the GIL, and to get it
back it waits for the thread holding it to be asked to switch, every 5 ms by default. At
thousands of requests per second that wait is most of a request's latency (W3 PostgreSQL:
9.7k -> 13.3k queries/s, webhook p99 80 -> 38 ms with 0.5 ms).
"""

from __future__ import annotations

import gc
import sys

YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)
MIDDLE_THRESHOLD = 20  # young collections between middle ones (default: 10)
SWITCH_INTERVAL = 0.0005  # seconds a thread holds the GIL while another waits (default: 0.005)


def tune_for_server() -> None:
    """Call once the process has built what it keeps for its lifetime."""
    _, _, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, old)
    gc.collect()
    gc.freeze()  # start-up objects: never scanned again
    sys.setswitchinterval(SWITCH_INTERVAL)
