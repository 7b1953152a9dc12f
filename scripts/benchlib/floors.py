"""The floors: bare Starlette apps served by uvicorn under the engine's settings.

`create_app()` (an ASGI factory for `uvicorn --factory`) reads its configuration from the
environment: BENCH_FLOOR_MODE (`naive` or `group`), BENCH_FLOOR_DB (a database URL) and
BENCH_SECRET (the webhook signing secret). Every app also serves the load generator's ceiling:
`GET /bare` answers a fixed JSON body (the W3 floor), `POST /bare` reads the body and answers it.

- naive: verify the signature, insert the raw body in one transaction per request, on Starlette's
  thread pool (as the engine records).
- group: verify, then hand the body to one writer thread that commits everything queued in one
  transaction and then answers every request of the batch.
"""

from __future__ import annotations

import asyncio
import logging.config
import os
import queue
import threading
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.process.logging_setup import log_config
from adapters.process.runtime_tuning import tune_for_server
from adapters.stripe.signature import BadSignature, verify_signature
from benchlib.storage import FloorStore, open_store

FIXED_BODY = b'{"subscriberId":"bench","all":[{"permissionId":"premium","entitlement":5}]}'
RECEIVED = b'{"received":true,"duplicate":false}'


class ThreadLocalStores:
    """One connection per thread-pool thread (naive floor)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.local()

    def insert(self, body: str) -> None:
        store = getattr(self.local, "store", None)
        if store is None:
            store = self.local.store = open_store(self.url)
        store.insert_many([body])


class GroupCommitter:
    """A single writer thread: drain the queue, commit it as one transaction, answer each."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="group-commit", daemon=True).start()

    async def insert(self, body: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self.queue.put((body, future))
        await future

    def _run(self) -> None:
        store = open_store(self.url)
        while True:
            batch = [self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            error = self._commit(store, [body for body, _ in batch])
            futures = [future for _, future in batch]
            futures[0].get_loop().call_soon_threadsafe(_settle, futures, error)

    @staticmethod
    def _commit(store: FloorStore, bodies: list[str]) -> Exception | None:
        try:
            store.insert_many(bodies)
        except Exception as error:
            return error
        return None


def _settle(futures: list[asyncio.Future], error: Exception | None) -> None:
    for future in futures:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def webhook_handler(secret: str, insert: Callable) -> Callable:
    async def receive(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8")
        try:
            verify_signature(raw, request.headers.get("stripe-signature"), [secret])
        except BadSignature as error:
            return JSONResponse({"status": 400, "error": str(error)}, 400)
        await insert(raw)
        return Response(RECEIVED, media_type="application/json")

    return receive


async def bare_get(request: Request) -> Response:
    return Response(FIXED_BODY, media_type="application/json")


async def bare_post(request: Request) -> Response:
    await request.body()
    return Response(RECEIVED, media_type="application/json")


def create_app() -> Starlette:
    mode = os.environ.get("BENCH_FLOOR_MODE", "naive")
    url = os.environ.get("BENCH_FLOOR_DB", "")
    secret = os.environ.get("BENCH_SECRET", "")
    routes = [
        Route("/bare", bare_get, methods=["GET"]),
        Route("/bare", bare_post, methods=["POST"]),
    ]
    if url:
        if mode == "group":
            insert = GroupCommitter(url).insert
        else:
            stores = ThreadLocalStores(url)

            async def insert(body: str) -> None:
                await run_in_threadpool(stores.insert, body)

        routes.append(
            Route("/v1/stripe/webhooks/{app_id}", webhook_handler(secret, insert), methods=["POST"])
        )
    app = Starlette(routes=routes)
    # The engine's process settings too (its log handler and garbage collector): only the
    # work differs. uvicorn's access log stays on, as it does for the engine.
    logging.config.dictConfig(log_config("INFO"))
    tune_for_server()
    return app
