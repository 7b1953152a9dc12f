"""ISO 8601 durations ("P30D", "P1M", "PT0S") as used by SKUs and app policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import isodate


class InvalidDuration(ValueError):
    pass


# Any duration must keep these instants within datetime's range (years 1 to 9999), so that
# adding it to any real instant never overflows: about a thousand years either way at most.
_EARLY = datetime(1000, 1, 1, tzinfo=UTC)
_LATE = datetime(8999, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> timedelta | isodate.Duration:
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, TypeError, ValueError, OverflowError) as error:
        raise InvalidDuration(f"not an ISO 8601 duration: {text!r}") from error
    try:
        _EARLY + value, _LATE + value
    except (OverflowError, ValueError) as error:
        raise InvalidDuration(
            f"duration out of range (a thousand years at most): {text!r}"
        ) from error
    return value


def add_duration(epoch_seconds: int, text: str) -> int:
    """`epoch_seconds` plus the duration, calendar-aware (P1M from 31 Jan is 28/29 Feb)."""
    start = datetime.fromtimestamp(epoch_seconds, UTC)
    return int((start + parse_duration(text)).timestamp())


def duration_seconds(text: str) -> int:
    """A fixed-length duration in seconds (months and years counted from the epoch)."""
    return add_duration(0, text)
