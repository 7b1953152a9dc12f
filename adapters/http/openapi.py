"""GET /openapi.json: the API's OpenAPI 3 document, written by hand as data.

Hand-written rather than generated from docstrings so that every response shape (Glassfy's
envelope included) is stated exactly; `tests/test_openapi.py` checks that the document and the
route list in `adapters/http/app.py` name the same operations, and runs schemathesis against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.http.errors import (
    GENERIC,
    INVALID_API_KEY,
    INVALID_PARAMETER,
    SUBSCRIBER_NOT_FOUND,
    TOO_MANY_REQUESTS,
)
from adapters.http.params import MAX_ID_LENGTH
from adapters.http.route_roles import role_needed
from adapters.roles import ROLES

JSON = "application/json"
Schema = dict[str, Any]


async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(document())


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Stripe entitlements",
            "version": "1",
            "description": "Stripe webhooks in, Glassfy-style permissions out. Errors use "
            'Glassfy\'s envelope: {"status": 401, "error": {"code": 1202, '
            '"description": "Invalid APIKEY"}}.',
        },
        "paths": _with_roles(_paths()),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An app's REST API key; it names the app and reads only it. "
                    f"Its role ({', '.join(ROLES)}; each may do what those before it may) "
                    "must allow the operation: see each operation's x-role.",
                }
            },
            "schemas": _schemas(),
            "responses": _error_responses(),
        },
    }


# --- paths ---------------------------------------------------------------------------------------


def _paths() -> dict[str, Any]:
    return {
        "/v1/stripe/webhooks/{app_id}": {"post": _webhook()},
        "/v1/connect_stripe": {"post": _connect_stripe()},
        "/v1/permissions": {"get": _permissions()},
        "/v1/subscriber": {"get": _subscriber()},
        "/v1/customers/{customid}/history": {"get": _history()},
        "/v1/catalogue": {"get": _get_catalogue(), "put": _put_catalogue()},
        "/v1/catalogue/preview": {"post": _preview_catalogue()},
        "/v1/sync": {"get": _sync()},
        "/v1/deliveries": {"get": _deliveries()},
        "/v1/deliveries/{id}/redeliver": {"post": _redeliver()},
        "/v1/endpoints/test": {"post": _test_endpoints()},
        "/healthz": {"get": _healthz()},
        "/metrics": {"get": _metrics()},
        "/openapi.json": {"get": _openapi()},
    }


def _with_roles(paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation behind a key states the role it needs (`adapters/http/route_roles.py`)
    and documents the 403 a key of a lesser role gets."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            if not operation.get("security"):
                continue
            role = role_needed(method.upper(), path)
            operation["x-role"] = role
            operation["description"] = f"Needs a key of role {role} or above. " + operation.get(
                "description", ""
            )
            operation["responses"].update(_errors("403"))
    return paths


def _webhook() -> dict[str, Any]:
    return {
        "operationId": "receiveStripeWebhook",
        "summary": "Verify a Stripe webhook, record it exactly once, answer 200 once durable",
        "description": "Not rate limited by default (server.webhook_rate_limit_per_second): "
        "a 429 only delays Stripe's retries.",
        "tags": ["stripe"],
        "parameters": [
            _path_param("app_id", "The app whose endpoint this is."),
            {
                "name": "Stripe-Signature",
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
                "description": "t=<timestamp>,v1=<HMAC-SHA256 of 't.body'>",
            },
        ],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _ref("StripeEvent")}},
        },
        "responses": {
            "200": _ok("WebhookReceived"),
            **_errors("400", "404", "413", "429", "503"),
        },
    }


def _connect_stripe() -> dict[str, Any]:
    return _rest(
        "connectStripe",
        "Link a Stripe customer to an app user (customid)",
        body="ConnectRequest",
        ok="ConnectResponse",
        errors=("400", "413"),
    )


def _permissions() -> dict[str, Any]:
    return _rest(
        "getPermissions",
        "Every permission of the catalogue for an app user, at an instant",
        params=[
            _customid_query(),
            _instant_query("at", "The instant to evaluate (default now)."),
            _instant_query("known_at", "Answer as the engine knew it then."),
            _query("explain", {"type": "string"}, "'true' adds the rule and events of each code."),
        ],
        ok="Permissions",
    )


def _subscriber() -> dict[str, Any]:
    return _rest(
        "getSubscriber",
        "Linked Stripe customers, subscriptions, purchases and permissions of an app user",
        params=[_customid_query()],
        ok="Subscriber",
        errors=("400", "404"),
    )


def _history() -> dict[str, Any]:
    return _rest(
        "getCustomerHistory",
        "Every domain event of an app user, oldest first, paginated",
        params=[
            _path_param("customid", "The app user.", max_length=MAX_ID_LENGTH),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size."),
            _query("cursor", {"type": "string"}, "nextCursor of the previous page."),
            _instant_query("since", "Inclusive lower bound on Stripe's created."),
            _instant_query("until", "Inclusive upper bound on Stripe's created."),
            _query(
                "type",
                {"type": "array", "items": {"type": "string"}},
                "Stripe event types or domain topics (repeatable).",
            ),
            _query(
                "include",
                {"type": "array", "items": {"type": "string", "enum": ["raw"]}},
                "'raw' adds the payload exactly as received.",
            ),
        ],
        ok="HistoryPage",
        errors=("400", "404"),
    )


def _get_catalogue() -> dict[str, Any]:
    return _rest("getCatalogue", "The app's catalogue of SKUs and permissions", ok="Catalogue")


def _put_catalogue() -> dict[str, Any]:
    return _rest(
        "putCatalogue",
        "Replace the catalogue; every customer's permissions are re-derived",
        body="Catalogue",
        ok="CatalogueWritten",
        errors=("400", "413"),
    )


def _preview_catalogue() -> dict[str, Any]:
    return _rest(
        "previewCatalogue",
        "Who would gain and who would lose which permission; nothing is changed",
        body="Catalogue",
        ok="CataloguePreview",
        errors=("400", "413"),
    )


def _sync() -> dict[str, Any]:
    return _rest(
        "getSync",
        "The app's last backfill, import and reconcile: when, their counts, the differences",
        ok="Sync",
    )


def _deliveries() -> dict[str, Any]:
    statuses = {"type": "string", "enum": ["pending", "failed", "dead", "delivered"]}
    return _rest(
        "listDeliveries",
        "Outbound webhook deliveries of the app (permissions.changed), newest first",
        params=[
            _query("status", statuses, "Only deliveries in this state."),
            _query(
                "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most this many."
            ),
        ],
        ok="Deliveries",
    )


def _redeliver() -> dict[str, Any]:
    return _rest(
        "redeliver",
        "Send a delivery again as soon as possible (a dead or delivered one too)",
        params=[_path_param("id", "The delivery's id (dl_...).")],
        ok="Redelivered",
        errors=("400", "404"),
    )


def _test_endpoints() -> dict[str, Any]:
    return _rest(
        "testEndpoints",
        "POST a signed endpoint.test event to each of the app's endpoints; what each answered",
        ok="EndpointsTested",
    )


def _healthz() -> dict[str, Any]:
    return {
        "operationId": "healthz",
        "summary": "Liveness and readiness (503 while the database is unreachable or lagging)",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": _ok("Health"),
            "503": {"description": "Not ready", "content": {JSON: {"schema": _ref("Health")}}},
        },
    }


def _metrics() -> dict[str, Any]:
    return {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }


def _openapi() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "This document",
        "tags": ["operations"],
        "security": [],
        "responses": {"200": _ok("Document")},
    }


# --- building blocks -----------------------------------------------------------------------------


def _rest(
    operation_id: str,
    summary: str,
    *,
    ok: str,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: tuple[str, ...] = ("400",),
) -> dict[str, Any]:
    """An operation of the app backend's API: Bearer key, rate limited, Glassfy errors."""
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["api"],
        "security": [{"bearerAuth": []}],
        "parameters": params or [],
        "responses": {"200": _ok(ok), **_errors(*sorted({*errors, "401", "429", "503"}))},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(body)}}}
    return operation


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: str) -> dict[str, Any]:
    return {"description": "OK", "content": {JSON: {"schema": _ref(schema)}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _path_param(name: str, description: str, max_length: int | None = None) -> dict[str, Any]:
    schema: Schema = {"type": "string", "minLength": 1}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query(name: str, schema: Schema, description: str, required: bool = False) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _customid_query() -> dict[str, Any]:
    schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    return _query("customid", schema, "The app's own user id.", required=True)


def _instant_query(name: str, description: str) -> dict[str, Any]:
    return _query(name, {"type": "string"}, f"{description} ISO 8601 or epoch seconds.")


_ERRORS: dict[str, tuple[str, tuple[int, ...]]] = {
    "400": ("Invalid parameter or body (1010)", (INVALID_PARAMETER,)),
    "401": ("Missing or invalid API key (1202)", (INVALID_API_KEY,)),
    "403": ("The API key's role does not allow this operation (1202)", (INVALID_API_KEY,)),
    "404": (
        "Subscriber (1001), app or delivery (1005) not found",
        (SUBSCRIBER_NOT_FOUND, GENERIC),
    ),
    "413": ("Request body too large (1005)", (GENERIC,)),
    "429": ("Too many requests (1200); see Retry-After", (TOO_MANY_REQUESTS,)),
    "503": ("Storage unavailable or request timed out; retry (1005)", (GENERIC,)),
}


def _error_responses() -> dict[str, Any]:
    return {
        f"E{status}": {
            "description": description,
            "content": {JSON: {"schema": _error_schema(int(status), codes)}},
        }
        for status, (description, codes) in _ERRORS.items()
    }


def _error_schema(status: int, codes: tuple[int, ...]) -> Schema:
    return {
        "allOf": [
            _ref("Error"),
            {
                "type": "object",
                "properties": {
                    "status": {"type": "integer", "enum": [status]},
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "integer", "enum": list(codes)}},
                    },
                },
            },
        ]
    }


