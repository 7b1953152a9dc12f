"""The `entitlements` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click
from tqdm import tqdm

from adapters.bootstrap import bootstrap
from adapters.cli.audit import audit, history, permissions
from adapters.cli.deliveries import deliveries
from adapters.cli.sync import backfill, import_objects, reconcile
from adapters.config import ConfigError, Settings, load_settings
from adapters.process.logging_setup import configure_logging
from adapters.process.runtime_tuning import tune_for_server
from adapters.usecases.projector_lease import LeasedProjector
from adapters.usecases.replay import ReplaySummary, event_files, replay_file

CONFIG_HELP = "TOML configuration (default: $ENTITLEMENTS_CONFIG, else the demo one)."


def _use_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        os.environ["ENTITLEMENTS_CONFIG"] = str(Path(value).resolve())


def config_option() -> click.Option:
    """`--config FILE`, taken before the command (`entitlements --config F serve`) or after
    it (`entitlements serve --config F`), where users type it first."""
    return click.Option(
        ["--config"],
        type=click.Path(dir_okay=False),
        expose_value=False,
        is_eager=True,
        callback=_use_config,
        help=CONFIG_HELP,
    )


@click.group()
def main() -> None:
    """Event-sourced entitlement engine for Stripe."""


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from error


@main.command()
@click.option("--host", help="Interface to bind (default from the configuration).")
@click.option("--port", type=int, help="Port (default from the configuration).")
@click.option("--workers", type=int, help="Worker processes (default 1).")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API with uvicorn."""
    import uvicorn

    from adapters.http.connections import GuardedHttpToolsProtocol
    from adapters.process.logging_setup import log_config, write_queued_lines_on_exit_signals

    settings = _settings()
    write_queued_lines_on_exit_signals()
    uvicorn.run(
        "adapters.http.asgi:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        log_level="info",
        log_config=log_config("INFO"),  # one JSON object per line, uvicorn's lines included
        http=GuardedHttpToolsProtocol,  # bounds header time and open connections
        timeout_keep_alive=int(settings.limits.keep_alive_timeout),
        timeout_graceful_shutdown=int(settings.limits.request_timeout) or None,
    )


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--app", "app_id", default=None, help="App whose history receives the events.")
def replay(paths: tuple[str, ...], app_id: str | None) -> None:
    """Ingest recorded Stripe events (JSON files, or directories of them)."""
    settings = _settings()
    app_id = app_id or next(iter(settings.apps))
    if app_id not in settings.apps:
        raise click.ClickException(f"unknown app {app_id!r}")
    files = event_files([Path(p) for p in paths])
    engine = bootstrap(settings)
    summary = ReplaySummary()
    try:
        for path in tqdm(files, desc="replay", unit="event", file=sys.stderr):
            summary.add(path, replay_file(engine.ingestor, app_id, path))
    finally:
        engine.close()
    click.echo(summary.render())
    if summary.rejected:
        sys.exit(1)


def _app_id(settings: Settings, app_id: str | None) -> str:
    chosen = app_id or next(iter(settings.apps))
    if chosen not in settings.apps:
        raise click.ClickException(f"unknown app {chosen!r}")
    return chosen


@main.command()
@click.option("--app", "app_id", help="Rebuild only this app's rows (default: every app).")
@click.option(
    "--projection",
    type=click.Choice(["all", "buyer_read_models"]),
    default="all",
    show_default=True,
    help="Which read models (buyer_read_models: the facts and the history).",
)
def rebuild(app_id: str | None, projection: str) -> None:
    """Rebuild read models from the first event; the live ones answer until the switch."""
    from projections.rebuild import rebuild as run_rebuild

    settings = _settings()
    if app_id is not None:
        _app_id(settings, app_id)  # an unknown app is refused before any work (or progress bar)
    engine = bootstrap(settings)
    tune_for_server()  # a long run that allocates per event, like the server
    try:
        total = engine.log.recorder.max_notification_id() or 0
        for follower in (engine.follower,):
            name = follower.projection.name
            if projection not in ("all", name):
                continue
            with tqdm(total=total, desc=f"rebuild {name}", unit="event", file=sys.stderr) as bar:
                report = run_rebuild(
                    engine.log,
                    engine.views,
                    follower.projection,
                    on_batch=lambda count, _: bar.update(count),
                    app_id=app_id and _app_id(settings, app_id),
                )
            rate = report.events / report.seconds if report.seconds else 0.0
            click.echo(
                f"rebuilt {name}: {report.events} events in {report.seconds:.1f} s "
                f"({rate:,.0f}/s); generation {report.old_generation} -> {report.new_generation}"
            )
    finally:
        engine.close()


