"""`entitlements deliveries [--status S] [--app A]` and `entitlements deliveries redeliver ID`:
the outbound webhooks' deliveries, as GET /v1/deliveries lists them (registered by
`adapters/cli/main.py`). They read and write the deliveries table only: no engine, no projector.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from adapters.config import ConfigError, Settings, load_settings
from adapters.outbound.store import STATUSES, DeliveryStore
from projections.store import open_view_store


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from error


@contextmanager
def _store(settings: Settings) -> Iterator[DeliveryStore]:
    views = open_view_store(settings.database_url)
    try:
        yield DeliveryStore(views)
    finally:
        views.close()


def _apps(settings: Settings, app_id: str | None) -> list[str]:
    if app_id is None:
        return sorted(settings.apps)
    if app_id not in settings.apps:
        raise click.ClickException(f"unknown app {app_id!r}")
    return [app_id]


def _line(app_id: str, d: dict[str, Any]) -> str:
    error = f" ({d['lastError']})" if d["lastError"] else ""
    return (
        f"{d['id']}  {d['status']:<9}  {app_id}  {d['customid']}#{d['sequence']}  "
        f"attempts {d['attempts']}  {d['url']}{error}"
    )


@click.group(invoke_without_command=True)
@click.option("--status", type=click.Choice(STATUSES), help="Only deliveries in this state.")
@click.option("--app", "app_id", help="Only this app's deliveries (default: every app).")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.pass_context
def deliveries(ctx: click.Context, status: str | None, app_id: str | None, limit: int) -> None:
    """List outbound webhook deliveries, newest first (or redeliver one: `redeliver ID`)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    apps = _apps(settings, app_id)
    with _store(settings) as store:
        listed = [(a, d) for a in apps for d in store.listing(a, status, limit)]
    for app, delivery in listed:
        click.echo(_line(app, delivery))
    click.echo(f"{len(listed)} deliveries", err=True)


@deliveries.command("redeliver")
@click.argument("delivery_id")
@click.option("--app", "app_id", help="The delivery's app (default: whichever has it).")
def redeliver(delivery_id: str, app_id: str | None) -> None:
    """Send delivery ID again as soon as a worker can (dead or delivered ones too)."""
    settings = _settings()
    with _store(settings) as store:
        for app in _apps(settings, app_id):
            found = store.redeliver(app, delivery_id, time.time())
            if found is not None:
                click.echo(f"{delivery_id}: pending again ({app}, {found['customid']})")
                return
    raise click.ClickException(f"no delivery {delivery_id!r}")
