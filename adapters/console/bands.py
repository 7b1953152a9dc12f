"""A band per permission: its entitlement code over a customer's life, for the console's SVG.

Codes change when a fact arrives (at the fact's instant) or when time passes a date the answer
names (a period end, the leeway after it, a grace end, a pass running out). Small histories are
evaluated at every such instant: the band is exact. A long history (each evaluation derives from
all its facts) is evaluated within a budget: evenly spaced samples, then bisection over the facts'
instants between samples that differ, so a transition is placed at the instant it happened as
long as the budget lasts; the page then says the band is sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from domain.rules import Entitlement, PermissionStatus

WIDTH = 1000  # the SVG's user units across
FACTS_PER_RENDER = 150_000  # facts derived from per render: ~150 ms at ~1 us per fact
MAX_EVALUATIONS = 300
MIN_EVALUATIONS = 8

Evaluate = Callable[[int], Sequence[PermissionStatus]]

CODE_NAMES = {code.value: code.name.replace("_", " ").title() for code in Entitlement}
CODE_COLOURS = {
    5: "#1a7f37",  # renewing: green
    4: "#4ca65a",  # ending at period end: lighter green
    3: "#2f6fb0",  # one-time: blue
    1: "#c98a00",  # in grace: amber
    0: "#8c8c8c",  # missing info: grey
    -1: "#d4582a",  # in retry: orange
    -2: "#b3261e",  # expired from billing: red
    -5: "#6e4a9e",  # expired voluntarily: purple
    -6: "#5a7d8c",  # upgraded: slate
    -8: "#7a1f3d",  # refunded: wine
    -9: "#d9d9d9",  # never bought: light grey
    -10: "#a0a0a0",  # paused
}


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    code: int
    x: float  # SVG user units
    width: float

    @property
    def colour(self) -> str:
        return CODE_COLOURS.get(self.code, "#444444")

    @property
    def name(self) -> str:
        return CODE_NAMES.get(self.code, str(self.code))


@dataclass(frozen=True)
class Transition:
    at: int
    before: int
    after: int
    x: float


@dataclass(frozen=True)
class Band:
    permission_id: str
    segments: list[Segment]
    transitions: list[Transition]


@dataclass(frozen=True)
class Bands:
    start: int
    end: int
    bands: list[Band]
    evaluations: int
    exact: bool  # False: sampled within the budget (transitions may be placed late)


def permission_bands(
    instants: Sequence[int], evaluate: Evaluate, end: int, leeway: int, facts: int
) -> Bands:
    """Bands from the facts' instants (sorted) up to `end`; `facts`: how many the history
    holds (what one evaluation costs)."""
    budget = max(MIN_EVALUATIONS, min(MAX_EVALUATIONS, FACTS_PER_RENDER // max(1, facts)))
    points = sorted({t for t in instants if t <= end} | {end})
    answers: dict[int, dict[str, int]] = {}
    if len(points) <= budget:
        exact = _every_instant(points, evaluate, end, leeway, budget, answers)
    else:
        exact = False
        _sample_and_bisect(points, evaluate, budget, answers)
    return _bands(answers, points[0], end, len(answers), exact)


def _codes(statuses: Sequence[PermissionStatus]) -> dict[str, int]:
    return {s.permission_id: s.entitlement for s in statuses}


def _every_instant(
    points: list[int],
    evaluate: Evaluate,
    end: int,
    leeway: int,
    budget: int,
    answers: dict[int, dict[str, int]],
) -> bool:
    """Evaluate at every fact's instant, then just after each date an answer names (the code
    may change then with no new fact: a period end, its leeway, a grace or a pass ending).
    False when the budget ran out first."""
    dates: set[int] = set()
    for t in points:
        statuses = evaluate(t)
        answers[t] = _codes(statuses)
        for status in statuses:
            if status.expire_date is not None:
                expiry = status.expire_date
                dates |= {d for d in (expiry + 1, expiry + leeway + 1) if t < d < end}
    for t in sorted(dates - answers.keys()):
        if len(answers) >= budget:
            return False
        answers[t] = _codes(evaluate(t))
    return True


def _sample_and_bisect(
    points: list[int], evaluate: Evaluate, budget: int, answers: dict[int, dict[str, int]]
) -> None:
    count = max(2, budget // 2)
    chosen = sorted({round(i * (len(points) - 1) / (count - 1)) for i in range(count)})
    for i in chosen:
        answers[points[i]] = _codes(evaluate(points[i]))
    gaps = [(a, b) for a, b in pairwise(chosen) if b - a > 1]
    while gaps and len(answers) < budget:
        a, b = gaps.pop(0)
        if answers[points[a]] == answers[points[b]]:
            continue
        middle = (a + b) // 2
        answers[points[middle]] = _codes(evaluate(points[middle]))
        gaps += [(lo, hi) for lo, hi in ((a, middle), (middle, b)) if hi - lo > 1]


def _bands(
    answers: dict[int, dict[str, int]], start: int, end: int, evaluations: int, exact: bool
) -> Bands:
    times = sorted(answers)
    span = max(1, end - start)

    def x(t: int) -> float:
        return round((t - start) * WIDTH / span, 2)

    permission_ids = sorted({p for codes in answers.values() for p in codes})
    bands = []
    for permission_id in permission_ids:
        codes = [(t, answers[t].get(permission_id, Entitlement.NEVER_BUY.value)) for t in times]
        segments, transitions = [], []
        for n, (t, code) in enumerate(codes):
            if n and code == codes[n - 1][1]:
                continue
            if n:
                transitions.append(Transition(t, codes[n - 1][1], code, x(t)))
            following = [u for u, c in codes[n + 1 :] if c != code]
            stop = following[0] if following else end
            segments.append(Segment(t, stop, code, x(t), max(0.5, x(stop) - x(t))))
        bands.append(Band(permission_id, segments, transitions))
    return Bands(start, end, bands, evaluations, exact)