# --- schemas -------------------------------------------------------------------------------------


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
TEXT_ID: Schema = {"type": "string", "minLength": 1}


def _schemas() -> dict[str, Schema]:
    return {
        "Error": _object(
            {
                "status": INTEGER,
                "error": _object({"code": INTEGER, "description": STRING}),
            }
        ),
        **_permission_schemas(),
        **_subscriber_schemas(),
        **_catalogue_schemas(),
        **_history_schemas(),
        **_delivery_schemas(),
        **_other_schemas(),
    }


def _permission_schemas() -> dict[str, Schema]:
    return {
        "Permissions": _object(
            {"subscriberId": STRING, "all": _array(_ref("Permission"))},
        ),
        "Permission": _object(
            {
                "permissionId": STRING,
                "entitlement": INTEGER,
                "isValid": BOOLEAN,
                "expireDate": _nullable(INTEGER),
                "accountableSkus": _array(_ref("AccountableSku")),
            },
            {"explain": _ref("Explanation")},
        ),
        "AccountableSku": _object(
            {
                "skuId": STRING,
                "productId": _nullable(STRING),  # null: the SKU names only a price
                "store": {"type": "integer", "enum": [4]},
                "isInIntroOfferPeriod": BOOLEAN,
                "isInTrialPeriod": BOOLEAN,
            }
        ),
        "Explanation": _object(
            {"rule": STRING, "eventIds": _array(STRING), "grants": _array(_ref("Grant"))}
        ),
        "Grant": _object(
            {
                "skuId": STRING,
                "sourceId": STRING,
                "entitlement": INTEGER,
                "expireDate": _nullable(INTEGER),
                "rule": STRING,
                "eventIds": _array(STRING),
            }
        ),
    }


