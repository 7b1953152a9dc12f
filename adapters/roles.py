"""What a REST API key may do: its role, and the role each route needs.

Roles are ordered: each may do what those before it may. A key written as a plain string in
`rest_api_keys` is `admin` (what every key could do before roles existed), so configurations
written then keep working.
"""

from __future__ import annotations

READ = "read"  # an app's backend: what its users may do now (or at an instant)
AUDIT = "audit"  # support and auditors: read, plus histories, exports and the console
ADMIN = "admin"  # everything: catalogues, links, syncs, deliveries

ROLES = (READ, AUDIT, ADMIN)
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def allows(role: str, needed: str) -> bool:
    """Whether a key of `role` may do what needs `needed`."""
    return _RANK[role] >= _RANK[needed]
