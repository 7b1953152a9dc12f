"""Bad webhook bodies, correctly signed, are refused with a clear 4xx and nothing written.

The signature is always valid here, so that what is tested is the parsing behind it: truncated
JSON, wrong types, missing ids, huge and over-limit bodies, deep nesting, unknown event types,
wrong encodings and NUL bytes. A valid event of an unknown type is accepted (200) and recorded.
Whatever is accepted must also be projectable: a body the read model cannot hold would stall it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from adapters.bootstrap import Engine
from adapters.stripe.envelope import read_envelope
from adapters.usecases.ingest import Webhook
from tests.conftest import signed_headers
from tests.lifecycles import FATES, lifecycle

MAX_BODY = 1_048_576  # the default `max_body_bytes`, which the test configuration keeps
URL = "/v1/stripe/webhooks/demo"
_customers = itertools.count(10_000)

ACCEPTED, REFUSED, EITHER = "accepted", "refused", "either"
FITS = "accepted if it fits"  # accepted when within max_body_bytes, else 413


@dataclass(frozen=True)
class Mutation:
    """How to spoil a valid event: `apply` turns its dict into body bytes; `expect` says whether
    the result must be accepted, refused, or may be either (arbitrary JSON)."""

    name: str
    apply: Callable[[dict[str, Any]], bytes]
    expect: str

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return f"Mutation({self.name!r}, expect={self.expect})"


def fresh_event(fate_index: int, which: int) -> dict[str, Any]:
    """A realistic Stripe event for a customer no other example uses."""
    bodies = lifecycle(next(_customers), "prod_basic", 0, FATES[fate_index % len(FATES)], True)
    return json.loads(bodies[which % len(bodies)])


def encoded(event: Any) -> bytes:
    """UTF-8 as Stripe sends it (unescaped); a lone surrogate becomes invalid UTF-8 bytes."""
    return json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _with(key: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    return lambda event: encoded({**event, key: value})


def _without(key: str) -> Callable[[dict[str, Any]], bytes]:
    return lambda event: encoded({k: v for k, v in event.items() if k != key})


def _nested(depth: int, opener: str) -> str:
    """`depth` nested arrays, or objects, as JSON text."""
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def _with_raw_field(text: str) -> Callable[[dict[str, Any]], bytes]:
    """Splice raw JSON text into data.object (for nesting json.dumps itself could not write)."""

    def apply(event: dict[str, Any]) -> bytes:
        body = encoded(event)
        marker = b'"object": {'
        at = body.index(marker, body.index(b'"data"')) + len(marker)
        return body[:at] + b'"deep": ' + text.encode() + b", " + body[at:]

    return apply


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def truncations(draw: st.DrawFn) -> Mutation:
    fraction = draw(st.floats(0.0, 0.999))

    def apply(event: dict[str, Any]) -> bytes:
        body = encoded(event)
        return body[: int(len(body) * fraction)]

    return Mutation(f"truncated at {fraction:.3f}", apply, REFUSED)


@st.composite
def wrong_types(draw: st.DrawFn) -> Mutation:
    key = draw(st.sampled_from(["id", "type", "created", "data"]))
    if key in ("id", "type"):
        value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, str) or not v.strip()))
    elif key == "created":
        value = draw(JSON_VALUES.filter(lambda v: v is not None and type(v) is not int))
    else:
        value = draw(
            JSON_VALUES.filter(
                lambda v: not isinstance(v, dict) or not isinstance(v.get("object"), dict)
            )
        )
    return Mutation(f"{key}={value!r}", _with(key, value), REFUSED)


@st.composite
def missing_keys(draw: st.DrawFn) -> Mutation:
    key = draw(st.sampled_from(["id", "type", "data"]))
    return Mutation(f"without {key}", _without(key), REFUSED)


@st.composite
def huge_strings(draw: st.DrawFn) -> Mutation:
    size = draw(st.sampled_from([100_000, 600_000, MAX_BODY - 20_000, MAX_BODY, 3 * MAX_BODY]))
    char = draw(st.sampled_from(["x", "é", "€", "\U0001f600"]))

    def apply(event: dict[str, Any]) -> bytes:
        padding = char * (size // len(char.encode()))
        return encoded({**event, "padding": padding})

    return Mutation(f"padding of {size} bytes of {char!r}", apply, FITS)


@st.composite
def deep_nesting(draw: st.DrawFn) -> Mutation:
    """Nesting up to the parser's limit (1,024 levels) is stored and read back by the same
    parser; deeper is refused (never a RecursionError and a 500)."""
    depth = draw(st.one_of(st.integers(100, 900), st.integers(1_100, 20_000)))
    opener = draw(st.sampled_from(["[", "{"]))
    fate = ACCEPTED if depth <= 900 else REFUSED
    return Mutation(f"{opener} nested {depth} deep", _with_raw_field(_nested(depth, opener)), fate)


@st.composite
def unknown_types(draw: st.DrawFn) -> Mutation:
    words = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
    event_type = f"{draw(words)}.{draw(words)}.unknown_to_us"
    return Mutation(f"type {event_type}", _with("type", event_type), ACCEPTED)


@st.composite
def wrong_encodings(draw: st.DrawFn) -> Mutation:
    encoding = draw(st.sampled_from(["latin-1", "utf-16", "utf-16-le", "utf-8-sig", "utf-32"]))

    def apply(event: dict[str, Any]) -> bytes:
        labelled = {**event, "data": {**event["data"], "note": "café, naïve, Ørsted"}}
        return json.dumps(labelled, ensure_ascii=False).encode(encoding)

    return Mutation(f"encoded as {encoding}", apply, REFUSED)


@st.composite
def bad_bytes(draw: st.DrawFn) -> Mutation:
    """NUL bytes, invalid UTF-8 sequences, and escaped NULs and lone surrogates inside strings."""
    raw = draw(st.sampled_from([b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x00"]))
    fraction = draw(st.floats(0.0, 1.0))
    escaped = draw(st.sampled_from(["\\u0000", "\\ud800", "\\udfff", "a\\u0000b"]))
    spliced = draw(st.booleans())

    def apply(event: dict[str, Any]) -> bytes:
        body = encoded(event)
        if spliced:
            at = int(len(body) * fraction)
            return body[:at] + raw + body[at:]
        return body.replace(b'"id": "evt_', f'"id": "{escaped}evt_'.encode(), 1)

    name = f"{raw!r} at {fraction:.2f}" if spliced else f"id with {escaped}"
    return Mutation(name, apply, REFUSED)


@st.composite
def arbitrary_json(draw: st.DrawFn) -> Mutation:
    value = draw(JSON_VALUES)
    return Mutation(f"arbitrary {value!r}", lambda _: encoded(value), EITHER)


MUTATIONS = st.one_of(
    truncations(),
    wrong_types(),
    missing_keys(),
    huge_strings(),
    deep_nesting(),
    unknown_types(),
    wrong_encodings(),
    bad_bytes(),
    arbitrary_json(),
)


# --- Posting and judging ------------------------------------------------------------------------


def post_signed(client: TestClient | httpx.Client, body: bytes) -> Any:
    """Sign exactly what is sent (decoded leniently when it is not UTF-8: the engine refuses
    non-UTF-8 before it looks at the signature, so that case is refused either way)."""
    text = body.decode("utf-8", "surrogateescape")
    headers = signed_headers(text.encode("utf-8", "replace").decode("utf-8"))
    return client.post(URL, content=body, headers=headers)


def notifications(engine: Engine) -> int:
    return engine.log.recorder.max_notification_id() or 0


def assert_refused_cleanly(response: Any, before: int, engine: Engine) -> None:
    assert response.status_code in (400, 413), response.text
    error = response.json()
    assert error["status"] == response.status_code
    assert error["error"]["description"]
    assert notifications(engine) == before, "a refused webhook wrote something"


def assert_recorded(response: Any, body: bytes, before: int, engine: Engine) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}
    assert notifications(engine) > before
    raw = body.decode("utf-8")
    envelope = read_envelope(json.loads(raw))
    assert engine.ingestor.is_duplicate(Webhook("demo", envelope, raw))


def assert_projectable(engine: Engine) -> None:
    """Every accepted body can be applied by the read models (none stalls on it)."""
    engine.project()
    assert engine.follower.lag() == 0


def judge(client: TestClient, engine: Engine, body: bytes, expect: str) -> int:
    before = notifications(engine)
    response = post_signed(client, body)
    assert response.status_code < 500, response.text
    if len(body) > MAX_BODY:
        assert response.status_code == 413
    elif expect == FITS:
        expect = ACCEPTED
    if expect == ACCEPTED or (expect == EITHER and response.status_code == 200):
        assert_recorded(response, body, before, engine)
    else:
        assert_refused_cleanly(response, before, engine)
    return response.status_code


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutation=MUTATIONS, fate=st.integers(0, 5), which=st.integers(0, 5))
def test_mutated_bodies_are_refused_or_recorded_never_5xx(
    client: TestClient, engine: Engine, mutation: Mutation, fate: int, which: int
) -> None:
    body = mutation.apply(fresh_event(fate, which))
    judge(client, engine, body, mutation.expect)
    assert_projectable(engine)


# --- Explicit cases -----------------------------------------------------------------------------


def valid_body() -> bytes:
    return encoded(fresh_event(0, 0))


EXPLICIT_REFUSALS: dict[str, Callable[[], bytes]] = {
    "10,000 nested arrays": lambda: b"[" * 10_000 + b"]" * 10_000,
    "10,000 nested arrays inside an event": lambda: _with_raw_field(_nested(10_000, "["))(
        fresh_event(0, 0)
    ),
    "empty body": lambda: b"",
    "truncated": lambda: valid_body()[:-1],
    "JSON null": lambda: b"null",
    "a list of events": lambda: b"[" + valid_body() + b"]",
    "id is a number": lambda: _with("id", 12345)(fresh_event(0, 0)),
    "id is empty": lambda: _with("id", " ")(fresh_event(0, 0)),
    "id is 10,000 characters": lambda: _with("id", "evt_" + "x" * 10_000)(fresh_event(0, 0)),
    "type is null": lambda: _with("type", None)(fresh_event(0, 0)),
    "created is a string": lambda: _with("created", "1700000000")(fresh_event(0, 0)),
    "created is true": lambda: _with("created", True)(fresh_event(0, 0)),
    "created beyond 64 bits": lambda: _with("created", 2**70)(fresh_event(0, 0)),
    "data is a list": lambda: _with("data", [])(fresh_event(0, 0)),
    "data.object is a string": lambda: _with("data", {"object": "cus_1"})(fresh_event(0, 0)),
    "NaN": lambda: valid_body().replace(b'"created": ', b'"amount": NaN, "created": ', 1),
    "UTF-8 BOM": lambda: b"\xef\xbb\xbf" + valid_body(),
    "UTF-16": lambda: valid_body().decode().encode("utf-16"),
    "latin-1": lambda: json.dumps({**fresh_event(0, 0), "n": "é"}, ensure_ascii=False).encode(
        "latin-1"
    ),
    "invalid UTF-8": lambda: valid_body().replace(b"evt_", b"evt_\xff", 1),
    "raw NUL byte": lambda: valid_body().replace(b"evt_", b"evt_\x00", 1),
    "escaped NUL in the id": lambda: valid_body().replace(b"evt_", b"evt_\\u0000", 1),
    "escaped NUL in a customer id": lambda: valid_body().replace(b"cus_", b"cus_\\u0000", 1),
    "lone surrogate in the id": lambda: valid_body().replace(b"evt_", b"evt_\\ud800", 1),
    "over the body limit": lambda: _with("padding", "x" * MAX_BODY)(fresh_event(0, 0)),
}


@pytest.mark.parametrize("case", sorted(EXPLICIT_REFUSALS))
def test_explicit_bad_bodies_are_refused(client: TestClient, engine: Engine, case: str) -> None:
    status = judge(client, engine, EXPLICIT_REFUSALS[case](), REFUSED)
    assert status == (413 if case == "over the body limit" else 400)


def test_an_unknown_event_type_is_recorded_once(client: TestClient, engine: Engine) -> None:
    body = _with("type", "radar.early_fraud_warning.invented")(fresh_event(0, 0))
    judge(client, engine, body, ACCEPTED)
    before = notifications(engine)
    again = post_signed(client, body)
    assert again.json() == {"received": True, "duplicate": True}
    assert notifications(engine) == before
    assert_projectable(engine)


def test_a_large_body_under_the_limit_is_recorded(client: TestClient, engine: Engine) -> None:
    body = _with("padding", "é" * 500_000)(fresh_event(0, 0))
    assert MAX_BODY - 50_000 < len(body) <= MAX_BODY
    judge(client, engine, body, ACCEPTED)
    assert_projectable(engine)


def test_nesting_stripe_could_send_is_accepted(client: TestClient, engine: Engine) -> None:
    judge(client, engine, _with_raw_field(_nested(50, "{"))(fresh_event(0, 0)), ACCEPTED)
    assert_projectable(engine)


def test_a_real_server_survives_every_bad_body(tmp_path) -> None:
    """The same bodies against `entitlements serve` (uvicorn's own parsing in front): every one
    refused, and the process still healthy afterwards."""
    from tests.test_faults import Server  # a subprocess server on a free port

    server = Server(tmp_path, f"sqlite:///{tmp_path / 'entitlements.sqlite'}")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for case, make in sorted(EXPLICIT_REFUSALS.items()):
                response = post_signed(http, make())
                assert response.status_code in (400, 413), (case, response.text)
        assert server.process.poll() is None
        assert server.healthz().status_code == 200
    finally:
        server.stop()
