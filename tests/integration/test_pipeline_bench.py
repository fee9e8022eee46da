"""``streamrec bench pipeline`` for real: bad usage exits 2 before any work, and one
tiny run of every section on the session broker with the real dataflow and
worker. No timing threshold is asserted: only that each figure was measured.
"""

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
    render_table,
)
from streams.settings import Settings
from tests.helpers import write_generic_dataset


@pytest.mark.integration
def test_every_section_measures_something(broker, catalog_path: Path, tmp_path: Path) -> None:
    # 1,200 events of 200 interleaved users over the 40 items of the session catalog.
    data = write_generic_dataset(tmp_path / "data", n_users=200)
    settings = Settings(
        brokers=broker.bootstrap, data=data, catalog=catalog_path, partitions=2, device="cpu"
    )
    options = PipelineBenchOptions(
        # More than one input batch (1,000): the rate is read between the first
        # and the last batch's rank requests.
        events=1_200,
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
    assert raw["events"] == 1_200 and raw["events_per_s"] > 0
    assert raw["events_per_s_x_raw"] == 1.0

    trig = sections["dataflow-trigger"]
    assert trig["rank_requests"] == 1_200 and trig["startup_s"] > 0
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
    after = burst["after_burst"]  # where the tail's latency goes
    assert after["latency_ms"]["p50"] > 0
    assert after["breakdown_ms"]["event_to_rank_request"]["p50"] is not None
    assert after["breakdown_ms"]["hop"]["p50"] is not None
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
