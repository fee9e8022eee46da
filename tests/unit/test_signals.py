"""Streaming item signals (streams.signals), in-process: the records UserStep
emits, the ``item-signals`` step's decay and bounds, the table's candidates and
features (on the real broker: tests/integration/test_signals.py).
"""

from __future__ import annotations

import doctest
import json
import pickle
import random

import numpy as np
import pytest

import streams.signals
from streams.catalog import Catalog
from streams.contracts import Event, RankRequest, RecommendationRequest, parse
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
    table2.apply(_row("z", (), 1.0, 1.0, 3.0))  # its lock works again
    assert table2.candidates(["a"], 3.0, 5, 5)[:2] == table.candidates(["a"], 3.0, 5, 5)[:2]


def test_row_round_trips_through_json() -> None:
    row = _run([CoVisit("a", "b", 1.0, 0.0), Hit("a", 5.0)])["a"]
    assert parse(SignalRow, row.to_bytes()) == row
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


def _row(
    item_id: str,
    neighbours: tuple[tuple[str, float], ...],
    short: float,
    long: float,
    ts: float,
    records: int = 0,
) -> SignalRow:
    return SignalRow(
        item_id=item_id, neighbours=neighbours, short=short, long=long, ts=ts, records=records
    )


def _table(*rows: SignalRow) -> SignalsTable:
    table = SignalsTable(CFG)
    for row in rows:
        table.apply(row)
    return table


def test_covis_candidates_sum_neighbour_weights_by_recency_of_the_recent_item() -> None:
    table = _table(
        _row("a", (("x", 2.0), ("y", 1.0)), 0.0, 0.0, 10.0),
        _row("b", (("y", 3.0), ("z", 1.0)), 0.0, 0.0, 10.0),
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
        _row("a", (), 8.0, 10.0, 100.0),
        _row("b", (), 4.0, 4.0, 100.0),
        _row("c", (), 0.0, 50.0, 100.0),
        _row("d", (), 1.0, 1.0, 100.0),
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
        _row("a", (("t", 1.0), ("s", 1.0)), 1.0, 1.0, 0.0),
        _row("t", (), 5.0, 5.0, 0.0),
        _row("u", (), 5.0, 5.0, 0.0),
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
    table = _table(_row("a", (("b", 2.0),), 5.0, 5.0, 0.0))
    assert table.features(["b", "a", "zz"], ["a"], now=0.0) == [
        {"covis": 2.0},
        {"trend": 0.5, "popularity": 5.0},
        {},
    ]
    # Decayed to the request's time: one long half-life halves the popularity.
    assert table.features(["a"], [], now=1000.0)[0]["popularity"] == 2.5


CUT = 30  # of 60 events


# Short half-lives, so the generic data's half hour of events really decays.
_SIGNAL_SETTINGS = {
    "covis_window": 3,
    "covis_half_life_s": 600.0,
    "trend_half_life_s": 120.0,
    "trend_long_half_life_s": 3600.0,
}


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
    table.apply(_row("z", (), 1.0, 1.0, 1.0, records=3))
    table.apply(_row("z", (), 1.0, 1.0, 2.0, records=5))
    assert table.records == 9 and table.applied == 3
