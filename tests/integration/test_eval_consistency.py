"""The in-process harness against the deployed pipeline (evaluation.consistency).

The same events go through the real embedded broker, dataflow and worker and
through UserStep + Ranker in-process; every event-triggered list must match,
and so must every explicit request's list sent once the worker has applied
the events' item-signals rows.
"""

from __future__ import annotations

import json

import pytest

from corpus.datasets import load_dataset
from evaluation.consistency import SCORE_TOLERANCE, check_consistency, write_consistency
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_every_list_through_kafka_equals_the_in_process_one(
    tmp_path, broker, topics, catalog_path, generic_data
) -> None:
    dataset = load_dataset(generic_data)
    n = 48  # of 72 events: a slice, not the whole data
    settings = Settings(
        brokers=broker.bootstrap, topic_prefix=topics.prefix, metrics_port=0, device="cpu"
    )
    report = check_consistency(
        dataset, catalog_path, settings, n, log_dir=tmp_path / "logs", idle_timeout_s=90
    )
    assert report.events == n
    assert report.pipeline_lists == report.in_process_lists == report.compared == n
    assert report.identical == n, report.mismatches
    assert report.max_score_diff <= SCORE_TOLERANCE
    users = len(set(dataset.interactions.user_id[:n]))
    assert report.explicit == report.explicit_compared == report.explicit_identical == users
    # One hit per event plus one co-visit per previous distinct item (up to the window).
    assert n < report.signal_rows <= n * (1 + settings.covis_window)
    assert not report.signals_read  # the default two-tower scorer
    assert report.ok
    json_path, md_path = write_consistency(tmp_path / "out", report, "generic consistency")
    assert json.loads(json_path.read_text())["ok"] is True
    assert "consistent" in md_path.read_text()
