"""Streaming item signals (streams.signals): the records UserStep emits, the
``item-signals`` step's decay and bounds, the table's candidates and features,
and, on the real broker, the dataflow's rows, which survive a killed dataflow."""

from __future__ import annotations

import doctest
import json
import pickle
import random
import time
import uuid

import numpy as np
import pytest
from conftest import wait_rank_requests

import streams.signals
from streams.catalog import Catalog
from streams.contracts import Event, RankRequest, RecommendationRequest, Topics
from streams.dataflow import Trigger, UserStep
from streams.settings import Settings
from streams.signals import (
    _BUFFER,
    TREND_PRIOR,
    CoVisit,
    Hit,
    SignalRow,
    SignalsConfig,
    SignalsFeed,
    SignalsStep,
    SignalsTable,
    records,
)

DAY = 24 * 3600.0
CFG = SignalsConfig(
    covis_n=3, covis_half_life_s=100.0, trend_half_life_s=10.0, trend_long_half_life_s=1000.0
)


def test_doctests() -> None:
    assert doctest.testmod(streams.signals).failed == 0


# --- the records of one event ---


def test_records_covisit_the_previous_distinct_items_by_distance() -> None:
    sequence = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("b", 4.0), ("x", 5.0)]
    got = records(sequence, "x", 5.0, window=5)
    # Newest first: b (distance 1), c (2), a (3); the second b and x itself are skipped.
    assert got == [
        CoVisit("b", "x", 1.0, 5.0),
        CoVisit("c", "x", 0.5, 5.0),
        CoVisit("a", "x", 1 / 3, 5.0),
        Hit("x", 5.0),
    ]
    assert [r.key for r in got] == ["b", "c", "a", "x"]
    assert records(sequence, "x", 5.0, window=1) == [CoVisit("b", "x", 1.0, 5.0), Hit("x", 5.0)]
    assert records([], "x", 5.0, window=3) == [Hit("x", 5.0)]


@pytest.fixture
def step() -> UserStep:
    items = ["a", "b", "c", "d"]
    catalog = Catalog(items, items, [None] * 4, np.eye(4, dtype=np.float32), np.ones(4))
    return UserStep(catalog, Settings(brokers="x", filter_seen=False, covis_window=2, k=3))


def _event(event_id: str, item: str, ts: float) -> Trigger:
    event = Event(event_id=event_id, type="click", user_id="u1", item_id=item, ts=ts)
    return Trigger(event, arrival_ts=ts)


def _signal(outputs: list) -> list:
    return [o for o in outputs if isinstance(o, (CoVisit, Hit))]


def test_user_step_emits_the_records_of_each_new_event_only(step) -> None:
    state = None
    for i, item in enumerate("abc"):
        state, outputs = step.apply(state, _event(f"e{i}", item, float(i)))
    assert _signal(outputs) == [
        CoVisit("b", "c", 1.0, 2.0),
        CoVisit("a", "c", 0.5, 2.0),
        Hit("c", 2.0),
    ]
    state, outputs = step.apply(state, _event("e1", "b", 1.0))  # a replayed event
    assert outputs == []
    ask = Trigger(RecommendationRequest(request_id="r1", user_id="u1"), arrival_ts=9.0)
    state, outputs = step.apply(state, ask)
    assert _signal(outputs) == []


def test_rank_request_carries_the_sequence_and_repeat_candidates(step) -> None:
    state = None
    for i, item in enumerate("abba"):
        state, outputs = step.apply(state, _event(f"e{i}", item, float(i)))
    (request,) = [o for o in outputs if isinstance(o, RankRequest)]
    assert request.sequence == ["a", "b", "a"] and request.sequence_ts == [0.0, 2.0, 3.0]
    # The worker's retrieval makes the repeat candidates and features from these.
    assert request.counts == {"a": (2.0, 3.0), "b": (2.0, 2.0)} and request.last_ts == 3.0


# --- the item-signals step ---


def _run(found: list, cfg: SignalsConfig = CFG) -> dict[str, SignalRow]:
    """Every record through SignalsStep; the latest row per item."""
    step, states, rows = SignalsStep(cfg), {}, {}
    for record in found:
        states[record.key], rows[record.key] = step(states.get(record.key), [record])
    return rows


