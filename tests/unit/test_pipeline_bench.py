"""``streamrec bench pipeline``: the pure helpers on hand-made inputs (a real run of
every section is in tests/integration/test_pipeline_bench.py).
"""

from __future__ import annotations

import pytest

from pipeline.processes import metric_sum
from streamrec.pipeline_bench import (
    PipelineBenchOptions,
    _Span,
    drain_time,
    first_window_below,
    latency_breakdown,
    metric_label,
    parse_skip,
    percentiles,
    rate_from_polls,
    window_p99,
)

_EXPOSITION = """\
# HELP streamrec_events_total Valid events applied to user state, by event type
# TYPE streamrec_events_total counter
streamrec_events_total{type="purchase"} 123.0
streamrec_events_total{type="click"} 7.0
# HELP streamrec_events_created Valid events applied to user state, by event type
# TYPE streamrec_events_created gauge
streamrec_events_created{type="purchase"} 1.7e+09
# HELP streamrec_model_info The model served
# TYPE streamrec_model_info gauge
streamrec_model_info{device="cpu",model_version="m1"} 1.0
"""


def test_metric_sum_adds_every_label_set_and_nothing_else() -> None:
    assert metric_sum(_EXPOSITION, "streamrec_events_total") == 130.0
    assert metric_sum(_EXPOSITION, "streamrec_worker_skipped_requests_total") == 0.0
    assert metric_label(_EXPOSITION, "streamrec_model_info", "device") == "cpu"
    assert metric_label(_EXPOSITION, "streamrec_model_info", "arm") is None


def test_percentiles_interpolate_and_say_none_when_empty() -> None:
    got = percentiles(list(range(1, 101)))
    assert got == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    assert percentiles([], (50, 99)) == {"p50": None, "p99": None}


def test_latency_breakdown_joins_lists_to_their_rank_requests() -> None:
    rank = {"evt:a": (100.000, 100.010), "evt:b": (100.000, 100.030)}
    timing = {"consumed_ts": 100.015, "batch_start_ts": 100.020, "done_ts": 100.050}
    lists = {"evt:a": (50.0, timing), "evt:b": (70.0, None)}
    got = latency_breakdown(rank, lists)
    assert got["latency_ms"]["p50"] == 60.0
    b = got["breakdown_ms"]
    assert b["event_to_rank_request"] == {"p50": 20.0, "p99": 29.8}
    # Only the list with the header has a hop, a batch wait and a compute time.
    assert b["hop"] == {"p50": 5.0, "p99": 5.0}
    assert b["batch_wait"] == {"p50": 5.0, "p99": 5.0}
    assert b["compute"] == {"p50": 30.0, "p99": 30.0}
    without = latency_breakdown(rank, {"evt:a": (50.0, None)})["breakdown_ms"]
    assert without["hop"] is None and without["compute"] is None


def test_rate_from_polls_starts_at_the_first_nonzero_poll() -> None:
    polls = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0), (3.0, 500.0), (4.0, 500.0)]
    assert rate_from_polls(polls, 500) == pytest.approx(200.0)
    assert rate_from_polls([(1.0, 500.0)], 500) is None  # all between two polls
    assert rate_from_polls([(1.0, 100.0), (2.0, 300.0)], 500) is None  # never reached


def test_a_span_rate_leaves_out_the_batch_stamped_at_its_start() -> None:
    """Records written together at the first timestamp were made before the span
    began: 1,000 at t=0, then 500 more by t=1 s is 500/s, not 1,500/s."""
    span = _Span()
    for i in range(1000):
        span.add(f"a{i}", 10.0)
    assert span.rate(span.count) is None  # one timestamp: no span to read
    for i in range(500):
        span.add(f"b{i}", 10.5 if i < 250 else 11.0)
    span.add("a0", 12.0)  # a duplicate moves nothing
    assert (span.count, span.duplicates, span.at_first) == (1500, 1, 1000)
    assert span.rate(span.count) == pytest.approx(500.0)
    assert span.rate(3000) == pytest.approx(1000.0)  # n scales with the share after


def test_drain_time_is_the_first_low_lag_after_the_burst() -> None:
    samples = [(0.0, 0), (5.0, 400), (10.0, 300), (11.5, 40), (12.0, 8), (13.0, 30)]
    assert drain_time(samples, 10.0) == 2.0
    assert drain_time([(0.0, 0), (11.0, 50)], 10.0) is None
    # A lag that was already low counts from the end of the burst.
    assert drain_time([(9.0, 0), (10.5, 0)], 10.0) == 0.5


def test_window_p99_and_the_first_window_under_the_limit() -> None:
    points = [(0.5, 400.0), (1.0, 300.0), (6.0, 80.0), (7.0, 60.0), (12.0, 20.0)]
    windows = window_p99(points, 0.0, 15.0)
    assert len(windows) == 3
    assert windows[0] == pytest.approx(399.0)
    assert windows[2] == 20.0
    assert first_window_below(windows) == 15.0
    assert first_window_below([None, 70.0]) is None
    assert window_p99([], 0.0, 10.0) == [None, None]


def test_parse_skip_and_the_events_a_run_needs() -> None:
    assert parse_skip(" raw, worker ,") == {"raw", "worker-two-tower", "worker-fusion"}
    with pytest.raises(ValueError, match="unknown section 'rwa'"):
        parse_skip("rwa")
    o = PipelineBenchOptions(events=100, worker_events=50, rate=10, seconds=3, burst_seconds=2)
    # latency (30) then the burst on the same pipeline: 10*10 + 100*2 + 10*60.
    assert o.events_needed() == 30 + 900
    no_pipeline = PipelineBenchOptions(events=100, skip=parse_skip("latency,burst"))
    assert no_pipeline.events_needed() == 5_000  # the default --worker-events
