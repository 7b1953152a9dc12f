"""`[database] read_url`: `serve`'s queries read the read models from a hot standby; every
write, the event log and the projector stay on the primary.

Here the "standby" is the same server reached under another `application_name`, which shows
which connections the reads use; tests/test_cluster.py runs a real streaming replica.
"""

from __future__ import annotations

import psycopg
import pytest

from adapters.bootstrap import bootstrap
from adapters.config import ConfigError, settings_from_dict
from adapters.http.app import build_http_app
from tests.conftest import API_KEYS, POSTGRES_URL, config_doc, post_webhook, postgres_schema
from tests.lifecycles import population

READER = "entitlements_read_url_test"


def connections_named(name: str) -> int:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    return row[0] if row else 0


def test_read_url_is_read_from_the_configuration_or_the_environment() -> None:
    doc = config_doc(
        "postgresql://p/db", database={"url": "postgresql://p/db", "read_url": "postgresql://r/db"}
    )
    assert settings_from_dict(doc, env={}).read_url == "postgresql://r/db"
    env = {"ENTITLEMENTS_READ_DATABASE_URL": "postgresql://other/db"}
    assert settings_from_dict(doc, env=env).read_url == "postgresql://other/db"
    assert settings_from_dict(config_doc("postgresql://p/db"), env={}).read_url is None
    bad = config_doc("sqlite:///x", database={"url": "sqlite:///x", "read_url": "sqlite:///y"})
    with pytest.raises(ConfigError, match="read_url"):
        settings_from_dict(bad, env={})


def test_queries_read_from_read_url_and_writes_go_to_the_primary() -> None:
    from starlette.testclient import TestClient

    with postgres_schema() as url:
        read_url = f"{url}&application_name={READER}"
        doc = config_doc(url, database={"url": url, "read_url": read_url})
        settings = settings_from_dict(doc, env={})
        engine = bootstrap(settings, read_url=settings.read_url)
        try:
            client = TestClient(build_http_app(engine))
            bodies = population(2)
            for raw in bodies:
                assert post_webhook(client, raw).status_code == 200
            engine.project()  # the projector's work, on the primary
            response = client.get(
                "/v1/permissions",
                params={"customid": "nobody"},
                headers={"Authorization": f"Bearer {API_KEYS['demo']}"},
            )
            assert response.status_code == 200, response.text
            assert connections_named(READER) >= 1  # the read pool is the standby's
        finally:
            engine.close()
        assert connections_named(READER) == 0
