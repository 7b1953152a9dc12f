"""The webhooks this process refused lately (why, when, for which app), for the console's app
page: a bounded list in memory, as the log lines say the same to operators."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

KEPT = 200


@dataclass(frozen=True)
class Rejection:
    at: float
    app_id: str
    status: int
    reason: str


class RecentRejections:
    def __init__(self, kept: int = KEPT) -> None:
        self._items: deque[Rejection] = deque(maxlen=kept)
        self._lock = threading.Lock()

    def add(self, app_id: str, status: int, reason: str) -> None:
        with self._lock:
            self._items.append(Rejection(time.time(), app_id, status, reason))

    def of_app(self, app_id: str, limit: int = 20) -> list[Rejection]:
        """The app's latest rejections, newest first."""
        with self._lock:
            mine = [r for r in self._items if r.app_id == app_id]
        return mine[::-1][:limit]
