"""What one applied event may have changed for the answers the read models keep.

`BuyerFactsProjection.apply` returns a `Touched` for each event: the buyer whose rows it wrote,
and every customid the buyer was linked to or claimed before and after the event; or an app's
catalogue; or, for an event it does not know, everything. The grants projection
(`projections/grants.py`) derives again the answers of exactly those customids (and of those
whose answers read the buyer's facts as a guest payment's).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Touched:
    app_id: str = ""
    buyer_key: str | None = None
    customids: tuple[str, ...] = ()  # linked to or claimed by the buyer, before and after
    catalogue: UUID | None = None  # an app's catalogue aggregate (its events name no app id)
    everything: bool = False  # an event the projection does not know: assume the worst


EVERYTHING = Touched(everything=True)
