"""``build_flow`` in-process: the real dataflow over bytewax's testing source and sink.

The same flow ``streamrec dataflow`` runs, with Kafka swapped for
``TestingSource`` (Kafka-shaped messages) and ``TestingSink``: parsing, dead
letters, per-user state and the rank requests it asks for, without a broker.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main

from streams.catalog import Catalog
from streams.contracts import DeadLetter, Event, RankRequest, RecommendationRequest, Topics
from streams.dataflow import build_flow
from streams.settings import Settings

ITEMS = [f"i{n}" for n in range(6)]


def _catalog(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(len(ITEMS), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    Catalog(ITEMS, ITEMS, [None] * len(ITEMS), vectors, np.ones(len(ITEMS))).save(folder)
    return folder


def _message(topic: str, offset: int, key: str, value: bytes) -> KafkaSourceMessage:
    return KafkaSourceMessage(
        key=key.encode(), value=value, topic=topic, partition=0, offset=offset
    )


def _run(tmp_path: Path, messages: list[KafkaSourceMessage]) -> dict[str, list[bytes]]:
    settings = Settings(
        brokers="127.0.0.1:9",  # never dialled: the source and sink are the testing ones
        catalog=_catalog(tmp_path / "catalog"),
        metrics_port=0,
        latest_wins=False,
    )
    out: list = []
    run_main(build_flow(settings, source=TestingSource(messages), sink=TestingSink(out)))
    by_topic: dict[str, list[bytes]] = {}
    for m in out:
        by_topic.setdefault(m.topic, []).append(m.value)
    return by_topic


def test_events_become_rank_requests_and_bad_records_dead_letters(tmp_path: Path) -> None:
    topics = Topics("")
    events = [
        Event(event_id=f"e{n}", type="click", user_id=user, item_id=item, ts=1_700_000_000 + n)
        for n, (user, item) in enumerate([("u1", "i0"), ("u2", "i1"), ("u1", "i2")])
    ]
    request = RecommendationRequest(request_id="r1", user_id="u1", ts=1_700_000_010)
    messages = [_message(topics.events, n, e.user_id, e.to_bytes()) for n, e in enumerate(events)]
    messages.append(_message(topics.events, 3, "u3", b'{"event_id": "e9", "type": "cl'))
    messages.append(_message(topics.recommendation_requests, 0, "u1", request.to_bytes()))

    out = _run(tmp_path, messages)

    requests = [RankRequest.model_validate_json(v) for v in out[topics.rank_requests]]
    # One request per event (latest wins off) and the explicit one, each for its user.
    assert sorted(r.trigger_event_id or r.request_id for r in requests) == ["e0", "e1", "e2", "r1"]
    by_trigger = {r.trigger_event_id or r.request_id: r for r in requests}
    assert by_trigger["e2"].user_id == "u1" and by_trigger["e1"].user_id == "u2"
    # The state moved: u1's explicit request sees both of u1's clicks, in order.
    assert list(by_trigger["r1"].recent_items)[:2] == ["i2", "i0"]
    (dead,) = [DeadLetter.model_validate_json(v) for v in out[topics.events_dlq]]
    assert dead.error.startswith("not JSON") and dead.offset == 3
    assert json.loads(out[topics.events_dlq][0])["topic"] == topics.events


def test_a_record_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    topics = Topics("")
    huge = b'{"event_id": "' + b"x" * 300_000 + b'"}'
    out = _run(tmp_path, [_message(topics.events, 0, "u1", huge)])
    (dead,) = [DeadLetter.model_validate_json(v) for v in out[topics.events_dlq]]
    assert "over the" in dead.error and len(dead.raw) < 5_000
    assert topics.rank_requests not in out
