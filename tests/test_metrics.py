"""/metrics as Prometheus users expect: REST requests by route template, method and status
(the fast path's answers and 401/429 included), their latency, and the read side's progress."""

from __future__ import annotations

from pathlib import Path

from adapters.usecases.line_items import PassSummary, count_pass
from tests.test_entitlements_api import AUTH, connect
from tests.test_security import sqlite_client
from tests.test_webhooks import _sample


def test_rest_requests_are_counted_by_route_template_method_and_status(client) -> None:
    connect(client, "u1", "cus_M")
    before = client.get("/metrics").text
    client.get("/v1/permissions", params={"customid": "u1"}, headers=AUTH)  # the fast path
    client.get("/v1/permissions", params={"customid": "u1"})  # no key: 401
    client.get("/v1/customers/u1/history", headers=AUTH)
    client.get("/v1/customers/u2/history", headers=AUTH)  # 404, the same template
    client.get("/no/such/route/at/all")
    after = client.get("/metrics").text

    def added(*marks: str) -> float:
        return _sample(after, "entitlements_http_requests_total", *marks) - _sample(
            before, "entitlements_http_requests_total", *marks
        )

    assert added('route="/v1/permissions"', 'method="GET"', 'status="200"') == 1
    assert added('route="/v1/permissions"', 'status="401"') == 1
    assert added('route="/v1/customers/{customid}/history"', 'status="200"') == 1
    assert added('route="/v1/customers/{customid}/history"', 'status="404"') == 1
    assert added('route="(unmatched)"', 'status="404"') == 1
    assert "/no/such/route" not in after and "u2" not in after
    assert _sample(after, "entitlements_http_request_seconds_count", "/v1/permissions") >= 2


def test_429s_are_counted(tmp_path: Path) -> None:
    client = sqlite_client(tmp_path, {"rate_limit_per_second": 1, "rate_limit_burst": 1})
    try:
        statuses = [client.get("/v1/catalogue", headers=AUTH).status_code for _ in range(3)]
        metrics = client.get("/metrics").text
    finally:
        client.engine.close()  # type: ignore[attr-defined]
    assert statuses.count(429) == 2
    assert _sample(metrics, "entitlements_http_requests_total", 'status="429"') >= 2


def test_the_read_sides_position_and_the_logs_are_exposed(client, engine) -> None:
    connect(client, "u1", "cus_M")
    engine.project()
    metrics = client.get("/metrics").text
    head = engine.log.recorder.max_notification_id()
    assert _sample(metrics, "entitlements_event_log_position ") == head
    assert _sample(metrics, "entitlements_projection_position{") == head
    assert _sample(metrics, "entitlements_projection_lag_events{") == 0


def test_checkout_resolutions_are_counted_by_outcome(client) -> None:
    before = client.get("/metrics").text
    count_pass(PassSummary(found=4, resolved=2, failed=1, refused=1))
    after = client.get("/metrics").text
    for outcome, count in (("resolved", 2), ("failed", 1), ("refused", 1)):
        mark = f'entitlements_checkout_resolutions_total{{outcome="{outcome}"}}'
        assert _sample(after, mark) - _sample(before, mark) == count