def _subscriber_schemas() -> dict[str, Schema]:
    claim = {"customid": STRING, "source": STRING, "eventId": _nullable(STRING)}
    return {
        "Subscriber": _object(
            {
                "subscriberId": STRING,
                "customers": _array(_ref("Customer")),
                "subscriptions": _array(_ref("Subscription")),
                "purchases": _array(_ref("Purchase")),
                "permissions": _array(_ref("Permission")),
                "conflicts": _array(_object({"customerId": STRING, **claim})),
            }
        ),
        "Customer": _object(
            {
                "customerId": _nullable(STRING),
                "buyerKey": STRING,
                "claims": _array(_object(claim)),
            }
        ),
        "Subscription": _object(
            {
                "subscriptionId": STRING,
                "customerId": _nullable(STRING),
                "status": STRING,
                "skuIds": _array(STRING),
                "formerSkuIds": _array(STRING),
                "items": _array(_ref("LineItem")),
                "currentPeriodStart": _nullable(INTEGER),
                "currentPeriodEnd": _nullable(INTEGER),
                "cancelAtPeriodEnd": BOOLEAN,
                "cancelAt": _nullable(INTEGER),
                "canceledAt": _nullable(INTEGER),
                "endedAt": _nullable(INTEGER),
                "isInTrialPeriod": BOOLEAN,
                "entitlement": INTEGER,
                "expireDate": _nullable(INTEGER),
                "rule": STRING,
            }
        ),
        "Purchase": _object(
            {
                "purchaseId": STRING,
                "customerId": _nullable(STRING),
                "checkoutSessionId": _nullable(STRING),
                "paymentIntentId": _nullable(STRING),
                "skuIds": _nullable(_array(STRING)),
                "resolved": BOOLEAN,
                "paidAt": INTEGER,
                "expireDate": _nullable(INTEGER),
                "refunded": BOOLEAN,
                "entitlement": INTEGER,
                "rule": STRING,
                "resolutionError": _nullable(STRING),
            }
        ),
        "LineItem": _object(
            {
                "productId": _nullable(STRING),
                "priceId": _nullable(STRING),
                "quantity": INTEGER,
            }
        ),
    }


