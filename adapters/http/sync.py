"""GET /v1/sync: the app's last backfill, import and reconcile (when, what they counted, the
differences reconcile found), read from their record in the event log (`adapters/sync_runs.py`)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.http.auth import authenticated_app
from adapters.sync_runs import COMMANDS, SyncRuns


async def get_sync(request: Request) -> Response:
    app = authenticated_app(request)
    runs = SyncRuns(request.app.state.engine.log)
    latest = await run_in_threadpool(runs.latest, app.app_id)
    body = {command: run.to_json() if (run := latest.get(command)) else None
            for command in COMMANDS}  # fmt: skip
    return JSONResponse({"appId": app.app_id, "reconcileEvery": app.reconcile_every, **body})
