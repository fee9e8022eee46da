"""``streamrec bench pipeline``: the pure helpers on hand-made inputs, bad usage, and
one tiny run of every section on the session broker with the real dataflow and
worker. No timing threshold is asserted: only that each figure was measured."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from streamrec.pipeline_bench import (
    SECTIONS,
    PipelineBenchOptions,
    bench_pipeline,
    drain_time,
    first_window_below,
    latency_breakdown,
    metric_label,
    parse_skip,
    percentiles,
    rate_from_polls,
    render_table,
    window_p99,
)
from streamrec.processes import metric_sum
from streams.settings import Settings
from tests.conftest import write_generic_dataset

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


@pytest.mark.parametrize(
    "args",
    [["--events", "0"], ["--rate", "-1"], ["--burst-seconds", "nan"], ["--skip", "nope"]],
)
def test_bad_usage_exits_2_before_any_work(args: list[str]) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "bench", "pipeline", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Invalid value" in done.stderr


@pytest.mark.integration
def test_every_section_measures_something(broker, catalog_path: Path, tmp_path: Path) -> None:
    # 1,200 events of 200 interleaved users over the 40 items of the session catalog.
    data = write_generic_dataset(tmp_path / "data", n_users=200)
    settings = Settings(
        brokers=broker.bootstrap, data=data, catalog=catalog_path, partitions=2, device="cpu"
    )
    options = PipelineBenchOptions(
        events=300,
        worker_events=200,
        rate=50,
        seconds=3,
        burst_seconds=3,
        burst_factor=5,
        burst_lead_s=1,
        burst_tail_s=3,
        state_users=2_000,
        state_events=5,
        log_dir=tmp_path / "logs",
        progress=False,
    )
    report = bench_pipeline(settings, options)
    json.dumps(report)  # the command writes it as JSON
    h = report["header"]
    assert h["broker"] == f"given: {broker.bootstrap}" and h["device"] == "cpu"
    assert h["cpus"] == os.cpu_count() and h["settings"]["candidates"] == settings.candidates
    sections = report["sections"]
    assert list(sections) == list(SECTIONS)
    assert not {name: s["error"] for name, s in sections.items() if "error" in s}
    for name, s in sections.items():
        if name != "worker-fusion":
            assert len(s["load_avg_start"]) == 3 and s["wall_s"] > 0, name

    raw = sections["raw"]
    assert raw["events"] == 300 and raw["events_per_s"] > 0
    assert raw["events_per_s_x_raw"] == 1.0

    trig = sections["dataflow-trigger"]
    assert trig["rank_requests"] == 300 and trig["startup_s"] > 0
    assert trig["events_per_s"] > 0 and trig["events_per_s_x_raw"] > 0

    state_only = sections["dataflow-state"]
    assert state_only["rank_requests_sent"] == 0  # STREAMREC_TRIGGER_ON_EVENTS=false
    assert state_only["polls"] >= 1 and state_only["startup_s"] > 0

    worker = sections["worker-two-tower"]
    assert worker["lists"] + worker["skipped"] == 200 and worker["duplicates"] == 0
    assert worker["lists"] > 0 and worker["device"] == "cpu"
    assert worker["requests_per_s"] > 0 and worker["lists_per_s"] > 0
    assert sections["worker-fusion"] == {"measured": False, "reason": "no --sequence-model"}

    lat = sections["latency"]
    assert lat["events"] == 150 and lat["rank_requests"] == 150
    assert lat["lists"] + lat["skipped"] == 150
    p = lat["latency_ms"]
    assert 0 < p["p50"] <= p["p95"] <= p["p99"]
    assert lat["with_timing_header"] == lat["lists"]
    for part in ("event_to_rank_request", "hop", "batch_wait", "compute"):
        assert lat["breakdown_ms"][part]["p50"] is not None, part

    burst = sections["burst"]
    assert burst["events"] == 50 + 750 + 150 and burst["child_exited"] is None
    assert burst["explicit_sent"] >= 6 and burst["explicit_answered"] == burst["explicit_sent"]
    assert burst["peak_lag"] >= 0 and burst["peak_dataflow_lag"] >= 0
    assert len(burst["p99_windows_ms"]) == 1 and burst["samples"]
    for proc in ("dataflow", "worker"):
        assert burst["rss_mib"][proc]["during"] > 0, proc

    state = sections["state"]
    assert state["users"] == 2_000 and state["updates_per_s"] > 0
    assert state["pickled_bytes_mean"] > 0 and state["pickled_bytes_p90"] > 0
    assert state["pickled_gib_per_million_users"] > 0

    out = io.StringIO()
    Console(file=out, width=160).print(render_table(report))
    text = out.getvalue()
    assert "dataflow-trigger" in text and "breakdown_ms.hop" in text
