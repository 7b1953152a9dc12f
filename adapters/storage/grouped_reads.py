"""Questions about now, read together: one round trip to PostgreSQL for all that are waiting.

On PostgreSQL each read is a round trip, and a request waiting for it on the event loop stops
every other request (webhooks included). Questions are handed instead to one reading thread,
which reads all that are waiting in one statement (`Entitlements.now_many`) while the next ones
gather: the busier the server, the more questions per round trip. Each question is read by a
statement that starts after it arrived, so it sees everything committed before it was asked
(an app's own writes included, on any host).

Bounded: with more than `max_waiting` questions waiting the server is overloaded, and a new
question is refused at once (503 with Retry-After) rather than queued for seconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

from projections.grants import Answer, Question

log = logging.getLogger("entitlements.http")

MAX_WAITING = 1024  # questions waiting for the reading thread before new ones are refused
MAX_GROUP = 256  # questions per statement (its parameters stay well under PostgreSQL's limit)

Waiting = tuple[Question, asyncio.Future, asyncio.AbstractEventLoop]


class Overloaded(RuntimeError):
    """Too many questions are waiting: refuse this one (503, Retry-After)."""


class GroupedReads:
    def __init__(
        self,
        read_many: Callable[[Sequence[Question]], list[Answer]],
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._read_many = read_many
        self._max_waiting = max_waiting
        self._waiting: list[Waiting] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def answer(self, question: Question) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._changed:
            if self._closed or len(self._waiting) >= self._max_waiting:
                raise Overloaded(question)
            self._waiting.append((question, future, loop))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="grouped-reads", daemon=True)
                self._thread.start()
            self._changed.notify()
        return await future

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    group, self._waiting = self._waiting, []
                    _settle(group, [Overloaded(question) for question, _, _ in group])
                    return
                group = self._waiting[:MAX_GROUP]
                del self._waiting[:MAX_GROUP]
            try:
                answers: Sequence[Answer | Exception] = self._read_many([q for q, _, _ in group])
            except Exception as error:  # each question's request answers it (503 or 500)
                answers = [error] * len(group)
            _settle(group, answers)


def _settle(group: Sequence[Waiting], answers: Sequence[Answer | Exception]) -> None:
    """Hand each answer to its request's event loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
    for (_, future, loop), answer in zip(group, answers, strict=True):
        by_loop[loop].append((future, answer))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, settled)
        except RuntimeError:  # that loop is closed: nobody waits for these any more
            log.debug("grouped reads: %d answers for a closed event loop", len(settled))


def _resolve(settled: list) -> None:
    for future, answer in settled:
        if future.done():  # the client went away
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
