"""The `entitlements` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from tqdm import tqdm

from adapters.bootstrap import bootstrap
from adapters.config import ConfigError, Settings, load_settings
from adapters.replay import ReplaySummary, event_files, replay_file


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration (default: $ENTITLEMENTS_CONFIG, else the demo one).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Event-sourced entitlement engine for Stripe."""
    if config_path:
        os.environ["ENTITLEMENTS_CONFIG"] = str(Path(config_path).resolve())
    ctx.obj = config_path


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

    settings = _settings()
    uvicorn.run(
        "adapters.http.asgi:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        log_level="info",
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


if __name__ == "__main__":
    main()
