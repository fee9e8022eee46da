"""Faults on the real broker, with the real dataflow and worker: a poison record on
every internal topic, the broker paused mid-replay, a record the broker refuses,
and a client setting that cannot work. Each time the processes stay up (or, for
the setting, fail at once with one line) and every valid record is answered."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pipeline.broker import EmbeddedBroker
from streams.contracts import Topics
from streams.kafka import deliver, produce_checked, producer
from tests.helpers import collect, pipeline, produce_all, values
from tests.unit.test_bandit import _Creates

pytestmark = pytest.mark.integration


def _click(i: int, user: str) -> bytes:
    item = ["k0", "l1", "b2", "t3"][i % 4]
    record = {"event_id": f"ok-{i}", "type": "click", "user_id": user, "item_id": item}
    return json.dumps({**record, "ts": 1_700_000_000 + i}).encode()


def test_a_poison_record_on_each_internal_topic_stops_nothing(
    tmp_path, broker, topics, catalog_path
):
    """Garbage, wrong shapes, NaN and a crafted pickle on rank-requests,
    bandit-weights, item-signals, fusion-weights and recommendations: the worker
    and the dataflow stay up, every valid event gets its list (with finite
    scores), each poison record is a dead letter or a logged skip, and the
    pickle runs nothing."""
    marker = tmp_path / "pwned"
    crafted = base64.b64encode(pickle.dumps(_Creates(str(marker)))).decode("ascii")
    nan_row = {"item_id": "k0", "neighbours": [["l1", float("nan")]], "short": 1.0}
    poison = {
        topics.rank_requests: [b"garbage", b'{"request_id": 5}', b"\xff\xfe"],
        topics.bandit_weights: [
            json.dumps({"key": "all", "updates": 9, "blob": crafted}).encode(),
            json.dumps({"key": "all", "policy": "thompson", "params": crafted}).encode(),
            b"[1, 2]",
            b"null",
        ],
        topics.item_signals: [
            json.dumps({**nan_row, "long": 1.0, "ts": 1.0}).encode(),  # NaN literal
            b"not json",
            b"[]",
            json.dumps({"item_id": "k0", "neighbours": 5, "short": 1, "long": 1, "ts": 1}).encode(),
        ],
        topics.fusion_weights: [
            json.dumps({"bias": "x", "weights": {}}).encode(),
            json.dumps({"bias": 0.0, "weights": {"covis": float("inf")}}).encode(),
            b"[]",
        ],
        topics.recommendations: [b"garbage"],
    }
    # A tombstone (no value) on each compacted topic too.
    for topic in (topics.bandit_weights, topics.item_signals, topics.fusion_weights):
        poison[topic].append(None)
    p = producer(broker.bootstrap)
    for topic, records in poison.items():
        for raw in records:
            p.produce(topic, key=b"poison", value=raw)
    assert p.flush(15) == 0

    n = 12
    events = [(f"u{i % 3}".encode(), _click(i, f"u{i % 3}")) for i in range(n)]
    with pipeline(tmp_path, broker, topics, catalog_path) as procs:
        produce_all(broker.bootstrap, topics.events, events)
        got = collect(
            broker.bootstrap,
            [topics.recommendations, topics.rank_requests_dlq, topics.events_dlq],
            until=lambda ms: len(ms) >= 1 + n + 3 + 1,  # the garbage list is read back too
            procs=procs,
        )
        # Give the followers time to reach every poison record, then check again.
        deadline = time.monotonic() + 30
        log = procs.log_dir / "worker-0.log"
        while time.monotonic() < deadline and log.read_text().count("skipping a bad") < 11:
            time.sleep(0.2)
        procs.check()
        worker_log = log.read_text()

    lists = [m for m in got if m.topic() == topics.recommendations and m.key() != b"poison"]
    recs = [json.loads(m.value()) for m in lists]
    assert {r["trigger_event_id"] for r in recs} == {f"ok-{i}" for i in range(n)}
    assert all(item["score"] == item["score"] for r in recs for item in r["items"])  # no NaN
    dlq = values(got, topics.rank_requests_dlq)
    assert len(dlq) == 3 and all(d["topic"] == topics.rank_requests for d in dlq)
    shown = [d for d in values(got, topics.events_dlq) if d["topic"] == topics.recommendations]
    assert len(shown) == 1 and shown[0]["raw"] == "garbage"
    for topic in (topics.bandit_weights, topics.item_signals, topics.fusion_weights):
        skipped = worker_log.count(f"skipping a bad {topic} record")
        assert skipped == len(poison[topic]), (topic, skipped, worker_log[-3000:])
    assert not marker.exists()


def test_the_broker_paused_for_30_s_mid_replay_loses_nothing(tmp_path, catalog_path, monkeypatch):
    """SIGSTOP the broker for 30 s while events stream in at 150/s: no process
    exits, every event gets a list, and a list produced twice (a redelivered
    window) carries the same rec_id. The product's clients time records out
    after 5 s here, so windows in flight when the broker stops fail their
    deliveries and their commits: what used to stop the worker."""
    monkeypatch.setenv("STREAMREC_KAFKA_MESSAGE_TIMEOUT_MS", "5000")
    n, rate = 1500, 150.0
    records = [(f"u{i % 97}".encode(), _click(i, f"u{i % 97}")) for i in range(n)]
    topics = Topics(f"p{uuid.uuid4().hex[:8]}-")
    with (
        EmbeddedBroker(partitions=2, topics=topics) as b,
        pipeline(tmp_path, b, topics, catalog_path) as procs,
    ):
        # Warm: the first events' lists are out before the stream starts.
        produce_all(b.bootstrap, topics.events, records[:20])
        collect(b.bootstrap, [topics.recommendations], until=lambda ms: len(ms) >= 20, procs=procs)
        # The replay's own records must outlive the pause.
        replay = producer(b.bootstrap, **{"message.timeout.ms": 300_000})

        def run_replay() -> None:
            for key, value in records[20:]:
                replay.produce(topics.events, key=key, value=value)
                replay.poll(0)
                time.sleep(1 / rate)
            replay.flush(120)

        thread = threading.Thread(target=run_replay, daemon=True)
        thread.start()
        time.sleep(2)
        os.kill(b.pid, signal.SIGSTOP)
        try:
            time.sleep(30)
            procs.check()
        finally:
            os.kill(b.pid, signal.SIGCONT)
        thread.join(120)
        got = collect(
            b.bootstrap,
            [topics.recommendations],
            until=lambda ms: len({json.loads(m.value())["trigger_event_id"] for m in ms}) >= n,
            procs=procs,
            timeout_s=180,
        )
        procs.check()
    recs = values(got, topics.recommendations)
    by_trigger: dict[str, set[str]] = {}
    for r in recs:
        by_trigger.setdefault(r["trigger_event_id"], set()).add(r["rec_id"])
    assert set(by_trigger) == {f"ok-{i}" for i in range(n)}
    assert all(len(ids) == 1 for ids in by_trigger.values()), "a duplicate has another rec_id"


def test_a_record_the_broker_refuses_becomes_a_dead_letter(broker, topics):
    """Over the producer's message.max.bytes: refused for good, so the record's
    place is taken by a dead letter that says why; the small one beside it lands."""
    p = producer(broker.bootstrap, **{"message.max.bytes": 20_000})
    failed: list = []
    records = [
        (topics.recommendations, b"x" * 50_000, b"u1", None),
        (topics.recommendations, b'{"small": true}', b"u2", None),
    ]
    produce_checked(p, records, failed)
    deliver(p, failed, topics.rank_requests_dlq)
    got = collect(
        broker.bootstrap,
        [topics.recommendations, topics.rank_requests_dlq],
        until=lambda ms: len(ms) >= 2,
        timeout_s=30,
    )
    assert [m.value() for m in got if m.topic() == topics.recommendations] == [b'{"small": true}']
    (letter,) = values(got, topics.rank_requests_dlq)
    assert "refused this" in letter["error"] and "too large" in letter["error"].lower()
    assert letter["topic"] == topics.recommendations and len(letter["raw"]) < 5000


@pytest.mark.parametrize("command", ["dataflow", "worker", "replay", "report"])
def test_a_client_setting_that_cannot_work_fails_each_command_in_one_line(
    command, broker, catalog_path, tmp_path
):
    """A plaintext broker asked for TLS: every command says so in one line and
    exits 1 within the connect timeout, instead of retrying (and logging) forever.
    The setting reaches each command's clients through STREAMREC_KAFKA_*."""
    env = {
        **os.environ,
        "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAMREC_CONNECT_TIMEOUT_S": "3",
        "STREAMREC_BROKERS": broker.bootstrap,
        "STREAMREC_CATALOG": str(catalog_path),
    }
    args = {"report": ["experiment", "report"]}.get(command, [command])
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streamrec", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("streamrec: error: KafkaUnavailable: no Kafka broker answered")
    assert broker.bootstrap in lines[0] and "ssl" in lines[0].lower()
    assert time.monotonic() - started < 30


