"""The console's routes: parse, ask the engine, render a template. Mounted at /console.

Every page but the sign-in form needs a session (`session.py`) of an audit or admin key, and
reads only that key's app. Forms that change something (sign in, sign out) are POSTs carrying a
CSRF token; the key travels only in the sign-in form's body, never in a URL, and is never logged.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Match, Mount, Route, get_route_path
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from adapters.audit import customer_records, event_record, write_chain
from adapters.console import session as sessions
from adapters.console.app_page import app_page
from adapters.console.bands import CODE_COLOURS, CODE_NAMES, WIDTH
from adapters.console.customer import BandCache, Instant, customer_page, timeline_row
from adapters.console.forms import form_fields, iso
from adapters.console.lookup import EmailSearchUnavailable, find_customer
from adapters.history import entry_json
from adapters.http.errors import ApiError
from adapters.http.params import instant, required_text
from adapters.http.recent import RecentRejections
from adapters.storage_errors import is_storage_error
from projections.history import HistoryFilter

log = logging.getLogger("entitlements.console")

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
TEMPLATES.env.globals.update(
    iso=iso, code_names=CODE_NAMES, colours=CODE_COLOURS, svg_width=WIDTH, quote=quote
)
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class Refused(Exception):
    """Render the error page with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotSignedIn(Exception):
    pass


def render(request: Request, name: str, status: int = 200, **context) -> Response:
    state = request.app.state
    signed_in = getattr(request.state, "console", None)
    context.update(signed_in=signed_in)
    if signed_in is not None:
        context.setdefault("csrf", sessions.csrf_token(state.secret, signed_in.nonce))
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(HEADERS)
    return response


def current(request: Request) -> sessions.ConsoleSession:
    state = request.app.state
    apps = state.engine.settings.apps
    found = sessions.session_of(state.secret, apps, request.cookies.get(sessions.COOKIE))
    if found is None:
        raise NotSignedIn()
    request.state.console = found
    return found


# --- signing in and out --------------------------------------------------------------------------


async def home(request: Request) -> Response:
    try:
        current(request)
    except NotSignedIn:
        return sign_in_form(request)
    return render(request, "home.html")


def sign_in_form(request: Request, status: int = 200, error: str = "") -> Response:
    """The form, with a fresh nonce in a cookie and its token in the form (double submit)."""
    nonce = sessions.new_nonce()
    token = sessions.csrf_token(request.app.state.secret, nonce)
    response = render(request, "sign_in.html", status, csrf=token, error=error)
    set_cookie(request, response, sessions.SIGN_IN_COOKIE, nonce, max_age=3600)
    return response


async def sign_in(request: Request) -> Response:
    state = request.app.state
    fields = await form_fields(request)
    nonce = request.cookies.get(sessions.SIGN_IN_COOKIE)
    if not sessions.csrf_ok(state.secret, nonce, fields.get("csrf")):
        raise Refused(403, "This form has expired or did not come from this console. "
                      "Open the sign-in page again.")  # fmt: skip
    key = fields.get("key", "").strip()
    try:
        signed = sessions.sign_in(state.secret, state.engine.settings.apps, key) if key else None
    except sessions.ReadOnlyKey as error:
        log.warning("console sign-in refused: a %s key", error)
        return sign_in_form(request, 403, "This key's role (read) is an app backend's: "
                            "the console needs an audit or admin key.")  # fmt: skip
    if signed is None:
        log.warning("console sign-in refused: unknown key")
        return sign_in_form(request, 401, "This key is not one of this deployment's keys.")
    session, cookie = signed
    log.info("console sign-in", extra={"app_id": session.app_id, "role": session.role})
    response = RedirectResponse("/console", status_code=303)
    set_cookie(request, response, sessions.COOKIE, cookie, max_age=sessions.LIFETIME)
    forget_cookie(request, response, sessions.SIGN_IN_COOKIE)
    return response


async def sign_out(request: Request) -> Response:
    session = current(request)
    fields = await form_fields(request)
    if not sessions.csrf_ok(request.app.state.secret, session.nonce, fields.get("csrf")):
        raise Refused(403, "This form did not come from this console: not signed out.")
    response = RedirectResponse("/console", status_code=303)
    forget_cookie(request, response, sessions.COOKIE)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",  # behind TLS (uvicorn's proxy headers say so)
    )


