"""The bands of the console's customer page: a permission's code over time, exact for short
histories, within a budget (and honest about it) for long ones."""

from __future__ import annotations

from adapters.console.bands import WIDTH, permission_bands
from domain.rules import PermissionStatus


def status(code: int, expire: int | None = None) -> tuple[PermissionStatus, ...]:
    return (PermissionStatus("premium", code, expire, (), "rule", ()),)


def test_codes_change_at_the_facts_instants_and_are_labelled() -> None:
    def evaluate(t: int):
        return status(5 if t < 200 else -5)

    bands = permission_bands([100, 150, 200, 250], evaluate, end=300, leeway=0, seconds=60)
    (band,) = bands.bands
    assert bands.exact and (bands.start, bands.end) == (100, 300)
    assert [(s.start, s.end, s.code) for s in band.segments] == [(100, 200, 5), (200, 300, -5)]
    assert [(t.at, t.before, t.after) for t in band.transitions] == [(200, 5, -5)]
    assert band.segments[0].x == 0 and band.segments[-1].x + band.segments[-1].width == WIDTH


def test_a_code_that_changes_with_time_alone_is_found_after_its_date() -> None:
    """A period ends at 500 and, with no renewal, the code drops after the leeway (50)."""

    def evaluate(t: int):
        return status(5, 500) if t <= 550 else status(0, 500)

    bands = permission_bands([100], evaluate, end=1000, leeway=50, seconds=60)
    assert bands.exact
    (band,) = bands.bands
    assert [(t.at, t.before, t.after) for t in band.transitions] == [(551, 5, 0)]


def test_a_long_history_is_sampled_within_budget_and_bisected_to_the_transition() -> None:
    instants = list(range(0, 100_000, 10))  # 10,000 facts
    calls: list[int] = []

    def evaluate(t: int):
        calls.append(t)
        return status(5 if t < 70_010 else -2)

    bands = permission_bands(
        instants, evaluate, end=100_000, leeway=0, seconds=60, max_evaluations=20
    )
    (band,) = bands.bands
    assert not bands.exact
    assert len(calls) == bands.evaluations == 20
    # the interval whose ends differ is bisected first: 18 halvings find the very fact
    assert [(t.at, t.before, t.after) for t in band.transitions] == [(70_010, 5, -2)]


def test_a_spent_time_budget_still_draws_the_ends() -> None:
    bands = permission_bands(list(range(100)), lambda t: status(5), end=200, leeway=0, seconds=0)
    assert not bands.exact and bands.evaluations == 2
    assert [(s.start, s.end, s.code) for s in bands.bands[0].segments] == [(0, 200, 5)]


def test_a_date_found_on_a_date_is_followed_too() -> None:
    """The period ends at 500; after the leeway a grace runs to 700; then the code drops."""

    def evaluate(t: int):
        if t <= 550:
            return status(5, 500)
        return status(1, 700) if t <= 700 else status(-1, 700)

    bands = permission_bands([100], evaluate, end=1000, leeway=50, seconds=60)
    (band,) = bands.bands
    assert bands.exact
    assert [(t.at, t.before, t.after) for t in band.transitions] == [(551, 5, 1), (701, 1, -1)]