def _catalogue_schemas() -> dict[str, Schema]:
    catalogue = {
        "skus": _array(_ref("Sku")),
        "permissions": _array(_ref("CataloguePermission")),
    }
    by_permission = {"type": "object", "additionalProperties": _array(STRING)}
    return {
        # Refused otherwise (400, 1010): a document that is not plainly a catalogue would
        # replace the catalogue and take every permission away.
        "Catalogue": {**_object(catalogue), "additionalProperties": False},
        "Sku": {
            **_object(
                {"skuId": TEXT_ID},
                {
                    "productId": TEXT_ID,
                    "priceId": TEXT_ID,
                    "duration": {**TEXT_ID, "description": "ISO 8601 duration, e.g. P30D"},
                },
            ),
            "anyOf": [{"required": ["productId"]}, {"required": ["priceId"]}],
        },
        "CataloguePermission": _object({"permissionId": TEXT_ID, "skuIds": _array(TEXT_ID)}),
        "CatalogueWritten": _object({**catalogue, "changed": BOOLEAN}),
        "CataloguePreview": _object(
            {"gains": by_permission, "losses": by_permission, "customids": INTEGER}
        ),
        "ConnectRequest": _object(
            {
                "customid": {**TEXT_ID, "maxLength": MAX_ID_LENGTH},
                "customerid": {
                    "type": "string",
                    "pattern": "^cus_",
                    "maxLength": MAX_ID_LENGTH,
                },
            }
        ),
        "ConnectResponse": _object(
            {"status": INTEGER, "customid": STRING, "customerid": STRING, "changed": BOOLEAN}
        ),
    }