def test_weights_and_counts_decay_by_their_half_lives() -> None:
    rows = _run(
        [
            CoVisit("a", "b", 1.0, 0.0),
            Hit("a", 0.0),
            CoVisit("a", "c", 0.5, 100.0),  # one covis half-life later
            Hit("a", 100.0),
        ]
    )
    row = rows["a"]
    assert row.ts == 100.0
    assert dict(row.neighbours) == pytest.approx({"b": 0.5, "c": 0.5})
    assert row.short == pytest.approx(1.0 + 0.5**10)  # ten short half-lives
    assert row.long == pytest.approx(1.0 + 0.5**0.1)


def test_decay_is_exact_whatever_the_arrival_order_and_over_a_long_time() -> None:
    """Out-of-order records and a year of hourly events (scale rebased on the way)."""
    rng = random.Random(3)
    found: list = []
    for h in range(24 * 365):
        ts = h * 3600.0
        found += [Hit("a", ts), CoVisit("a", rng.choice("bcd"), 1.0, ts)]
    cfg = SignalsConfig(covis_n=3, covis_half_life_s=DAY, trend_half_life_s=3600.0)
    expected = _run(found, cfg)["a"]
    end = found[-1].ts
    assert expected.short == pytest.approx(sum(0.5 ** ((end - r.ts) / 3600.0) for r in found[::2]))
    shuffled = found[:]
    rng.shuffle(shuffled)
    got = _run(shuffled, cfg)["a"]
    assert got.ts == expected.ts and got.short == pytest.approx(expected.short)
    assert got.long == pytest.approx(expected.long)
    assert dict(got.neighbours) == pytest.approx(dict(expected.neighbours))
    assert all(np.isfinite([w for _, w in got.neighbours]))


def test_neighbours_are_bounded_and_the_row_holds_the_top_n() -> None:
    step = SignalsStep(CFG)  # covis_n = 3: a buffer of 4 x 3, pruned back once over 24
    depth = _BUFFER * CFG.covis_n
    state = None
    for i in range(2 * depth + 1):
        state, row = step(state, [CoVisit("a", f"n{i:02d}", 1.0 + i, 0.0)])
        assert len(state.neighbours) <= 2 * depth
    assert sorted(state.neighbours) == [f"n{i:02d}" for i in range(depth + 1, 2 * depth + 1)]
    assert row.neighbours == (("n24", 25.0), ("n23", 24.0), ("n22", 23.0))
    state, row = step(state, [CoVisit("a", "n00", 1.0, 0.0)])
    assert len(row.neighbours) == 3


def test_the_published_neighbours_do_not_depend_on_arrival_order_within_the_buffer() -> None:
    """Two orders of the same records give the same row while nothing that ends
    in the top ``covis_n`` falls out of the buffer (the pipeline vs replay case)."""
    # 30 neighbours against a buffer of 12: pruning happens, but the heavy three
    # (weight 10 a visit, the rest 1) never fall out of it, whatever the order.
    records = [CoVisit("a", f"n{i % 30:02d}", 10.0 if i % 30 < 3 else 1.0, 0.0) for i in range(150)]
    forward = _run(records)["a"]
    shuffled = list(records)
    np.random.default_rng(3).shuffle(shuffled)
    assert _run(shuffled)["a"].neighbours == forward.neighbours


def test_ties_rank_by_item_id() -> None:
    row = _run([CoVisit("a", x, 1.0, 0.0) for x in "zyxw"])["a"]
    assert row.neighbours == (("w", 1.0), ("x", 1.0), ("y", 1.0))


def test_state_step_and_table_pickle_and_go_on_identically() -> None:
    found = [CoVisit("a", "b", 1.0, 0.0), Hit("a", 1.0), CoVisit("a", "c", 0.5, 2.0)]
    step = SignalsStep(CFG)
    state = None
    for r in found:
        state, _ = step(state, [r])
    step2 = pickle.loads(pickle.dumps(step))
    state2 = pickle.loads(pickle.dumps(state))
    nxt = CoVisit("a", "b", 1.0, 50.0)
    assert step(state, [nxt])[1] == step2(state2, [nxt])[1]

    table = SignalsTable(CFG)
    table.apply(_run(found)["a"])
    table2 = pickle.loads(pickle.dumps(table))
    table2.apply(SignalRow("z", (), 1.0, 1.0, 3.0))  # its lock works again
    assert table2.candidates(["a"], 3.0, 5, 5)[:2] == table.candidates(["a"], 3.0, 5, 5)[:2]


