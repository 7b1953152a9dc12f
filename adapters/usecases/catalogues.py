"""Each app's catalogue, held as events so every change is on record."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from adapters.storage.eventstore import EventLog
from domain.aggregates import AppCatalogue, catalogue_id
from domain.catalogue import Catalogue, InvalidCatalogue

REFRESH_SECONDS = 1.0


class Catalogues:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._cache: dict[str, tuple[int, Catalogue]] = {}
        self._checked: dict[str, float] = {}  # app id -> monotonic time its cache is trusted to
        self._lock = threading.Lock()

    def current(self, app_id: str) -> Catalogue:
        """The app's catalogue. Replacements made in this process show at once; those of other
        processes within `REFRESH_SECONDS` (a permission query should not cost a log read)."""
        cached = self._cache.get(app_id)
        fresh_until = self._checked.get(app_id, 0.0)
        if cached and time.monotonic() < fresh_until:
            return cached[1]
        version = self.log.last_version(catalogue_id(app_id))
        self._checked[app_id] = time.monotonic() + REFRESH_SECONDS
        if version is None:
            return Catalogue()
        cached = self._cache.get(app_id)
        if cached and cached[0] == version:
            return cached[1]
        aggregate = self.log.repository.get(catalogue_id(app_id))
        catalogue = Catalogue.from_json(json.loads(aggregate.catalogue))
        self._cache[app_id] = (aggregate.version, catalogue)
        return catalogue

    def as_of(self, app_id: str, known_at: float | None) -> Catalogue:
        """The catalogue as it stood at `known_at` (epoch seconds; None: now), so that a query
        "as known then" also uses the SKUs and permissions of then. Catalogues change rarely:
        reading their few events is cheap."""
        if known_at is None:
            return self.current(app_id)
        text = None
        for event in self.log.events.get(catalogue_id(app_id)):
            if event.timestamp.timestamp() > known_at:
                break
            if isinstance(event, AppCatalogue.Replaced):
                text = event.catalogue
        return Catalogue.from_json(json.loads(text)) if text else Catalogue()

    def replace(self, app_id: str, catalogue: Catalogue) -> int | None:
        """Record the new catalogue; the log position of its event, or None (and nothing
        written) when it is unchanged."""
        with self._lock:
            try:
                aggregate = self.log.repository.get(catalogue_id(app_id))
            except AggregateNotFoundError:
                aggregate = AppCatalogue(app_id)
            text = json.dumps(catalogue.to_json(), sort_keys=True)
            if aggregate.version > 1 and aggregate.catalogue == text:
                return None
            aggregate.replace(text)
            recordings = self.log.save(aggregate)
            self._checked.pop(app_id, None)
            return recordings[-1].notification.id

    def seed(self, app_id: str, path: Path) -> None:
        """Load an app's initial catalogue from its configured file, once, if it has none."""
        if self.log.last_version(catalogue_id(app_id)) is None:
            with contextlib.suppress(IntegrityError):  # another process seeded it first
                self.replace(app_id, load_catalogue_file(path))


def load_catalogue_file(path: Path) -> Catalogue:
    """A catalogue document in JSON or TOML (by file extension)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidCatalogue(f"cannot read {path}: {error}") from error
    try:
        if path.suffix == ".toml":
            import tomllib

            doc = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except ValueError as error:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise InvalidCatalogue(f"{path}: not valid {kind}: {error}") from error
    return Catalogue.from_json(doc)
