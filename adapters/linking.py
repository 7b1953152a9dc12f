"""Linking a Stripe customer to an app user id (Glassfy's connect_stripe).

A link is seen by the app's next query on any host: `link` returns once the read models have
applied it (the projector derives the answers of both owners, the old and the new).
"""

from __future__ import annotations

from adapters.appending import next_in_history, save_retrying
from adapters.eventstore import EventLog
from domain.aggregates import Buyer
from projections.buyer_facts import CONNECT, claims_of, link_of_buyer
from projections.follower import Follower

WAIT_SECONDS = 10.0  # for the read models to apply what was recorded before, and the link


class Linker:
    def __init__(self, log: EventLog, follower: Follower) -> None:
        self.log = log
        self.follower = follower

    def link(self, app_id: str, customid: str, customer_id: str) -> bool:
        """Record the link; relinking to another customid is a transfer, on record with the
        previous owner. False (nothing written) when that exact link already stands."""
        # The previous owner is read from the read models once they hold what was recorded.
        self.follower.wait_for(self.log.recorder.max_notification_id() or 0, WAIT_SECONDS)
        with self.follower.reading() as cursor:
            previous = link_of_buyer(cursor, app_id, customer_id)
            explicit = [c for c in claims_of(cursor, app_id, customer_id) if c.source == CONNECT]
        if explicit and max(explicit, key=lambda c: c.position).customid == customid:
            return False

        def build() -> list:
            registration, bid, version = next_in_history(self.log, app_id, customer_id)
            linked = Buyer.CustomidLinked(
                originator_id=bid,
                originator_version=version,
                timestamp=Buyer.Event.create_timestamp(),
                customid=customid,
                previous_customid=previous,
                source=CONNECT,
            )
            return [*registration, linked]

        saved = save_retrying(self.log, build, already_done=lambda: False)
        self.follower.wait_for(saved, WAIT_SECONDS)
        return True