@main.command()
@click.option("--once", is_flag=True, help="Catch up once and exit (default: keep following).")
@click.option("--poll", type=float, default=0.25, show_default=True, help="Seconds between polls.")
@click.option("--parent", type=int, help="Exit once the process with this id is gone.")
@click.option("--nice", type=int, default=0, help="Lower this process's CPU priority by N.")
@click.option("--report-fd", type=int, hidden=True, help="Write the role (active, standby) here.")
def project(once: bool, poll: float, parent: int | None, nice: int, report_fd: int | None) -> None:
    """Run the read models as a separate worker. Several may run: one at a time holds the
    lease and applies, the others stand by (exit code 75 when the lease was lost)."""
    if nice:
        os.nice(nice)
    engine = bootstrap(_settings())
    follower = engine.follower
    projector: LeasedProjector | None = None
    try:
        if once:  # without the lease: a batch counts once whoever applies it
            follower.seed()
            applied = engine.project()
            click.echo(f"{follower.projection.name}: applied {applied} events")
            return
        if parent is None:
            click.echo("following the event log; Ctrl-C to stop", err=True)
        else:  # started by `serve`: a long-running process like it, logging as it does
            configure_logging()
            tune_for_server()
        on_role = None if report_fd is None else _reporting_role(report_fd)
        projector = LeasedProjector(engine, poll, on_lost=_exit_at_once, on_role=on_role)
        if engine.outbound is not None:  # deliveries sent from every host; published by one
            engine.outbound.start(publish=False)
        thread = projector.start()
        # An orphan is adopted by another process: its parent id changes.
        while thread.is_alive() and parent in (None, os.getppid()):
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if projector is not None:
            projector.stop()  # the lease released: a standby takes over
        engine.close()


LEASE_LOST = 75  # EX_TEMPFAIL: `serve` (or systemd) starts the projector again, as a standby


def _exit_at_once() -> None:
    """The lease is lost, so another projector may be applying already: nothing more of this
    one may commit. The process ends now; its open transactions die with it."""
    # The lines queued (the lease's loss among them) are written, for a second at most: a
    # stalled stderr must not keep this process applying.
    flushing = threading.Thread(target=logging.shutdown, daemon=True)
    flushing.start()
    flushing.join(1.0)
    os._exit(LEASE_LOST)


def _reporting_role(fd: int) -> Callable[[bool], None]:
    """Tells `serve` (adapters/process/projector.py) whether this projector is the active one."""

    def report(active: bool) -> None:
        with contextlib.suppress(OSError):  # `serve` gone: this process ends shortly
            os.write(fd, b"active\n" if active else b"standby\n")

    return report


@main.command("resolve-checkouts")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Also ask again for checkouts Stripe refused for good (404, 401, 403).",
)
def resolve_checkouts(retry_failed: bool) -> None:
    """Fetch the line items of checkouts whose products are unknown (one pass)."""
    engine = bootstrap(_settings())
    try:
        engine.project()  # the checkouts recorded so far, whether or not a server runs
        summary = engine.resolver.run_once(retry_failed=retry_failed)
    finally:
        engine.close()
    for error in summary.errors:
        click.echo(f"failed: {error}", err=True)
    click.echo(summary.render())
    if summary.failed or summary.refused:
        sys.exit(1)


@main.group()
def catalogue() -> None:
    """Read or replace an app's catalogue of SKUs and permissions."""


@catalogue.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--app", "app_id", help="App whose catalogue to replace (default: the first).")
@click.option("--dry-run", is_flag=True, help="Only show who would gain and who would lose.")
def catalogue_apply(file: str, app_id: str | None, dry_run: bool) -> None:
    """Replace the catalogue from a JSON or TOML FILE (or preview it with --dry-run)."""
    import time

    from adapters.usecases.catalogues import load_catalogue_file
    from domain.catalogue import InvalidCatalogue

    settings = _settings()
    app_id = _app_id(settings, app_id)
    try:
        proposed = load_catalogue_file(Path(file))
    except InvalidCatalogue as error:
        raise click.ClickException(str(error)) from error
    engine = bootstrap(settings)
    try:
        engine.project()  # compared with what is recorded, whether or not a server runs
        diff = engine.entitlements.preview_catalogue(app_id, proposed, int(time.time()))
        for verb, changes in (("gain", diff.gains), ("lose", diff.losses)):
            for permission_id, customids in sorted(changes.items()):
                click.echo(f"{len(customids)} would {verb} {permission_id}: {', '.join(customids)}")
        if dry_run:
            click.echo(f"dry run: nothing changed ({diff.customids} customids compared)")
            return
        changed = engine.catalogues.replace(app_id, proposed) is not None
        engine.project()  # everyone's answers derived with it (or by a server's projector)
    finally:
        engine.close()
    click.echo("catalogue replaced" if changed else "catalogue unchanged")


for _command in (permissions, history, audit, backfill, import_objects, reconcile, deliveries):
    main.add_command(_command)


def _accept_config(command: click.Command) -> None:
    command.params.append(config_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_config(sub)


_accept_config(main)


if __name__ == "__main__":
    main()
