"""Linking a Stripe customer to an app user id (Glassfy's connect_stripe).

A link is seen by the app's next query on any host: `link` returns once the read models have
applied it (the projector derives the answers of both owners, the old and the new).
"""

from __future__ import annotations

import random
import threading
import time

from eventsourcing.persistence import IntegrityError

from adapters.storage.appending import MAX_ATTEMPTS, WriteConflict, at_version
from adapters.storage.eventstore import EventLog
from domain.aggregates import Buyer, buyer_id
from projections.buyer_facts import CONNECT, claims_of, link_of_buyer
from projections.follower import Follower

WAIT_SECONDS = 10.0  # for the read models to apply what was recorded before, and the link
# Links of one customer made in this process take turns (a lock per stripe of customers, so
# the locks are bounded): otherwise each of N concurrent relinks would lose its race up to N
# times. Other hosts' concurrent links are caught by the append's version check.
LOCK_STRIPES = 64


class LinkNotSettled(RuntimeError):
    """The read models did not catch up in time to say who owns the customer now: nothing was
    written (the caller answers 503)."""


class Linker:
    def __init__(self, log: EventLog, follower: Follower) -> None:
        self.log = log
        self.follower = follower
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def link(self, app_id: str, customid: str, customer_id: str) -> bool:
        """Record the link; relinking to another customid is a transfer, on record with the
        previous owner. False (nothing written) when that exact link already stands."""
        lock = self._locks[hash((app_id, customer_id)) % LOCK_STRIPES]
        for attempt in range(MAX_ATTEMPTS):
            try:
                with lock:
                    saved = self._link_once(app_id, customid, customer_id)
            except IntegrityError:  # another event joined the history: read the owner again
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            if saved is None:
                return False
            self.follower.wait_for(saved, WAIT_SECONDS)
            return True
        raise WriteConflict("could not append the link after retries")

    def _link_once(self, app_id: str, customid: str, customer_id: str) -> int | None:
        """One try: the owner as of the history's newest event, and the link appended right
        after that event. A concurrent relink appended meanwhile makes the append fail (the
        version is taken), so each link event names the owner it really replaced."""
        last = self.log.last_version(buyer_id(app_id, customer_id))
        # The read models hold the history up to `last` once they reach the log's end as of now.
        position = self.log.recorder.max_notification_id() or 0
        if not self.follower.wait_for(position, WAIT_SECONDS):
            raise LinkNotSettled("the read models are behind; retry shortly")
        with self.follower.reading() as cursor:
            previous = link_of_buyer(cursor, app_id, customer_id)
            explicit = [c for c in claims_of(cursor, app_id, customer_id) if c.source == CONNECT]
        if explicit and max(explicit, key=lambda c: c.position).customid == customid:
            return None
        version = Buyer.INITIAL_VERSION if last is None else last + 1
        registration, bid, version = at_version(app_id, customer_id, version)
        linked = Buyer.CustomidLinked(
            originator_id=bid,
            originator_version=version,
            timestamp=Buyer.Event.create_timestamp(),
            customid=customid,
            previous_customid=previous,
            source=CONNECT,
        )
        return self.log.save(*registration, linked)[-1].notification.id
