"""Bad input on the real broker: every bad record lands on events.dlq with a
reason, and the valid events around them are all processed."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TAOBAO, collect, pipeline, produce_all, values

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


def _event(event_id: str, **fields: object) -> bytes:
    record = {"event_id": event_id, "type": "click", "user_id": "u1", "item_id": "k0"}
    return json.dumps({"ts": 1_700_000_000, **record, **fields}).encode()


# The faults of issue 13: each crashed the dataflow (or passed as valid) before.
OVERSIZED_AND_OUT_OF_RANGE = {
    b"\x01" * 200_000: "200000 bytes is over",
    b"\xff" * 400_000: "400000 bytes is over",
    b'"' * 600_000: "600000 bytes is over",
    b"[" * 900_000: "900000 bytes is over",  # unclosed nesting
    _event("big-user", user_id="u" * 60_000): "user_id: String should have at most 256",
    _event("far-future", ts=1e300): "ts: Value error, must be between",
    _event("before-1970", ts=-1e12): "ts: Value error, must be between",
    _event("huge-quantity", quantity=10**400): "quantity",
    _event("negative-price", price=-1e308): "price: Value error, must be between",
}


def test_oversized_and_out_of_range_records_are_dead_lettered_also_after_a_restart(
    tmp_path, broker, topics, catalog_path
):
    """Each becomes a dead letter with its reason and a cut ``raw``; the dataflow
    stays up, answers the valid events around them, and a restart from its
    recovery store reads past them instead of dying on them again."""
    from streams.contracts import MAX_RAW_CHARS

    records = []
    for i, raw in enumerate(OVERSIZED_AND_OUT_OF_RANGE):
        records += [(b"u1", _valid(2 * i, f"u{i % 3}")), (None, raw)]
        records.append((b"u1", _valid(2 * i + 1, f"u{i % 3}")))
    valid, bad = 2 * len(OVERSIZED_AND_OUT_OF_RANGE), len(OVERSIZED_AND_OUT_OF_RANGE)
    from pipeline.processes import ProcessGroup, streamrec_cmd
    from streams.settings import Settings

    settings = Settings(
        brokers=broker.bootstrap,
        catalog=catalog_path,
        topic_prefix=topics.prefix,
        metrics_port=0,
        latest_wins=False,
    )
    env = settings.to_env()
    dataflow = streamrec_cmd("dataflow", "-r", str(tmp_path / "recovery"), "-s", "1", "-b", "0")
    with ProcessGroup(tmp_path / "logs") as procs:
        procs.start("dataflow", dataflow, env)
        procs.start("worker", streamrec_cmd("worker"), env)
        # The producer's own limit is 1 MB: every record here fits it.
        produce_all(broker.bootstrap, topics.events, records)
        got = collect(
            broker.bootstrap,
            [topics.events_dlq, topics.recommendations],
            until=lambda ms: len(ms) >= valid + bad,
            procs=procs,
        )
        procs.check()
        # Whether it resumes past the bad records or reads some again, it must not die.
        procs.stop("dataflow")
        procs.start("dataflow", dataflow, env)
        after = [(b"u9", _valid(1000, "u9"))]
        produce_all(broker.bootstrap, topics.events, after)
        again = collect(
            broker.bootstrap,
            [topics.recommendations],
            until=lambda ms: any(
                json.loads(m.value())["trigger_event_id"] == "ok-1000" for m in ms
            ),
            procs=procs,
        )
        procs.check()
    recs = values(got, topics.recommendations)
    assert {r["trigger_event_id"] for r in recs} == {f"ok-{i}" for i in range(valid)}
    dlq = values(got, topics.events_dlq)
    assert len(dlq) == bad
    errors = [d["error"] for d in dlq]
    for reason in OVERSIZED_AND_OUT_OF_RANGE.values():
        assert sum(reason in e for e in errors) >= 1, (reason, errors)
    assert all(len(d["raw"]) <= MAX_RAW_CHARS + 100 for d in dlq)
    assert any(r["trigger_event_id"] == "ok-1000" for r in values(again, topics.recommendations))
