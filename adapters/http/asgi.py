"""ASGI factory for uvicorn (`uvicorn --factory adapters.http.asgi:create_app`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from adapters.bootstrap import bootstrap
from adapters.config import load_settings
from adapters.http import connections
from adapters.http.app import build_http_app
from adapters.process.logging_setup import configure_logging
from adapters.process.projector import POLL_INTERVAL as POLL_SECONDS
from adapters.process.projector import ProjectorProcess, can_run_apart
from adapters.process.runtime_tuning import tune_for_server
from adapters.usecases.projector_lease import LeasedProjector
from adapters.usecases.reconcile_schedule import PeriodicReconcile


def create_app() -> Starlette:
    """Reads ENTITLEMENTS_CONFIG (or the demo configuration) in each worker process."""
    configure_logging()  # JSON lines, also when started as `uvicorn --factory ...`
    settings = load_settings()
    # Queries may read a hot standby; a follower in this process must read what it writes.
    apart = settings.projector == "process" and can_run_apart(settings.database_url)
    engine = bootstrap(settings, read_url=settings.read_url if apart else None)
    connections.install(engine.settings.limits)  # used by `serve`'s protocol, in this worker
    app = build_http_app(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        tune_for_server()
        settings = engine.settings
        projector: ProjectorProcess | LeasedProjector
        if settings.projector == "process" and can_run_apart(settings.database_url):
            projector = ProjectorProcess()  # the read models follow the log there
        else:  # in this process, while it holds the lease (as the projector's process would)
            projector = LeasedProjector(engine, POLL_SECONDS)
            if engine.outbound is not None:  # outbound webhooks, beside the projector
                engine.outbound.start(publish=False)
        projector.start()
        app.state.projector = projector  # its role, for /metrics
        engine.resolver.start_background()  # line items of checkouts, fetched from Stripe
        reconciling = PeriodicReconcile(engine)  # apps with `reconcile_every`, if any
        reconciling.start()
        yield
        reconciling.stop()
        projector.stop()
        engine.close()

    app.router.lifespan_context = lifespan
    return app