def _history_schemas() -> dict[str, Schema]:
    return {
        "HistoryPage": _object(
            {
                "subscriberId": STRING,
                "events": _array(_ref("HistoryEntry")),
                "nextCursor": _nullable(STRING),
            }
        ),
        "HistoryEntry": _object(
            {
                "position": INTEGER,
                "buyerKey": STRING,
                "version": INTEGER,
                "eventType": STRING,
                "topic": STRING,
                "stripeEventId": _nullable(STRING),
                "stripeType": _nullable(STRING),
                "apiVersion": _nullable(STRING),
                "stripeCreated": _nullable(INTEGER),
                "recordedAt": {"type": "number"},
                "facts": _array({"type": "object"}),
            },
            {
                "raw": _nullable(STRING),
                "appId": STRING,
                "customid": STRING,
                "previousCustomid": _nullable(STRING),
                # How it was learnt: a Stripe event's webhook, backfill or replay (null when
                # recorded before sources were kept); an observation's command; a link's source
                "source": _nullable(STRING),
                "checkoutSessionId": STRING,
                "status": _nullable(INTEGER),  # a refused line-item fetch: Stripe's HTTP status
                "reason": STRING,  # and its message
                # an announced change (outbound webhooks): what each endpoint was sent
                "changeId": STRING,
                "sequence": INTEGER,
                "changes": _array({"type": "object"}),
                "cause": {"type": "object"},
            },
        ),
    }


def _delivery_schemas() -> dict[str, Schema]:
    return {
        "Delivery": _object(
            {
                "id": STRING,
                "changeId": STRING,
                "customid": STRING,
                "sequence": INTEGER,
                "url": STRING,
                "status": {"type": "string", "enum": ["pending", "failed", "dead", "delivered"]},
                "attempts": INTEGER,
                "createdAt": INTEGER,
                "nextAttemptAt": _nullable(INTEGER),
                "lastAttemptAt": _nullable(INTEGER),
                "lastStatus": _nullable(INTEGER),
                "lastError": _nullable(STRING),
                "deliveredAt": _nullable(INTEGER),
            }
        ),
        "Deliveries": _object({"deliveries": _array(_ref("Delivery"))}),
        "Redelivered": _object({"delivery": _ref("Delivery")}),
        "EndpointsTested": _object(
            {
                "id": STRING,
                "endpoints": _array(
                    _object(
                        {
                            "url": STRING,
                            "delivered": BOOLEAN,
                            "status": _nullable(INTEGER),
                            "error": _nullable(STRING),
                        }
                    )
                ),
            }
        ),
    }


def _other_schemas() -> dict[str, Schema]:
    return {
        "StripeEvent": _object(
            {
                "id": STRING,
                "object": {"type": "string", "enum": ["event"]},
                "type": STRING,
                "created": INTEGER,
                "data": _object({"object": {"type": "object"}}),
            },
            {"api_version": _nullable(STRING), "livemode": BOOLEAN},
        ),
        "WebhookReceived": _object({"received": BOOLEAN, "duplicate": BOOLEAN}),
        "Health": _object(
            {"status": {"type": "string", "enum": ["ok", "catching_up", "unavailable"]}},
            {"database": STRING, "projections": {"type": "object"}},
        ),
        "Document": _object({"openapi": STRING, "paths": {"type": "object"}}),
        **_sync_schemas(),
    }


def _sync_schemas() -> dict[str, Schema]:
    run = _nullable(_ref("SyncRun"))
    return {
        "Sync": _object(
            {
                "appId": STRING,
                "reconcileEvery": {"type": "number"},
                "backfill": run,
                "import": run,
                "reconcile": run,
            }
        ),
        "SyncRun": _object(
            {
                "command": {"type": "string", "enum": ["backfill", "import", "reconcile"]},
                "startedAt": {"type": "number"},
                "finishedAt": {"type": "number"},
                "failed": BOOLEAN,
                "error": _nullable(STRING),
                "counts": {"type": "object", "additionalProperties": INTEGER},
                "differences": _array({"type": "object"}),
            }
        ),
    }
