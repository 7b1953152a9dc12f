"""A total order on facts that never depends on delivery order: Stripe's clock, then content.

The rules choose every "latest" by it (`fact_order`); `domain/rules.FactHistory` keeps a
customer's facts sorted in it once.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from itertools import compress

from domain.facts import Fact


def fact_order(fact: Fact) -> tuple[int, str, str, Content]:
    """A total order on facts: Stripe's clock, then content (never the delivery order)."""
    return (fact.at, fact.event_id, fact.kind, Content(fact))


CLOCK_EVENT_KIND = operator.attrgetter("at", "event_id", "kind")


def in_fact_order(facts: Iterable[Fact]) -> list[Fact]:
    """`sorted(facts, key=fact_order)`, faster: sorted by (clock, event, kind) first, then only
    the runs that tie on all three by their content."""
    ordered = sorted(facts, key=CLOCK_EVENT_KIND)
    for start, end in tied_runs(list(map(CLOCK_EVENT_KIND, ordered))):
        ordered[start:end] = sorted(ordered[start:end], key=repr)
    return ordered


def tied_runs(keys: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """The (start, end) of each run of two or more equal keys in sorted `keys`. Adjacent keys
    are compared in C (`map(eq, ...)`): a loop over a long history showed in profiles."""
    runs: list[tuple[int, int]] = []
    for i in compress(range(1, len(keys)), map(operator.eq, keys, keys[1:])):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i - 1, i + 1))
    return runs


class Content:
    """Orders as `repr(fact)` does, but computes it only when two facts tie on clock, event and
    kind (rare: a tuple comparison stops at the first unequal item). `repr` of a dataclass
    costs microseconds, and rules order facts many times per query."""

    __slots__ = ("_text", "fact")

    def __init__(self, fact: Fact) -> None:
        self.fact = fact
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = repr(self.fact)
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Content) and self.text == other.text

    def __lt__(self, other: Content) -> bool:
        return self.text < other.text

    def __le__(self, other: Content) -> bool:
        return self.text <= other.text

    def __gt__(self, other: Content) -> bool:
        return self.text > other.text

    def __ge__(self, other: Content) -> bool:
        return self.text >= other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text