def test_row_round_trips_through_json() -> None:
    row = _run([CoVisit("a", "b", 1.0, 0.0), Hit("a", 5.0)])["a"]
    assert SignalRow.from_json(row.to_bytes()) == row
    assert set(json.loads(row.to_bytes())) == {
        "item_id",
        "neighbours",
        "short",
        "long",
        "ts",
        "records",
    }


def test_feed_fills_the_table_as_applying_every_row_would() -> None:
    rng = random.Random(5)
    found = [
        rec
        for t in range(300)
        for rec in records(
            [(rng.choice("abcdefgh"), t - 1.0) for _ in range(3)], rng.choice("abcdefgh"), t, 3
        )
    ]
    direct = SignalsTable(CFG)
    for row in _run(found).values():
        direct.apply(row)
    feed = SignalsFeed(CFG)
    feed.add(found[:100])
    feed.flush()
    feed.add(found[100:])
    table = feed.flush()
    assert feed.rows == len(found)
    assert table.rows == direct.rows


# --- the table ---


def _table(*rows: SignalRow) -> SignalsTable:
    table = SignalsTable(CFG)
    for row in rows:
        table.apply(row)
    return table


def test_covis_candidates_sum_neighbour_weights_by_recency_of_the_recent_item() -> None:
    table = _table(
        SignalRow("a", (("x", 2.0), ("y", 1.0)), 0.0, 0.0, 10.0),
        SignalRow("b", (("y", 3.0), ("z", 1.0)), 0.0, 0.0, 10.0),
    )
    out = table.candidates(["a", "b"], now=10.0, covis_n=2, trending_n=0)
    # y: 1.0 / 1 + 3.0 / 2 = 2.5; x: 2.0; z: 0.5 (cut by covis_n=2)
    assert [(c.item_id, c.score, c.source, c.features) for c in out] == [
        ("y", 2.5, "covis", {"covis": 2.5}),
        ("x", 2.0, "covis", {"covis": 2.0}),
    ]
    # Rows decay to the request's time; a row newer than "now" is taken as is.
    later = table.candidates(["a"], now=110.0, covis_n=1, trending_n=0)
    assert later[0].score == pytest.approx(1.0)
    assert table.candidates(["a"], now=0.0, covis_n=1, trending_n=0)[0].score == 2.0


def test_trending_is_short_over_long_plus_a_prior() -> None:
    table = _table(
        SignalRow("a", (), 8.0, 10.0, 100.0),
        SignalRow("b", (), 4.0, 4.0, 100.0),
        SignalRow("c", (), 0.0, 50.0, 100.0),
        SignalRow("d", (), 1.0, 1.0, 100.0),
    )
    out = table.candidates([], now=110.0, covis_n=5, trending_n=2)
    short, long = 0.5, 0.5 ** (10 / 1000)  # decay factors over 10 s
    assert [c.item_id for c in out] == ["a", "b"]
    assert out[0].score == pytest.approx(8 * short / (10 * long + TREND_PRIOR), abs=1e-6)
    assert out[0].source == "trending"
    assert out[0].features == {"trend": out[0].score, "popularity": pytest.approx(10 * long)}
    assert [c.item_id for c in table.candidates([], 110.0, 5, 9)] == ["a", "b", "d"]  # c is 0


def test_candidates_merge_sources_carry_all_features_and_tie_on_item_id() -> None:
    table = _table(
        SignalRow("a", (("t", 1.0), ("s", 1.0)), 1.0, 1.0, 0.0),
        SignalRow("t", (), 5.0, 5.0, 0.0),
        SignalRow("u", (), 5.0, 5.0, 0.0),
    )
    out = table.candidates(["a"], now=0.0, covis_n=5, trending_n=2)
    assert [(c.item_id, c.source) for c in out] == [
        ("s", "covis"),
        ("t", "covis+trending"),
        ("u", "trending"),
    ]
    trend = 5.0 / (5.0 + TREND_PRIOR)
    assert out[1].features == {"covis": 1.0, "trend": trend, "popularity": 5.0}
    assert out[1].score == 1.0
    excluded = table.candidates(["a"], now=0.0, covis_n=5, trending_n=2, exclude={"t"})
    assert [c.item_id for c in excluded] == ["s", "u", "a"]


