"""Item signals on the real broker: the dataflow's ``item-signals`` rows equal the
in-process ones and survive a killed dataflow, and the worker follows the rows
and ``fusion-weights`` onto its ranker.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid

import pytest

from streams.catalog import Catalog
from streams.contracts import Event, FusionWeights, Topics, parse
from streams.dataflow import Trigger, UserStep
from streams.settings import Settings
from streams.signals import (
    CoVisit,
    Hit,
    SignalRow,
    SignalsConfig,
    SignalsFeed,
)
from tests.helpers import wait_for_snapshot, wait_rank_requests
from tests.unit.test_signals import (  # shared with the unit half
    _SIGNAL_SETTINGS,
    CUT,
    _run,
    _signal,
)


def _latest_rows(brokers: str, topic: str, expected: dict, procs, timeout_s: float = 90.0):
    """(the latest row per item on ``topic`` once it equals ``expected`` or at the
    timeout, the number of rows read)."""
    from streams.kafka import TopicFollower

    follower = TopicFollower(brokers, [topic])
    latest: dict = {}
    read = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and latest != expected:
            procs.check()
            for m in follower.poll(500, 0.2):
                row = parse(SignalRow, m.value())
                assert isinstance(row, SignalRow), row
                assert m.key().decode() == row.item_id
                latest[row.item_id] = _comparable(row)
                read += 1
    finally:
        follower.close()
    return latest, read


def _comparable(row: SignalRow, approx: bool = False) -> dict:
    """A row as a dict; ``approx``: its floats compare approximately (the pipeline's
    runs interleave the partitions differently, so sums differ in the last bits)."""
    num = (lambda x: pytest.approx(x, rel=1e-6, abs=2e-6)) if approx else (lambda x: x)
    return {
        "neighbours": {i: num(w) for i, w in row.neighbours},
        "short": num(row.short),
        "long": num(row.long),
        "ts": row.ts,
        "records": row.records,
    }


def _pipeline_rows(tmp_path, broker, catalog_path, events, expected, kill_at: int | None):
    """Run the dataflow (with recovery) over ``events``; SIGKILL and restart it once
    the first ``kill_at`` are applied. -> (latest item-signals row per item, rows read)."""
    from pipeline.processes import ProcessGroup, streamrec_cmd
    from tests.helpers import produce_all

    topics = Topics(f"s{uuid.uuid4().hex[:8]}-")
    broker.create_topics(topics)
    settings = Settings(
        brokers=broker.bootstrap,
        catalog=catalog_path,
        topic_prefix=topics.prefix,
        metrics_port=0,
        # Every event asks for a list: the test counts the rank requests to know
        # what the dataflow applied (latest wins would coalesce a user's events).
        latest_wins=False,
        **_SIGNAL_SETTINGS,
    )
    recovery = tmp_path / f"recovery-{topics.prefix}"
    cmd = streamrec_cmd("dataflow", "-r", str(recovery), "-s", "1", "-b", "0")
    env = settings.to_env()
    cut = len(events) if kill_at is None else kill_at

    def produce(part: list[Event], applied: int) -> None:
        records_ = [(e.user_id.encode(), e.to_bytes()) for e in part]
        produce_all(broker.bootstrap, topics.events, records_)
        wait_rank_requests(broker.bootstrap, topics.rank_requests, applied, procs)

    with ProcessGroup(tmp_path / f"logs-{topics.prefix}") as procs:
        procs.start("dataflow", cmd, env)
        produce(events[:cut], cut)
        if kill_at is not None:
            wait_for_snapshot(recovery, procs, snapshots=2)  # mid-stream state is durable
            procs.children["dataflow"].kill()
            procs.children["dataflow"].wait()
            procs.start("dataflow", cmd, env)
            produce(events[cut:], len(events))
        latest, read = _latest_rows(broker.bootstrap, topics.item_signals, expected, procs)
        return latest, read, _count_records(broker.bootstrap, topics.rank_requests)


def _count_records(brokers: str, topic: str) -> int:
    """Every record on ``topic`` (duplicates included), read until it stops growing."""
    from streams.kafka import TopicFollower

    follower = TopicFollower(brokers, [topic])
    total, quiet = 0, 0
    try:
        while quiet < 5:
            got = len(follower.poll(500, 0.2))
            total, quiet = total + got, 0 if got else quiet + 1
    finally:
        follower.close()
    return total


@pytest.mark.integration
@pytest.mark.slow
def test_dataflow_rows_equal_in_process_and_survive_a_killed_dataflow(
    tmp_path, broker, catalog_path, generic_data
) -> None:
    from corpus.datasets import load_dataset

    events = list(load_dataset(generic_data).interactions.events(0, 60))
    # In-process: the same steps, no Kafka.
    settings = Settings(brokers="x", catalog=catalog_path, **_SIGNAL_SETTINGS)
    step = UserStep(Catalog.load(catalog_path), settings)
    feed = SignalsFeed(SignalsConfig.from_settings(settings))
    states: dict = {}
    for e in events:
        states[e.user_id], outputs = step.apply(states.get(e.user_id), Trigger(e, e.ts))
        feed.add(_signal(outputs))
    expected = {item: _comparable(row, approx=True) for item, row in feed.flush().rows.items()}
    assert any(len(r["neighbours"]) > 1 for r in expected.values())

    uninterrupted, read, _ = _pipeline_rows(tmp_path, broker, catalog_path, events, expected, None)
    # Equal rows, each counting exactly its item's records: none lost, none twice.
    assert uninterrupted == expected
    assert 0 < read <= feed.rows  # rows coalesce: at most one per record
    restarted, _, requests = _pipeline_rows(tmp_path, broker, catalog_path, events, expected, CUT)
    assert restarted == expected
    # It resumed from its snapshot: a dataflow that started over would have sent
    # the first part's rank requests again (and ended equal all the same).
    assert len(events) <= requests < len(events) + CUT


@pytest.mark.integration
def test_the_worker_follows_item_signals_and_fusion_weights_onto_its_ranker(
    broker, topics, tmp_path, caplog
) -> None:
    """Rows fill the worker's table (bad records skipped), the newest weights reach
    the ranker, and the rows applied are counted for whoever waits on them. A
    crafted ``bandit-weights`` record (a pickle that would create a file) runs
    nothing and is skipped with a warning."""
    import base64
    import logging
    import threading
    from types import SimpleNamespace

    from tests.unit.test_bandit import _Creates

    marker = tmp_path / "pwned"
    crafted = base64.b64encode(pickle.dumps(_Creates(str(marker)))).decode("ascii")
    produce_bandit = [
        (b"all", json.dumps({"key": "all", "updates": 1, "blob": crafted}).encode()),
        (b"all", json.dumps({"key": "all", "policy": "thompson", "params": crafted}).encode()),
    ]
    caplog.set_level(logging.WARNING, logger="model.worker")

    from model.worker import SIGNAL_ROWS, Worker
    from tests.helpers import produce_all

    ranker = SimpleNamespace(catalog=None, model_version="test", scorer=None)
    settings = Settings(brokers=broker.bootstrap, topic_prefix=topics.prefix, metrics_port=0)
    worker = Worker(settings, ranker=ranker)  # type: ignore[arg-type]
    assert ranker.signals is worker.signals and ranker.fusion_weights is None
    rows = [_run([CoVisit(i, "z", 1.0, 0.0), Hit(i, 1.0)])[i] for i in "abc"]
    produce_all(
        broker.bootstrap,
        topics.item_signals,
        [(r.item_id.encode(), r.to_bytes()) for r in rows] + [(b"bad", b"not json")],
    )
    weights = [{"bias": b, "weights": {"covis": 1.0}, "updates": b} for b in (1, 2)]
    produce_all(
        broker.bootstrap,
        topics.fusion_weights,
        [(b"global", json.dumps(w).encode()) for w in weights],
    )
    newest = FusionWeights.model_validate(weights[-1])
    produce_all(broker.bootstrap, topics.bandit_weights, produce_bandit)
    before = SIGNAL_ROWS._value.get()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30

    def skipped() -> list:
        return [r for r in caplog.records if "bandit-weights" in r.getMessage()]

    while time.monotonic() < deadline and (
        len(worker.signals) < 3 or ranker.fusion_weights != newest or len(skipped()) < 2
    ):
        time.sleep(0.1)
    worker.stop()
    thread.join(15)
    assert worker.signals.rows == {r.item_id: r for r in rows}
    assert ranker.fusion_weights == worker.fusion_weights == newest
    assert SIGNAL_ROWS._value.get() - before == 3
    assert not marker.exists()
    assert len(skipped()) == 2 and all("skipping a bad" in r.getMessage() for r in skipped())
