"""Bad input on the real broker: every bad record lands on events.dlq with a
reason, and the valid events around them are all processed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TAOBAO, collect, pipeline, produce_all, values

pytestmark = pytest.mark.integration

BAD = {
    b"this is not json": "not JSON",
    b'{"event_id": "b1", "type": "click", "user_id": "u1", "item_id": "k1", "ts": 1': "not JSON",
    b"\xff\xfe\xfa": "not UTF-8",
    b"[1, 2, 3]": "not a JSON object",
    b'{"type": "click", "user_id": "u1", "item_id": "k1", "ts": 1}': "event_id: Field required",
    b'{"event_id": "b2", "type": "click", "user_id": 42, "item_id": "k1", "ts": 1}': "user_id",
    b'{"event_id": "b3", "type": "click", "user_id": "u1", "item_id": "k1", "ts": "soon"}': "ts",
    b'{"event_id": "b4", "type": "teleport", "user_id": "u1", "item_id": "k1", "ts": 1}': "type",
}


def _valid(i: int, user: str) -> bytes:
    item = ["k0", "l1", "b2", "t3"][i % 4]
    return json.dumps(
        {
            "event_id": f"ok-{i}",
            "type": "click",
            "user_id": user,
            "item_id": item,
            "ts": 1_700_000_000 + i,
        }
    ).encode()


def test_bad_records_are_dead_lettered_and_valid_ones_processed(
    tmp_path, broker, topics, catalog_path
):
    truncated = TAOBAO.joinpath("UserBehavior.csv").read_bytes().rstrip(b"\n").split(b"\n")[-1]
    bad = [*BAD.items(), (truncated, "not JSON")]
    records, valid = [], 0
    for i, (raw, _) in enumerate(bad):
        records.append((b"u1", _valid(2 * i, f"u{i % 3}")))
        records.append((None, raw))
        records.append((b"u1", _valid(2 * i + 1, f"u{i % 3}")))
        valid += 2
    with pipeline(tmp_path, broker, topics, catalog_path) as procs:
        produce_all(broker.bootstrap, topics.events, records)
        got = collect(
            broker.bootstrap,
            [topics.events_dlq, topics.recommendations],
            until=lambda ms: len(ms) >= valid + len(bad),
            procs=procs,
        )
    dlq = values(got, topics.events_dlq)
    recs = values(got, topics.recommendations)
    assert len(recs) == valid, "every valid event around the bad ones is processed"
    assert {r["trigger_event_id"] for r in recs} == {f"ok-{i}" for i in range(valid)}
    assert len(dlq) == len(bad)
    by_raw = {d["raw"]: d for d in dlq}
    for raw, reason in bad:
        text = raw.decode("utf-8", errors="replace")
        assert text in by_raw, f"missing dead letter for {raw!r}"
        letter = by_raw[text]
        assert reason in letter["error"], (reason, letter["error"])
        assert letter["topic"] == topics.events
        assert letter["partition"] is not None and letter["offset"] is not None
    assert truncated.decode() == "100370,1968385,1875258,pv"