def forget_cookie(request: Request, response: Response, name: str) -> None:
    secure = request.url.scheme == "https"
    response.delete_cookie(name, path="/console", secure=secure, httponly=True, samesite="strict")


# --- pages ---------------------------------------------------------------------------------------


async def search(request: Request) -> Response:
    session = current(request)
    query = request.query_params.get("q", "").strip()
    if not query:
        return render(request, "home.html")
    query = _text(query, "q")
    engine = request.app.state.engine
    try:
        found = await run_in_threadpool(find_customer, engine, session.app_id, query)
    except EmailSearchUnavailable as error:
        return render(request, "home.html", 503, query=query, unavailable=str(error))
    if found is None:
        return render(request, "home.html", 404, query=query, not_found=True)
    if found.customid is None:
        return render(request, "home.html", 404, query=query, unlinked=found.how)
    return RedirectResponse(customer_url(found.customid), status_code=303)


async def customer(request: Request) -> Response:
    session = current(request)
    customid = _text(request.path_params["customid"], "customid")
    params = request.query_params
    picked = Instant(_instant(params.get("at"), "at"), _instant(params.get("known_at"), "known_at"))
    after = _position(params.get("after"))
    engine = request.app.state.engine
    bands = request.app.state.bands
    page = await run_in_threadpool(
        customer_page, engine, session.app_id, customid, picked, after, bands
    )
    if page is None:
        raise Refused(404, f"No Stripe customer of this app is linked to {customid!r}.")
    return render(request, "customer.html", page=page, url=customer_url(customid))


async def event(request: Request) -> Response:
    session = current(request)
    customid = _text(request.path_params["customid"], "customid")
    position = request.path_params["position"]
    history = request.app.state.engine.history
    where = HistoryFilter(after=max(0, position - 1), limit=1)
    page = await run_in_threadpool(history.page, session.app_id, customid, where)
    entries = [e for e in (page.entries if page else []) if e.position == position]
    if not entries:
        raise Refused(404, f"{customid!r} has no event at position {position}.")
    row = timeline_row(entry_json(entries[0], include_raw=True))
    return render(
        request, "event.html", customid=customid, event=row, url=customer_url(customid),
        formatted=_formatted(row.get("raw")),
    )  # fmt: skip


def _formatted(raw: str | None) -> str | None:
    """The payload indented for reading (the raw text stays what is shown as the record)."""
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False) if raw else None
    except ValueError:
        return None


async def stripe_event(request: Request) -> Response:
    """An explanation's link: the Stripe event id, found among the customer's events."""
    session = current(request)
    customid = _text(request.path_params["customid"], "customid")
    event_id = _text(request.path_params["event_id"], "event_id")
    engine = request.app.state.engine
    position = await run_in_threadpool(_position_of, engine, session.app_id, customid, event_id)
    if position is None:
        raise Refused(404, f"{event_id!r} is not among {customid!r}'s events.")
    return RedirectResponse(f"{customer_url(customid)}/events/{position}", status_code=303)


def _position_of(engine, app_id: str, customid: str, event_id: str) -> int | None:
    keys = engine.history.buyer_keys(app_id, customid)
    with engine.follower.reading() as cursor:
        for key in keys:
            cursor.execute(
                "SELECT position FROM buyer_history WHERE app_id = ? AND buyer_key = ? "
                "AND stripe_event_id = ? ORDER BY position LIMIT 1",
                (app_id, key, event_id),
            )
            row = cursor.fetchone()
            if row is not None:
                return int(row[0])
    return None


async def export(request: Request) -> Response:
    """The customer's hash-chained history (`entitlements audit export --customid`)."""
    session = current(request)
    customid = _text(request.path_params["customid"], "customid")
    engine = request.app.state.engine
    if not await run_in_threadpool(engine.history.buyer_keys, session.app_id, customid):
        raise Refused(404, f"No Stripe customer of this app is linked to {customid!r}.")
    spool, last_hash = await run_in_threadpool(_export, engine, session.app_id, customid)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", customid)[:80] or "customer"
    headers = {
        **HEADERS,
        "Content-Disposition": f'attachment; filename="{name}-history.jsonl"',
        "X-Chain-Last-Hash": last_hash,
    }
    return StreamingResponse(
        iterate_in_threadpool(_chunks(spool)), media_type="application/x-ndjson", headers=headers
    )


