"""Message contracts: ``parse`` returns the record or a DeadLetter, never raises."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from streams.contracts import (
    DeadLetter,
    Event,
    ExperimentStamp,
    RankRequest,
    RecommendationRequest,
    Topics,
    decode_vector,
    encode_vector,
    parse,
    rec_id_for,
    user_tag,
)

TAOBAO_CSV = Path(__file__).parents[3] / "shared/data/taobao-userbehavior-sample/UserBehavior.csv"

GOOD = {"event_id": "e-1", "type": "click", "user_id": "u42", "item_id": "i9", "ts": 1732560000.25}


def _raw(**changes: object) -> bytes:
    """GOOD with fields changed; a value of ``...`` removes the field."""
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def _dead(raw: bytes | None) -> DeadLetter:
    """Parse ``raw`` as if read from events[3]@17 and insist it is dead-lettered."""
    out = parse(Event, raw, topic="events", partition=3, offset=17)
    assert isinstance(out, DeadLetter), out
    assert (out.topic, out.partition, out.offset) == ("events", 3, 17)
    return out


# --- valid events --------------------------------------------------------------------


def test_valid_event_with_float_ts() -> None:
    event = parse(Event, _raw())
    assert isinstance(event, Event)
    assert (event.event_id, event.type, event.user_id, event.item_id) == (
        "e-1",
        "click",
        "u42",
        "i9",
    )
    assert event.ts == 1732560000.25
    assert event.rec_id is event.session_id is event.price is event.quantity is None


def test_int_ts_becomes_float() -> None:
    event = parse(Event, _raw(ts=1732560000))
    assert isinstance(event, Event)
    assert event.ts == 1732560000.0 and isinstance(event.ts, float)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-11-25T18:40:00.250Z", datetime(2024, 11, 25, 18, 40, 0, 250000, timezone.utc)),
        ("2024-11-25T18:40:00+00:00", datetime(2024, 11, 25, 18, 40, tzinfo=timezone.utc)),
        ("2024-11-25T20:40:00+02:00", datetime(2024, 11, 25, 18, 40, tzinfo=timezone.utc)),
        ("2024-11-25T18:40:00", datetime(2024, 11, 25, 18, 40, tzinfo=timezone.utc)),
    ],
    ids=["Z", "utc-offset", "plus-2h", "naive-is-utc"],
)
def test_iso_8601_ts(ts: str, expected: datetime) -> None:
    event = parse(Event, _raw(ts=ts))
    assert isinstance(event, Event)
    assert event.ts == expected.timestamp()


def test_optional_fields_are_read() -> None:
    event = parse(Event, _raw(rec_id="rec-1", session_id="s-1", price=12.5, quantity=2))
    assert isinstance(event, Event)
    assert (event.rec_id, event.session_id, event.price, event.quantity) == (
        "rec-1",
        "s-1",
        12.5,
        2,
    )


def test_integer_price_is_accepted_as_float() -> None:
    event = parse(Event, _raw(price=3))
    assert isinstance(event, Event)
    assert event.price == 3.0 and isinstance(event.price, float)


def test_unknown_extra_fields_are_kept() -> None:
    event = parse(Event, _raw(referrer="search", ab={"bucket": 2}))
    assert isinstance(event, Event)
    assert event.model_extra == {"referrer": "search", "ab": {"bucket": 2}}


@pytest.mark.parametrize("event_type", ["view", "click", "add_to_cart", "favorite", "purchase"])
def test_every_event_type_parses(event_type: str) -> None:
    event = parse(Event, _raw(type=event_type))
    assert isinstance(event, Event) and event.type == event_type


def test_event_round_trips_through_bytes() -> None:
    event = Event(
        event_id="e-2",
        type="purchase",
        user_id="u1",
        item_id="i2",
        ts=1.5,
        rec_id="rec-9",
        price=4.0,
        quantity=3,
        coupon="SPRING",
    )
    assert parse(Event, event.to_bytes()) == event


# --- bad records -> DeadLetter ---------------------------------------------------------


def test_not_json() -> None:
    dead = _dead(b"hello, world")
    assert dead.error.startswith("not JSON")
    assert dead.raw == "hello, world"


def test_truncated_json_line() -> None:
    raw = _raw()[:-7]
    dead = _dead(raw)
    assert dead.error.startswith("not JSON")
    assert dead.raw == raw.decode()


@pytest.mark.skipif(not TAOBAO_CSV.is_file(), reason="shared taobao sample not present")
def test_truncated_last_line_of_the_taobao_file() -> None:
    last = TAOBAO_CSV.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    dead = _dead(last)
    assert dead.error.startswith("not JSON")
    assert dead.raw == last.decode()


def test_not_utf8() -> None:
    raw = b'{"event_id": "\xff\xfe"}'
    dead = _dead(raw)
    assert dead.error.startswith("not UTF-8")
    assert dead.raw == raw.decode("utf-8", errors="replace")


def test_none_value() -> None:
    dead = _dead(None)
    assert "empty record" in dead.error
    assert dead.raw == ""


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1, 2]", "list"), (b'"click"', "str"), (b"42", "int"), (b"4.2", "float"), (b"null", "")],
)
def test_json_that_is_not_an_object(raw: bytes, kind: str) -> None:
    dead = _dead(raw)
    assert dead.error.startswith("not a JSON object")
    assert kind in dead.error
    assert dead.raw == raw.decode()


@pytest.mark.parametrize("field", ["event_id", "type", "user_id", "item_id", "ts"])
def test_each_required_field_missing(field: str) -> None:
    raw = _raw(**{field: ...})
    dead = _dead(raw)
    assert dead.error == f"{field}: Field required"
    assert dead.raw == raw.decode()


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"user_id": 42}, "user_id", "valid string"),
        ({"item_id": 9}, "item_id", "valid string"),
        ({"ts": True}, "ts", "boolean"),
        ({"ts": "yesterday"}, "ts", "not ISO-8601"),
        ({"ts": [1, 2]}, "ts", "epoch seconds"),
        ({"price": "12.5"}, "price", "valid number"),
        ({"quantity": 1.5}, "quantity", "valid integer"),
        ({"quantity": 1.0}, "quantity", "valid integer"),
        ({"rec_id": 7}, "rec_id", "valid string"),
        ({"type": "like"}, "type", "'purchase'"),
        ({"event_id": ""}, "event_id", "at least 1 character"),
        ({"user_id": ""}, "user_id", "at least 1 character"),
        ({"item_id": ""}, "item_id", "at least 1 character"),
    ],
)
def test_wrong_values_name_the_field(changes: dict, field: str, words: str) -> None:
    raw = _raw(**changes)
    dead = _dead(raw)
    assert dead.error.startswith(f"{field}: ")
    assert words in dead.error
    assert dead.raw == raw.decode()


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_ts(literal: bytes) -> None:
    raw = _raw(ts=0).replace(b'"ts": 0', b'"ts": ' + literal)
    dead = _dead(raw)
    assert dead.error == "ts: Value error, must be a finite number"


def test_non_finite_price() -> None:
    dead = _dead(_raw(price=0).replace(b'"price": 0', b'"price": NaN'))
    assert dead.error == "price: Value error, must be a finite number"


def test_several_problems_are_all_named() -> None:
    dead = _dead(_raw(user_id=1, type="like", ts=...))
    for field in ("user_id", "type", "ts"):
        assert f"{field}: " in dead.error


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        (_raw(ts=10**400), "ts: Value error, ts is too large"),
        (_raw(price=10**400), "price: Value error, price is too large"),
        (_raw().replace(b"1732560000.25", b"1" * 5000), "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=["huge-int-ts", "huge-int-price", "int-over-digit-limit", "deep-nesting"],
)
def test_hostile_records_are_dead_lettered_not_raised(raw: bytes, start: str) -> None:
    assert _dead(raw).error.startswith(start)


def test_defaults_for_position() -> None:
    dead = parse(Event, b"nope")
    assert isinstance(dead, DeadLetter)
    assert (dead.topic, dead.partition, dead.offset) == (None, None, None)


# --- recommendation requests -----------------------------------------------------------


def test_recommendation_request_good() -> None:
    req = parse(
        RecommendationRequest,
        b'{"request_id": "r1", "user_id": "u1", "k": 5, "context": {"page": "home"}}',
    )
    assert req == RecommendationRequest(
        request_id="r1", user_id="u1", k=5, context={"page": "home"}
    )
    minimal = parse(RecommendationRequest, b'{"request_id": "r2", "user_id": "u1"}')
    assert isinstance(minimal, RecommendationRequest)
    assert minimal.k == 10 and minimal.context is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"request_id": "r1", "user_id": "u1", "k": 0}', "k: "),
        (b'{"request_id": "r1", "user_id": "u1", "k": 1001}', "k: "),
        (b'{"request_id": "r1", "user_id": "u1", "k": "5"}', "k: "),
        (b'{"request_id": "r1"}', "user_id: Field required"),
        (b'{"request_id": "", "user_id": "u1"}', "request_id: "),
        (b'{"request_id": "r1", "user_id": "u1", "extra": 1}', "extra: "),
        (b'{"request_id": "r1", "user_id": "u1", "context": []}', "context: "),
        (b'{"request_id": "r1"', "not JSON"),
        (b"[]", "not a JSON object"),
    ],
)
def test_recommendation_request_bad(raw: bytes, words: str) -> None:
    dead = parse(RecommendationRequest, raw, "recommendation-requests", 0, 4)
    assert isinstance(dead, DeadLetter)
    assert words in dead.error
    assert dead.raw == raw.decode()
    assert (dead.topic, dead.partition, dead.offset) == ("recommendation-requests", 0, 4)


# --- rank requests -----------------------------------------------------------------------


def _rank_request() -> RankRequest:
    return RankRequest(
        request_id="evt:e-1",
        user_id="u1",
        k=3,
        m=200,
        user_vector=encode_vector(np.array([0.6, 0.8])),
        counts={"i7": (2.0, 9.5)},
        recent_items=["i7"],
        trigger_event_id="e-1",
        arrival_ts=10.0,
        created_ts=10.5,
        experiment=ExperimentStamp(name="diversity-v1", variant="bandit"),
    )


def test_rank_request_good_round_trip() -> None:
    req = _rank_request()
    assert parse(RankRequest, req.to_bytes()) == req
    np.testing.assert_array_equal(req.vector(), np.array([0.6, 0.8], dtype=np.float32))


@pytest.mark.parametrize("text", ["not base64!", "AAA=", "AAAAAAA="])
def test_a_vector_that_is_not_float32_base64_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_vector(text)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"arrival_ts": ...}, "arrival_ts: Field required"),
        ({"counts": {"i1": [1.0]}}, "counts.i1"),
        ({"m": -1}, "m: "),
        ({"k": "3"}, "k: "),
        ({"user_vector": [0.6, 0.8]}, "user_vector: "),
        ({"surprise": True}, "surprise: "),
    ],
)
def test_rank_request_bad(change: dict, words: str) -> None:
    record = {**json.loads(_rank_request().to_bytes()), **change}
    raw = json.dumps({k: v for k, v in record.items() if v is not ...}).encode()
    dead = parse(RankRequest, raw, "rank-requests", 1, 2)
    assert isinstance(dead, DeadLetter)
    assert words in dead.error
    assert dead.raw == raw.decode()


# --- ids and topics ---------------------------------------------------------------------


def test_rec_id_is_deterministic_and_distinct_and_names_its_user() -> None:
    assert rec_id_for("evt:e-1", "u1") == rec_id_for("evt:e-1", "u1")
    ids = {rec_id_for(f"evt:e-{i}", "u1") for i in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith(f"rec-{user_tag('u1')}-") and len(i) == 25 for i in ids)
    assert rec_id_for("evt:e-1", "u2").split("-")[1] != rec_id_for("evt:e-1", "u1").split("-")[1]


def test_topic_names() -> None:
    t = Topics()
    assert t.all() == [
        "events",
        "events.dlq",
        "catalog",
        "recommendation-requests",
        "rank-requests",
        "rank-requests.dlq",
        "recommendations",
        "bandit-weights",
        "outcomes",
        "outcomes.unattributed",
        "item-signals",
        "fusion-weights",
        "forget-requests",
        "forgotten",
    ]
    assert t.compacted() == {"catalog", "bandit-weights", "item-signals", "fusion-weights"}


def test_topic_prefix() -> None:
    t = Topics("run7-")
    assert t.events == "run7-events"
    assert t.events_dlq == "run7-events.dlq"
    assert t.all() == [f"run7-{name}" for name in Topics().all()]
    assert len(set(t.all())) == 14
    assert t.compacted() == {f"run7-{name}" for name in Topics().compacted()}


def test_forget_request_round_trip_and_bad_ones_are_dead_letters() -> None:
    from streams.contracts import ForgetRequest

    req = ForgetRequest(request_id="f1", user_id="u1")
    assert parse(ForgetRequest, req.to_bytes()) == req
    assert "user_id" in parse(ForgetRequest, b'{"request_id": "f1"}').error
    assert "not JSON" in parse(ForgetRequest, b"nope").error
