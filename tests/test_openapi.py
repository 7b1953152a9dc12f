"""GET /openapi.json describes exactly the routes of the app, and the app keeps its promises:
schemathesis generates requests from the document and finds no 5xx and no response outside it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route
from starlette.testclient import TestClient

from adapters.bootstrap import Engine, bootstrap
from adapters.config import settings_from_dict
from adapters.http.app import build_http_app
from tests.conftest import API_KEYS, config_doc, signed_headers

AUTH = {"Authorization": f"Bearer {API_KEYS['demo']}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 40  # per operation and backend: the whole run stays well under a minute
CATALOGUE = {
    "skus": [{"skuId": "monthly", "productId": "prod_A"}],
    "permissions": [{"permissionId": "premium", "skuIds": ["monthly"]}],
}


def test_the_document_is_served_as_openapi_3(client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_route_is_documented_and_every_documented_operation_exists(client) -> None:
    served = {
        (route.path, method.lower())
        for route in client.app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    paths = client.get("/openapi.json").json()["paths"]
    documented = {(path, method) for path, operations in paths.items() for method in operations}
    assert documented == served


def test_errors_are_documented_in_glassfys_envelope(client) -> None:
    doc = client.get("/openapi.json").json()
    envelope = doc["components"]["schemas"]["Error"]
    assert envelope["required"] == ["status", "error"]
    assert envelope["properties"]["error"]["required"] == ["code", "description"]
    unauthorized = doc["paths"]["/v1/permissions"]["get"]["responses"]["401"]
    assert unauthorized == {"$ref": "#/components/responses/E401"}


# --- schemathesis ----------------------------------------------------------------------------


@pytest.fixture
def fuzzed_engine(database_url: str) -> Iterator[Engine]:
    """No rate limit (every generated request must reach the handlers), a catalogue, and one
    linked customer so that some generated requests find data."""
    doc = config_doc(database_url, server={"rate_limit_per_second": 0})
    engine = bootstrap(settings_from_dict(doc, env={}))
    engine.follower.start_background(poll_interval=0.05)  # writes wait for their projection
    with TestClient(build_http_app(engine)) as client:
        client.put("/v1/catalogue", json=CATALOGUE, headers=AUTH).raise_for_status()
        client.post(
            "/v1/connect_stripe", json={"customid": "a", "customerid": "cus_A"}, headers=AUTH
        ).raise_for_status()
    yield engine
    engine.close()


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(fuzzed_engine) -> None:
    app = build_http_app(fuzzed_engine)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    api_routes = [route for route in app.routes if isinstance(route, Route)]  # not the console
    assert len(operations) == len(api_routes) - 1  # it leaves out /openapi.json itself
    with TestClient(app, raise_server_exceptions=False) as client:
        for operation in operations:
            if operation.path.startswith("/v1/stripe/webhooks/"):
                fuzz_webhooks(operation, client)
            else:
                fuzz(operation)


def _settings() -> Any:
    return settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def fuzz(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @_settings()
    def run(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    run()


def fuzz_webhooks(operation: Any, client: TestClient) -> None:
    """Generated Stripe events, correctly signed for the demo app, so that they get past the
    signature check and into parsing and storage (unsigned ones stop at a 400)."""
    strategy = operation.as_strategy(path_parameters={"app_id": "demo"})

    @given(case=strategy, signed=st.booleans())
    @_settings()
    def run(case: Any, signed: bool) -> None:
        raw = json.dumps(case.body)
        headers = signed_headers(raw) if signed else {"Stripe-Signature": "t=1,v1=00"}
        response = client.post(case.formatted_path, content=raw, headers=headers)
        case.validate_response(response, checks=CHECKS)

    run()