def _export(engine, app_id: str, customid: str):
    # Closed by `_chunks` once streamed: it outlives this function.
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, mode="w+", encoding="utf-8")  # noqa: SIM115
    records = (event_record(r) for r in customer_records(engine.history, app_id, customid))
    _, last_hash = write_chain(records, spool)
    spool.seek(0)
    return spool, last_hash


def _chunks(spool, size: int = 64 * 1024):
    with spool:
        while chunk := spool.read(size):
            yield chunk.encode()


async def app_view(request: Request) -> Response:
    session = current(request)
    state = request.app.state
    page = await run_in_threadpool(app_page, state.engine, session.app_id, state.rejections)
    return render(request, "app.html", page=page)


# --- parameters ----------------------------------------------------------------------------------


def customer_url(customid: str) -> str:
    return f"/console/customers/{quote(customid, safe='')}"


def _text(value: str, name: str) -> str:
    try:
        return required_text(value, name)
    except ApiError as error:
        raise Refused(400, error.description) from error


def _instant(value: str | None, name: str) -> float | None:
    try:
        return instant(value.strip() if value else value, name)
    except ApiError as error:
        raise Refused(400, f"{error.description}, e.g. 2025-03-03T00:00:00Z") from error


def _position(value: str | None) -> int:
    if not value:
        return 0
    if not value.isdigit() or len(value) > 18:
        raise Refused(400, "'after' must be a position in the history")
    return int(value)


# --- the application -----------------------------------------------------------------------------


async def _refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, Refused)
    return render(request, "error.html", error.status, message=error.message)


async def _not_signed_in(request: Request, error: Exception) -> Response:
    if request.method == "GET":
        return RedirectResponse("/console", status_code=303)
    return render(request, "error.html", 403, message="Sign in first.")


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return render(request, "error.html", error.status_code, message=str(error.detail))


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)  # a body too large, a rate limit
    return render(request, "error.html", error.status, message=error.description)


async def _unexpected(request: Request, error: Exception) -> Response:
    if is_storage_error(error):
        log.error("storage unavailable: %s", error, extra={"path": request.url.path})
        return render(request, "error.html", 503, message="Storage unavailable; retry shortly.")
    log.exception("console error")
    return render(request, "error.html", 500, message="Something went wrong; it is logged.")


def build_console(engine, rejections: RecentRejections) -> Starlette:
    console = Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/sign-in", sign_in, methods=["POST"]),
            Route("/sign-out", sign_out, methods=["POST"]),
            Route("/search", search, methods=["GET"]),
            Route("/app", app_view, methods=["GET"]),
            Route("/customers/{customid}", customer, methods=["GET"]),
            Route("/customers/{customid}/events/{position:int}", event, methods=["GET"]),
            Route("/customers/{customid}/stripe-events/{event_id}", stripe_event, methods=["GET"]),
            Route("/customers/{customid}/export", export, methods=["GET"]),
        ],
        exception_handlers={
            Refused: _refused,
            NotSignedIn: _not_signed_in,
            HTTPException: _http_error,
            ApiError: _api_error,
            Exception: _unexpected,
        },
    )
    console.router.redirect_slashes = False
    console.state.engine = engine
    console.state.rejections = rejections
    console.state.bands = BandCache()
    console.state.secret = sessions.session_secret(engine.settings)
    return console


class ConsoleMount(Mount):
    """Mounted at /console, and answering /console itself (a Mount alone serves only paths
    under /console/), as its home page, without a redirect."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and get_route_path(scope) == self.path:
            path = scope["path"] + "/"
            match, child = super().matches({**scope, "path": path})
            if match is Match.FULL:
                child["path"] = path
            return match, child
        return super().matches(scope)


def console_mount(engine, rejections: RecentRejections) -> Mount:
    return ConsoleMount("/console", build_console(engine, rejections))
