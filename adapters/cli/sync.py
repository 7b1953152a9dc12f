"""Commands that read Stripe as a second source: backfill, import and reconcile.

Registered on the main group by `adapters/cli/main.py`. Each reads with the app's restricted key
(`stripe_api_key`, `stripe_api_base`) within `stripe_max_requests_per_second`, shows a progress
bar, ends with a summary line, and turns what Stripe refuses into one line and exit 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import click
from tqdm import tqdm

from adapters.bootstrap import Engine, bootstrap
from adapters.cli.audit import _app_id, _instant, _settings
from adapters.config import AppConfig
from adapters.stripe.listing import StripeAccessError, StripeLister, StripeUnavailable
from adapters.usecases.backfill import Backfill
from adapters.usecases.drift import Difference
from adapters.usecases.importing import Importer
from adapters.usecases.reconcile import Reconciler
from adapters.usecases.sync_runs import SyncRuns, recorded


def lister_of(app: AppConfig) -> StripeLister:
    if not app.stripe_api_key:
        raise click.ClickException(
            f"app {app.app_id!r} has no stripe_api_key: a restricted key (read-only) is needed"
        )
    return StripeLister(app.stripe_api_key, app.stripe_api_base, app.stripe_max_requests_per_second)


@contextmanager
def _stripe_errors() -> Iterator[None]:
    """What Stripe refuses, or keeps failing at, as one line and exit 1."""
    try:
        yield
    except (StripeAccessError, StripeUnavailable) as error:
        raise click.ClickException(str(error)) from error


@contextmanager
def _engine_of(app_id: str | None) -> Iterator[tuple[Engine, AppConfig]]:
    settings = _settings()
    app = settings.apps[_app_id(settings, app_id)]
    lister_of(app)  # a missing key is said before anything is opened
    engine = bootstrap(settings)
    try:
        yield engine, app
    finally:
        engine.close()


@click.command()
@click.option("--app", "app_id", help="App whose Stripe account to read (default: the first).")
@click.option("--since", "since_text", help="Only events created at or after this instant.")
@click.option("--until", "until_text", help="Only events created at or before this instant.")
def backfill(app_id: str | None, since_text: str | None, until_text: str | None) -> None:
    """Record the events Stripe still keeps (30 days) that no webhook brought."""
    since, until = _instant(since_text, "since"), _instant(until_text, "until")
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    with _engine_of(app_id) as (engine, app), _stripe_errors():
        run = Backfill(engine.log, engine.ingestor, lister_of(app), app.app_id)
        with (
            recorded(SyncRuns(engine.log), app.app_id, "backfill") as notes,
            tqdm(desc="backfill", unit="event", file=sys.stderr) as bar,
        ):
            summary = run.run(
                None if since is None else int(since),
                None if until is None else int(until),
                on_page=bar.update,
            )
            notes.counts = summary.counts()
        engine.project()  # the answers derived from what was recorded
    for error in summary.errors:
        click.echo(f"failed: {error}", err=True)
    click.echo(summary.render())
    if summary.failed:
        sys.exit(1)


def _pages_on(bar: tqdm) -> Callable[[str, int], None]:
    """A lister's page callback that moves `bar` and names the list being read."""

    def on_page(path: str, count: int) -> None:
        bar.set_postfix_str(path, refresh=False)
        bar.update(count)

    return on_page


@click.command("import")
@click.option("--app", "app_id", help="App whose Stripe account to read (default: the first).")
def import_objects(app_id: str | None) -> None:
    """Record Stripe's current objects as observations (moving in: day one)."""
    with _engine_of(app_id) as (engine, app), _stripe_errors():
        importer = Importer(engine.log, lister_of(app), app.app_id)
        with (
            recorded(SyncRuns(engine.log), app.app_id, "import") as notes,
            tqdm(desc="import", unit="object", file=sys.stderr) as bar,
        ):

            summary = importer.run(on_page=_pages_on(bar))
            notes.counts = summary.counts()
        engine.project()
    click.echo(summary.render())


@click.command()
@click.option("--app", "app_id", help="App whose Stripe account to read (default: the first).")
@click.option("--fix", is_flag=True, help="Record the observations that settle the differences.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON on standard output.")
def reconcile(app_id: str | None, fix: bool, as_json: bool) -> None:
    """Compare each customid's permissions with what Stripe's objects say now; exit 1 while
    differences remain."""
    with _engine_of(app_id) as (engine, app), _stripe_errors():
        run = Reconciler(engine, lister_of(app), app.app_id)
        with (
            recorded(SyncRuns(engine.log), app.app_id, "reconcile") as notes,
            tqdm(desc="reconcile: list", unit="object", file=sys.stderr) as bar,
        ):

            def progress(customids: list[str]) -> Iterable[str]:
                bar.close()  # the listing is over: the comparison gets a bar of its own
                return tqdm(customids, desc="reconcile: compare", unit="customid", file=sys.stderr)

            report = run.run(fix, _pages_on(bar), progress)
            notes.counts = report.counts()
            notes.differences = [d.to_json() for d in report.differences]
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        click.echo(report.render(), err=True)
    else:
        for line in table(report.differences):
            click.echo(line)
        click.echo(report.render())
    if report.remaining:
        sys.exit(1)


HEADER = ("customid", "permission", "engine", "stripe", "state", "objects")


def table(differences: list[Difference]) -> list[str]:
    """One line per difference, columns aligned; nothing when there is none."""
    if not differences:
        return []
    rows = [HEADER] + [
        (
            d.customid,
            d.permission_id,
            str(d.engine_code),
            str(d.stripe_code),
            d.stripe_state,
            ",".join(d.object_ids),
        )
        for d in differences
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
            for row in rows]  # fmt: skip
