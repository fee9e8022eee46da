"""End to end on the real embedded broker: events -> dataflow -> worker -> lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.datasets import load_dataset
from streams.contracts import NO_EXPERIMENT, Recommendation
from tests.helpers import collect, pipeline, produce_all, values

pytestmark = pytest.mark.integration


def _events(generic_data: Path):
    ds = load_dataset(generic_data)
    return [(e.user_id.encode(), e.to_bytes()) for e in ds.interactions.events()], ds


def test_every_triggered_user_gets_a_contract_shaped_list_without_seen_items(
    tmp_path, broker, topics, catalog_path, generic_data
):
    records, ds = _events(generic_data)
    n = len(records)
    with pipeline(tmp_path, broker, topics, catalog_path) as procs:
        produce_all(broker.bootstrap, topics.events, records)
        got = collect(
            broker.bootstrap,
            [topics.recommendations],
            until=lambda ms: len(ms) >= n,
            procs=procs,
        )
    recs = values(got, topics.recommendations)
    assert len(recs) == n, f"expected one list per event, got {len(recs)} of {n}"
    # The contract: every field of ARCHITECTURE.md, validated by the shared model.
    parsed = [Recommendation.model_validate(r) for r in recs]
    assert {r.user_id for r in parsed} == set(ds.interactions.user_id)
    assert {r.trigger_event_id for r in parsed} == set(ds.interactions.event_id)
    assert len({r.rec_id for r in parsed}) == n
    # Seen filtering: a list never holds an item the user touched up to its trigger.
    position = {e: i for i, e in enumerate(ds.interactions.event_id)}
    for r in parsed:
        upto = position[r.trigger_event_id]
        seen = {
            ds.interactions.item_id[i]
            for i in range(upto + 1)
            if ds.interactions.user_id[i] == r.user_id
        }
        items = [x.item_id for x in r.items]
        assert len(items) == 10 and not seen & set(items), (r.user_id, seen & set(items))
        assert [x.rank for x in r.items] == list(range(1, 11))
        assert r.policy.reranker == "mmr" and r.policy.arm == "mmr:0.7"
        # Event on the topic to list out: a positive time, and not the clamp's 0.
        assert 0 < r.latency_ms < 120_000
        assert r.experiment == NO_EXPERIMENT  # no experiment file


def test_explicit_request_is_answered_with_its_request_id(tmp_path, broker, topics, catalog_path):
    req = b'{"request_id": "r-1", "user_id": "nobody", "k": 5}'
    with pipeline(tmp_path, broker, topics, catalog_path) as procs:
        produce_all(broker.bootstrap, topics.recommendation_requests, [(b"nobody", req)])
        got = collect(
            broker.bootstrap, [topics.recommendations], until=lambda ms: len(ms) >= 1, procs=procs
        )
    (rec,) = values(got, topics.recommendations)
    assert rec["request_id"] == "r-1" and rec["trigger_event_id"] is None
    assert len(rec["items"]) == 5  # a cold user: the popularity fallback
