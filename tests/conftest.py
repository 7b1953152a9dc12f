"""Shared fixtures: every behaviour runs on SQLite and on PostgreSQL.

PostgreSQL tests need `ENTITLEMENTS_TEST_POSTGRES_URL` (scripts/test starts a throwaway server and
sets it). Each test gets its own PostgreSQL schema, dropped afterwards, so tests never share state.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from adapters.bootstrap import Engine, bootstrap
from adapters.config import settings_from_dict
from adapters.http.app import build_http_app
from adapters.stripe.envelope import parse_event
from adapters.stripe.signature import sign
from adapters.usecases.ingest import Webhook
from domain.catalogue import Catalogue

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT.parent / "shared" / "fixtures" / "stripe"
POSTGRES_URL = os.environ.get("ENTITLEMENTS_TEST_POSTGRES_URL")

SECRETS = {"demo": "whsec_test_demo", "other": "whsec_test_other"}
API_KEYS = {"demo": "demo-key", "other": "other-key"}


def fixture_files() -> list[Path]:
    return sorted((FIXTURES / "events").glob("*.json")) + sorted(
        (FIXTURES / "events-newer").glob("*.json")
    )


def config_doc(database_url: str, **overrides: Any) -> dict[str, Any]:
    apps = {
        app_id: {"webhook_secrets": [SECRETS[app_id]], "rest_api_keys": [API_KEYS[app_id]]}
        for app_id in SECRETS
    }
    doc: dict[str, Any] = {"database": {"url": database_url}, "apps": apps}
    doc.update(overrides)
    return doc


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL naming a fresh, empty PostgreSQL schema, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("ENTITLEMENTS_TEST_POSTGRES_URL is not set (scripts/test sets it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'entitlements.sqlite'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@contextlib.contextmanager
def fresh_engine(backend: str, catalogue: dict[str, Any] | None = None) -> Iterator[Engine]:
    """An engine on a new, empty database (for Hypothesis examples, which cannot use
    function-scoped fixtures), with the demo app's catalogue set when one is given."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite:///{folder}/entitlements.sqlite"
        else:
            url = stack.enter_context(postgres_schema())
        engine = bootstrap(settings_from_dict(config_doc(url), env={}))
        stack.callback(engine.close)
        if catalogue is not None:
            engine.catalogues.replace("demo", Catalogue.from_json(catalogue))
        yield engine


def ingest(engine: Engine, bodies: list[str], app_id: str = "demo") -> None:
    """Record Stripe events in process, as the webhook endpoint would after verification."""
    for raw in bodies:
        envelope, _ = parse_event(raw)
        engine.ingestor.record(Webhook(app_id, envelope, raw))


def settle(engine: Engine) -> None:
    """Let the read models apply everything recorded so far and derive what is due (what the
    projector does in the background), so that a query made next sees it."""
    engine.project()


@pytest.fixture
def settings_doc(database_url: str) -> dict[str, Any]:
    return config_doc(database_url)


@pytest.fixture
def engine(settings_doc: dict[str, Any]) -> Iterator[Engine]:
    engine = bootstrap(settings_from_dict(settings_doc, env={}))
    yield engine
    engine.close()


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    """The HTTP API, with the read models following the log in a thread (as `serve` with
    `projector = "thread"`): writes that wait for their effects (a link, a catalogue) see them
    projected. Tests that query right after a webhook `settle` first."""
    engine.follower.start_background(poll_interval=0.05)
    with TestClient(build_http_app(engine), raise_server_exceptions=False) as test_client:
        yield test_client


def signed_headers(raw: str, app_id: str = "demo", timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Stripe-Signature": sign(raw, SECRETS[app_id], stamp),
        "Content-Type": "application/json",
    }


def post_webhook(client: TestClient, raw: str | bytes, app_id: str = "demo", **kwargs: Any) -> Any:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    headers = kwargs.pop("headers", None) or signed_headers(text, app_id)
    return client.post(f"/v1/stripe/webhooks/{app_id}", content=raw, headers=headers, **kwargs)


def make_event(event_type: str, obj: dict[str, Any], **envelope: Any) -> str:
    """A Stripe event body built around `obj` (for cases no real payload covers)."""
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": event_type,
        "api_version": "2022-11-15",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
    }
    event.update(envelope)
    return json.dumps(event)
