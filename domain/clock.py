"""The instant a derivation is made for, and how long its answer holds.

Entitlements depend on the instant: a period ends, a grace period runs out, a pass elapses. The
rules compare `at` with instants taken from the facts (and the policy). `Instant` is an `int` that
remembers, from every comparison made with it, the nearest later instant at which one of them
would answer differently. After `derive(facts, catalogue, policy, Instant(t))`, `next_change`
bounds the answer: the same facts and catalogue give the same result for every instant in
`[t, next_change)` (None: for every later instant). A cache of answers relies on this, and a
property test checks it (tests/test_clock.py).

Comparisons are recorded whichever side `at` is on: Python asks an `int` subclass first when it
is the right-hand operand. Arithmetic on `at` gives a plain `int` that records nothing, so rules
compare `at` itself (`at <= end + leeway`, not `at - end <= leeway`).
"""

from __future__ import annotations

import math
from typing import Any


class Instant(int):
    next_change: int | None

    def __new__(cls, seconds: int) -> Instant:
        instant = super().__new__(cls, seconds)
        instant.next_change = None
        return instant

    def _flips_at(self, instant: int) -> None:
        """A comparison's answer changes when the clock reaches `instant`."""
        if int(self) < instant and (self.next_change is None or instant < self.next_change):
            self.next_change = instant

    def __lt__(self, other: Any) -> bool:  # also `other > at`
        if not isinstance(other, int | float):
            return NotImplemented
        self._flips_at(math.ceil(other))
        return int(self) < other

    def __ge__(self, other: Any) -> bool:  # also `other <= at`
        if not isinstance(other, int | float):
            return NotImplemented
        self._flips_at(math.ceil(other))
        return int(self) >= other

    def __le__(self, other: Any) -> bool:  # also `other >= at`
        if not isinstance(other, int | float):
            return NotImplemented
        self._flips_at(math.floor(other) + 1)
        return int(self) <= other

    def __gt__(self, other: Any) -> bool:  # also `other < at`
        if not isinstance(other, int | float):
            return NotImplemented
        self._flips_at(math.floor(other) + 1)
        return int(self) > other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, int | float):
            return NotImplemented
        self._flips_at(math.ceil(other))
        self._flips_at(math.floor(other) + 1)
        return int(self) == other

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = int.__hash__