def test_a_restarted_worker_skips_the_requests_its_group_already_answered(
    tmp_path, broker, topics, catalog_path
):
    """Rank requests delivered again after a worker restart (a window published
    but not committed, a dataflow replaying from recovery) are not published a
    second time: the new worker reads the recent lists back first."""
    n = 8
    events = [(f"u{i % 3}".encode(), _click(i, f"u{i % 3}")) for i in range(n)]
    with pipeline(tmp_path, broker, topics, catalog_path) as procs:
        produce_all(broker.bootstrap, topics.events, events)
        collect(
            broker.bootstrap, [topics.recommendations], until=lambda ms: len(ms) >= n, procs=procs
        )
        procs.stop("worker-0")
        requests = collect(
            broker.bootstrap, [topics.rank_requests], until=lambda ms: len(ms) >= n, timeout_s=30
        )
        # Every request again, then one new event: its list shows the worker is through.
        produce_all(
            broker.bootstrap, topics.rank_requests, [(m.key(), m.value()) for m in requests]
        )
        procs.start("worker-0", _worker_cmd(), procs.env)
        produce_all(broker.bootstrap, topics.events, [(b"u9", _click(100, "u9"))])
        got = collect(
            broker.bootstrap,
            [topics.recommendations],
            until=lambda ms: any(b"ok-100" in m.value() for m in ms),
            procs=procs,
        )
        time.sleep(1)  # anything published before the new list has arrived by now
        got = collect(
            broker.bootstrap, [topics.recommendations], until=lambda ms: False, timeout_s=2
        )
        log = (procs.log_dir / "worker-0.log").read_text()
    triggers = [r["trigger_event_id"] for r in values(got, topics.recommendations)]
    assert sorted(triggers) == sorted([f"ok-{i}" for i in range(n)] + ["ok-100"])
    assert f"read back {n} recent lists" in log


def _worker_cmd() -> list[str]:
    from pipeline.processes import streamrec_cmd

    return streamrec_cmd("worker", "--metrics-port", "0")
