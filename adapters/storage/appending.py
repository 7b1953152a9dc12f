"""Appending to a buyer's history without replaying it, retrying lost races."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from adapters.storage.eventstore import EventLog
from domain.aggregates import Buyer, buyer_id

MAX_ATTEMPTS = 20


class WriteConflict(RuntimeError):
    """Other writers kept winning the race for this buyer; the caller should answer 5xx."""


def next_in_history(log: EventLog, app_id: str, buyer_key: str) -> tuple[list[Any], UUID, int]:
    """The buyer's registration (if it is new), its id, and the version of its next event."""
    last = log.last_version(buyer_id(app_id, buyer_key))
    return at_version(app_id, buyer_key, Buyer.INITIAL_VERSION if last is None else last + 1)


def at_version(app_id: str, buyer_key: str, version: int) -> tuple[list[Any], UUID, int]:
    """The same, given the version the buyer's history is at (its first for a new buyer, whose
    registration then comes before the event)."""
    if version == Buyer.INITIAL_VERSION:
        registration = Buyer(app_id, buyer_key).collect_events()
        return registration, registration[0].originator_id, version + 1
    return [], buyer_id(app_id, buyer_key), version


def save_retrying(
    log: EventLog, build: Callable[[], list[Any]], already_done: Callable[[], bool]
) -> int | None:
    """Save `build()`'s events in one transaction; the log position of the last. None when
    `already_done()` explains a uniqueness failure (a duplicate); otherwise a failure was a
    lost race, so rebuild and retry."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            recordings = log.save(*build())
        except IntegrityError:
            if already_done():
                return None
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        else:
            return recordings[-1].notification.id
    raise WriteConflict("could not append after retries")
