"""Audit commands of the `entitlements` CLI: permissions (at, known-at, why), history, export.

Registered on the main group by `adapters/cli/main.py`. Instants are ISO 8601 (naive = UTC) or epoch
seconds, as in the HTTP API.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click
from tqdm import tqdm

from adapters.bootstrap import Engine, bootstrap
from adapters.config import ConfigError, Settings, load_settings
from adapters.http.errors import ApiError
from adapters.http.params import instant, required_text
from adapters.usecases.audit import (
    app_records,
    customer_records,
    event_record,
    verify_file,
    write_chain,
)
from adapters.usecases.history import entry_json
from projections.history import HistoryFilter
from projections.shapes import permissions_json


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from error


def _app_id(settings: Settings, app_id: str | None) -> str:
    chosen = app_id or next(iter(settings.apps))
    if chosen not in settings.apps:
        raise click.ClickException(f"unknown app {chosen!r}")
    return chosen


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    """An engine whose read models hold everything recorded (a command runs on its own: no
    projector may be running)."""
    engine = bootstrap(settings)
    try:
        engine.project()
        yield engine
    finally:
        engine.close()


def _customid(value: str) -> str:
    """Refused as the HTTP API refuses it (empty, too long, NUL)."""
    try:
        return required_text(value, "customid")
    except ApiError as error:
        raise click.BadParameter(error.description, param_hint="CUSTOMID") from error


def _instant(value: str | None, name: str) -> float | None:
    try:
        return instant(value, name)
    except ApiError as error:
        raise click.BadParameter(error.description, param_hint=f"--{name}") from error


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.command()
@click.argument("customid")
@click.option("--app", "app_id", help="App (default: the first configured).")
@click.option("--at", "at_text", help="The instant asked about (default: now).")
@click.option("--known-at", "known_text", help="Answer from what was recorded by then.")
@click.option("--explain", is_flag=True, help="Show the rule and the events behind each code.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON shape.")
def permissions(
    customid: str,
    app_id: str | None,
    at_text: str | None,
    known_text: str | None,
    explain: bool,
    as_json: bool,
) -> None:
    """What CUSTOMID may do at an instant, as known at an instant, and why."""
    customid = _customid(customid)
    settings = _settings()
    app_id = _app_id(settings, app_id)
    at = int(_instant(at_text, "at") or time.time())
    known_at = _instant(known_text, "known_at")
    with _engine(settings) as engine:
        result = engine.entitlements.permissions(app_id, customid, at, known_at)
        known = bool(engine.history.buyer_keys(app_id, customid))
    if not known:  # answered as GET /v1/permissions does; `history` says "no customer"
        click.echo(
            f"no customer {customid!r} in app {app_id!r}: every permission is never bought",
            err=True,
        )
    doc = permissions_json(customid, result, explain)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for line in _permission_rows(doc["all"], explain):
        click.echo(line)


def _permission_rows(perms: list[dict[str, Any]], explain: bool) -> Iterator[str]:
    yield f"{'permission':<24} {'code':>5} {'valid':<6} {'expires':<20} skus"
    for p in perms:
        skus = ",".join(s["skuId"] for s in p["accountableSkus"]) or "-"
        valid = "yes" if p["isValid"] else "no"
        yield f"{p['permissionId']:<24} {p['entitlement']:>5} {valid:<6} " + (
            f"{_iso(p['expireDate']):<20} {skus}"
        )
        if explain:
            why = p["explain"]
            yield f"    rule: {why['rule']}; events: {', '.join(why['eventIds']) or '-'}"
            for grant in why["grants"]:
                events = ", ".join(grant["eventIds"]) or "-"
                yield f"    {grant['skuId']} via {grant['sourceId']}: {grant['rule']} ({events})"


@click.command()
@click.argument("customid")
@click.option("--app", "app_id", help="App (default: the first configured).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (JSON Lines).")
@click.option("--raw", is_flag=True, help="Include each raw payload exactly as received.")
def history(customid: str, app_id: str | None, as_json: bool, raw: bool) -> None:
    """Every recorded event of CUSTOMID, oldest first."""
    customid = _customid(customid)
    settings = _settings()
    app_id = _app_id(settings, app_id)
    with _engine(settings) as engine:
        if not engine.history.buyer_keys(app_id, customid):
            raise click.ClickException(f"no customer {customid!r} in app {app_id!r}")
        entries = engine.history.entries(app_id, customid, HistoryFilter(limit=1000))
        if not as_json:
            click.echo(f"{'pos':>8} {'recorded':<20} {'created':<20} {'type':<40} {'event':<30}")
        for entry in entries:
            doc = entry_json(entry, raw)
            click.echo(json.dumps(doc, ensure_ascii=False) if as_json else _history_row(doc))


def _history_row(doc: dict[str, Any]) -> str:
    kind = doc["stripeType"] or doc["eventType"]
    ident = doc["stripeEventId"] or doc.get("customid") or doc["buyerKey"]
    row = (
        f"{doc['position']:>8} {_iso(doc['recordedAt']):<20} {_iso(doc['stripeCreated']):<20} "
        f"{kind:<40} {ident:<30}"
    )
    return f"{row}\n{doc['raw']}" if doc.get("raw") is not None else row


@click.group()
def audit() -> None:
    """Tamper-evident exports of histories, and their verification."""


@audit.command("export")
@click.option("--app", "app_id", help="App (default: the first configured).")
@click.option("--customid", help="Only this customer's history (default: the whole app).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
def audit_export(app_id: str | None, customid: str | None, out_path: str) -> None:
    """Write a hash-chained JSON Lines export (raw payloads included) to --out."""
    settings = _settings()
    app_id = _app_id(settings, app_id)
    target = Path(out_path)
    if not target.parent.is_dir():
        raise click.ClickException(f"no folder {str(target.parent)!r} to write {out_path!r} in")
    with _engine(settings) as engine, _replaced_on_success(target) as out:
        if customid and not engine.history.buyer_keys(app_id, customid):
            raise click.ClickException(f"no customer {customid!r} in app {app_id!r}")
        total = engine.log.recorder.max_notification_id() or 0
        with tqdm(total=None if customid else total, unit="event", file=sys.stderr) as bar:
            if customid:
                records = customer_records(engine.history, app_id, customid)
            else:
                records = app_records(engine.log, engine.follower, app_id, bar.update)
            count, last = write_chain((_tick(event_record(r), bar, customid) for r in records), out)
    click.echo(f"exported {count} events to {out_path}; last hash {last}")


@contextmanager
def _replaced_on_success(target: Path) -> Iterator[TextIO]:
    """A file written beside `target` that becomes it only once complete: a failed export
    leaves neither an empty file nor a partial chain (nor replaces an earlier export)."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            yield out
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _tick(record: dict[str, Any], bar: tqdm, customid: str | None) -> dict[str, Any]:
    if customid:
        bar.update(1)
    return record


@audit.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def audit_verify(file: str) -> None:
    """Check an export's hash chain; print the first broken line, or OK and the count."""
    verdict = verify_file(file)
    if not verdict.ok:
        click.echo(f"BROKEN at line {verdict.broken_line}: {verdict.reason}", err=True)
        sys.exit(1)
    click.echo(f"OK: {verdict.count} events; last hash {verdict.last_hash}")
