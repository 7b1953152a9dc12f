"""The role each REST route needs: one table, read by the routes' key check
(`adapters/http/auth.py`), the fast path and the OpenAPI document; and the console's.

A route missing from the table needs `admin`: a new route is closed to read and audit keys until
it is named here. Adding a route's role is one line.
"""

from __future__ import annotations

from adapters.roles import ADMIN, AUDIT, READ

# Signing in to the console (/console, adapters/console/) and every page of it.
CONSOLE_ROLE = AUDIT

ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("GET", "/v1/permissions"): READ,
    ("GET", "/v1/subscriber"): READ,
    ("GET", "/v1/customers/{customid}/history"): AUDIT,
    ("GET", "/v1/catalogue"): ADMIN,
    ("PUT", "/v1/catalogue"): ADMIN,
    ("POST", "/v1/catalogue/preview"): ADMIN,
    ("POST", "/v1/connect_stripe"): ADMIN,
    ("GET", "/v1/sync"): ADMIN,
    ("GET", "/v1/deliveries"): ADMIN,
    ("POST", "/v1/deliveries/{id}/redeliver"): ADMIN,
    ("POST", "/v1/endpoints/test"): ADMIN,
}


def role_needed(method: str, path: str) -> str:
    """The role a key needs for `method path` (a route's path template)."""
    method = "GET" if method == "HEAD" else method
    return ROUTE_ROLES.get((method, path), ADMIN)
