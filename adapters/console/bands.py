"""A band per permission: its entitlement code over a customer's life, for the console's SVG.

Codes change when a fact arrives (at the fact's instant) or when time passes a date the answer
names (a period end, the leeway after it, a grace or a pass ending). Each evaluation derives the
answer from every fact known by then, so a long history cannot be evaluated at each of its
instants within one render: instants are evaluated coarse to fine within a time budget, an
interval whose ends differ first (bisection places its transition at the fact where it
happened), then the widest interval. A short history is thus evaluated at every instant and at
the dates its answers name (exact); a long one is sampled, and the page says so.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from domain.rules import Entitlement, PermissionStatus

WIDTH = 1000  # the SVG's user units across
BUDGET_SECONDS = 0.1  # per band computation; kept (`BandCache`) until the history changes
MAX_EVALUATIONS = 2000

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
    instants: Sequence[int],
    evaluate: Evaluate,
    end: int,
    leeway: int,
    seconds: float = BUDGET_SECONDS,
    max_evaluations: int = MAX_EVALUATIONS,
) -> Bands:
    """Bands from the facts' instants up to `end`, evaluated for about `seconds` at most."""
    points = sorted({t for t in instants if t <= end} | {end})
    deadline = time.perf_counter() + seconds
    answers: dict[int, dict[str, int]] = {}
    dates: set[int] = set()

    def spent() -> bool:
        return len(answers) >= max_evaluations or time.perf_counter() >= deadline

    def run(t: int) -> None:
        statuses = evaluate(t)
        answers[t] = {s.permission_id: s.entitlement for s in statuses}
        for status in statuses:
            if status.expire_date is not None:
                expiry = status.expire_date
                dates.update(d for d in (expiry + 1, expiry + leeway + 1) if t < d < end)

    run(points[0])
    run(points[-1])
    exact = _refine(points, answers, run, spent)
    # Time alone may change a code just after a date an answer names (and the answer then may
    # name another date: a grace after a period end).
    while exact and (pending := sorted(dates - answers.keys())):
        for t in pending:
            if spent():
                exact = False
                break
            run(t)
    return _bands(answers, points[0], end, len(answers), exact)


def _refine(
    points: list[int],
    answers: dict[int, dict[str, int]],
    run: Callable[[int], None],
    spent: Callable[[], bool],
) -> bool:
    """Evaluate the instants between the ends, an interval whose ends differ first, then the
    widest; True once every instant is evaluated."""
    gaps: list[tuple[bool, int, int, int]] = []

    def push(a: int, b: int) -> None:
        if b - a > 1:
            same = answers[points[a]] == answers[points[b]]
            heapq.heappush(gaps, (same, a - b, a, b))

    push(0, len(points) - 1)
    while gaps:
        if spent():
            return False
        _, _, a, b = heapq.heappop(gaps)
        middle = (a + b) // 2
        run(points[middle])
        push(a, middle)
        push(middle, b)
    return True


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