def test_features_for_candidates_of_other_sources() -> None:
    table = _table(SignalRow("a", (("b", 2.0),), 5.0, 5.0, 0.0))
    assert table.features(["b", "a", "zz"], ["a"], now=0.0) == [
        {"covis": 2.0},
        {"trend": 0.5, "popularity": 5.0},
        {},
    ]
    # Decayed to the request's time: one long half-life halves the popularity.
    assert table.features(["a"], [], now=1000.0)[0]["popularity"] == 2.5


# --- the dataflow on the real broker ---


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
                row = SignalRow.from_json(m.value())
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
    from streamrec.cli import settings_env
    from streamrec.processes import ProcessGroup, streamrec_cmd
    from tests.conftest import produce_all

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
    env = settings_env(settings)
    cut = len(events) if kill_at is None else kill_at

    def produce(part: list[Event], applied: int) -> None:
        records_ = [(e.user_id.encode(), e.to_bytes()) for e in part]
        produce_all(broker.bootstrap, topics.events, records_)
        wait_rank_requests(broker.bootstrap, topics.rank_requests, applied, procs)

    with ProcessGroup(tmp_path / f"logs-{topics.prefix}") as procs:
        procs.start("dataflow", cmd, env)
        produce(events[:cut], cut)
        if kill_at is not None:
            time.sleep(2.5)  # let a snapshot or two happen mid-stream
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


CUT = 30  # of 60 events

# Short half-lives, so the generic data's half hour of events really decays.
_SIGNAL_SETTINGS = {
    "covis_window": 3,
    "covis_half_life_s": 600.0,
    "trend_half_life_s": 120.0,
    "trend_long_half_life_s": 3600.0,
}


@pytest.mark.integration
@pytest.mark.slow
def test_dataflow_rows_equal_in_process_and_survive_a_killed_dataflow(
    tmp_path, broker, catalog_path, generic_data
) -> None:
    from streams.datasets import load_dataset

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


# --- the worker's followers ---


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
    import pickle
    import threading
    from types import SimpleNamespace

    from tests.test_bandit import _Creates

    marker = tmp_path / "pwned"
    crafted = base64.b64encode(pickle.dumps(_Creates(str(marker)))).decode("ascii")
    produce_bandit = [
        (b"all", json.dumps({"key": "all", "updates": 1, "blob": crafted}).encode()),
        (b"all", json.dumps({"key": "all", "policy": "thompson", "params": crafted}).encode()),
    ]
    caplog.set_level(logging.WARNING, logger="model.worker")

    from model.worker import SIGNAL_ROWS, Worker
    from tests.conftest import produce_all

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
    produce_all(broker.bootstrap, topics.bandit_weights, produce_bandit)
    before = SIGNAL_ROWS._value.get()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30

    def skipped() -> list:
        return [r for r in caplog.records if "bandit-weights" in r.getMessage()]

    while time.monotonic() < deadline and (
        len(worker.signals) < 3 or ranker.fusion_weights != weights[-1] or len(skipped()) < 2
    ):
        time.sleep(0.1)
    worker.stop()
    thread.join(15)
    assert worker.signals.rows == {r.item_id: r for r in rows}
    assert ranker.fusion_weights == worker.fusion_weights == weights[-1]
    assert SIGNAL_ROWS._value.get() - before == 3
    assert not marker.exists()
    assert len(skipped()) == 2 and all("skipping a bad" in r.getMessage() for r in skipped())


def test_one_row_per_batch_equals_the_last_of_one_row_per_record() -> None:
    """The dataflow hands a key all its records of a batch: one row, the same one
    that publishing after every record would have ended on, and it counts them."""
    found = [
        CoVisit("a", d, w, t) for d, w, t in [("b", 1.0, 0.0), ("c", 0.5, 50.0), ("b", 1.0, 90.0)]
    ]
    found += [Hit("a", 95.0)]
    one_by_one = _run(found)["a"]
    _, batched = SignalsStep(CFG)(None, found)
    assert batched == one_by_one and batched.records == 4
    table = SignalsTable(CFG)
    table.apply(batched)
    table.apply(SignalRow("z", (), 1.0, 1.0, 1.0, records=3))
    table.apply(SignalRow("z", (), 1.0, 1.0, 2.0, records=5))
    assert table.records == 9 and table.applied == 3
