"""Structured logs: one JSON object per line on stderr, for the server and uvicorn alike.

Each line has `timestamp` (UTC, ISO 8601), `level`, `logger` and `message`, plus whatever the
call passed as `extra=` (`app_id`, `stripe_event_id`, `stripe_type`, `outcome` for webhooks).
Secrets are never passed to a logger; as a second line of defence, anything shaped like a Stripe
secret (`whsec_`, `sk_`, `rk_`) or a Bearer credential is masked before a line is written.
"""

from __future__ import annotations

import collections
import json
import logging
import logging.config
import re
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import orjson

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured duplicate of the message
}

SECRET_SHAPES = re.compile(
    # A secret runs to the next character no secret has: keys with `-`, `.`, `+`, `/`, `=`
    # (a configured plain key, a base64 one) are masked whole, not up to their first `-`.
    r"(?:whsec|sk_live|sk_test|rk_live|rk_test)_[A-Za-z0-9_\-.+/=]+|(?i:bearer)\s+[^\s\"',]+"
)
REDACTED = "[redacted]"


# Each shape contains one of these (the last in any case): a line without them, as nearly every
# line is, needs no regular expression (0.5 us instead of 3-4 us per line, on the log thread).
_SECRET_MARKS = ("whsec_", "k_live_", "k_test_")


def redact(text: str) -> str:
    """Mask anything shaped like a Stripe secret or a Bearer credential."""
    if not any(mark in text for mark in _SECRET_MARKS) and "bearer" not in text.lower():
        return text
    return SECRET_SHAPES.sub(REDACTED, text)


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON; extras are included, exceptions as a `traceback` string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return redact(_dumps(out))


def _dumps(out: dict[str, Any]) -> str:
    """orjson (a log line is written per request: it costs a third of `json`'s time); `json`
    for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(out, default=str).decode()
    except TypeError:
        return json.dumps(out, default=str, ensure_ascii=False)


class BackgroundHandler(logging.Handler):
    """Writes lines to stderr (or `stream`) from a thread of its own, every `interval` seconds,
    all lines queued since in one write; the caller only queues the record. A line formatted,
    written and flushed by the event loop itself cost it a lock hand-off per line with the
    threads that write to the database (about a fifth of its time per webhook: py-spy, W1 in
    docs/benchmarks.md), and a writer thread woken for every line costs the same hand-offs.
    Lines keep their order; `close` (called by `logging.shutdown` at exit) writes the rest."""

    def __init__(self, stream: Any = None, interval: float = 0.1) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._stop = threading.Event()
        self._writing = threading.Lock()  # not `self.lock`, which every `emit` takes
        self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        # The message is rendered now (its arguments may change meanwhile); extras and the
        # exception stay on the record for the formatter.
        record.msg, record.args = record.getMessage(), None
        self._records.append(record)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def _write_queued(self) -> None:
        lines = []
        while self._records:
            record = self._records.popleft()
            try:
                lines.append(self.format(record) + "\n")
            except Exception:
                self.handleError(record)
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(record)

    def flush(self) -> None:
        with self._writing:  # one writer at a time, or lines could be written out of order
            self._write_queued()

    def close(self) -> None:
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join()
        self.flush()
        super().close()


def write_queued_lines_on_exit_signals() -> None:
    """Once it has shut down, uvicorn raises again the SIGTERM or SIGINT that stopped it, and
    the default action ends the process without running `atexit`: the lines queued since the
    log thread's last write (uvicorn's shutdown lines among them) would be lost. These
    handlers, which uvicorn restores before raising the signal, write them first, then let the
    signal take its default course."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _write_queued_lines_then_default)


def _write_queued_lines_then_default(signum: int, _frame: Any) -> None:
    logging.shutdown()  # each handler's `close`: BackgroundHandler writes what is queued
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def lean_records() -> None:
    """Records without what our lines never show: the caller's file and line (found by walking
    the stack for every record), thread, process and task names. The logging cookbook's own
    advice; it halves the cost of the two lines each webhook writes."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` document; also given to uvicorn as its `log_config`."""
    lean_records()
    handler = {"()": BackgroundHandler, "formatter": "json"}
    uvicorn = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": uvicorn,
            "uvicorn.error": {"level": level},
            "uvicorn.access": uvicorn,
        },
    }


def configure_logging(level: str = "INFO") -> None:
    """Install JSON logging unless the root logger already has a handler: then `serve` gave
    uvicorn `log_config()` already, or a harness (pytest) captures logs and must keep them."""
    lean_records()
    if not logging.getLogger().handlers:
        logging.config.dictConfig(log_config(level))
