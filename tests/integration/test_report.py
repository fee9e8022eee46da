"""The A/B report over real topics: duplicates count once, outcomes join their list.

The broker tests write contract-valid ``recommendations`` and ``outcomes``
(with re-delivered duplicates, an orphan outcome, a list outside every
experiment and a record that is not JSON) to the real embedded broker, then
run the report in-process and through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.report import ReadStats, experiment_report, experiment_report_from_kafka
from experiments.stats import VariantCounts
from streams.contracts import (
    NO_EXPERIMENT,
    ExperimentStamp,
    Outcome,
    RankedItem,
    Recommendation,
    ServedPolicy,
)
from tests.helpers import produce_all

ROOT = Path(__file__).parents[2]
T0 = 1_700_000_000.0
CONTROL = ("u0", "u2", "u4")
BANDIT = ("u1", "u3", "u5")


SERVED = ServedPolicy(reranker="mmr", arm="mmr:0.7", trade_off=0.7)


def _list(user: str, j: int, experiment: ExperimentStamp | None = None) -> Recommendation:
    if experiment is None:
        variant = "control" if user in CONTROL else "bandit"
        experiment = ExperimentStamp(name="div", variant=variant)
    return Recommendation(
        rec_id=f"rec-{user}-{j}",
        request_id=None,
        user_id=user,
        items=[RankedItem(item_id=f"i{k}", score=1.0 - k / 10, rank=k + 1) for k in range(3)],
        experiment=experiment,
        policy=SERVED,
        model_version="test",
        trigger_event_id=f"e-{user}-{j}",
        created_ts=T0 + 10 * j,
        latency_ms=3.0,
    )


def _outcome(rec_id: str, item: str, kind: str, revenue: float | None = None) -> Outcome:
    _, user, j = rec_id.split("-")
    variant = "control" if user in CONTROL else "bandit"
    return Outcome(
        rec_id=rec_id,
        user_id=user,
        item_id=item,
        type=kind,
        event_id=f"ev-{rec_id}-{item}-{kind}",
        ts=T0 + 10 * int(j) + 1,  # just after its list
        experiment=ExperimentStamp(name="div", variant=variant),
        policy=SERVED,
        revenue=revenue,
        attributed_by="rec_id",
    )


LISTS = [_list(u, j) for u in (*CONTROL, *BANDIT) for j in range(2)]
UNASSIGNED = _list("u9", 0, experiment=NO_EXPERIMENT)
OUTCOMES = [
    # control: 2 clicked lists, 3 clicks, one buyer (u0, 10.0)
    _outcome("rec-u0-0", "i1", "click"),
    _outcome("rec-u0-0", "i2", "click"),
    _outcome("rec-u0-0", "i1", "purchase", 10.0),
    _outcome("rec-u2-1", "i3", "click"),
    # bandit: 3 clicked lists, 3 clicks, one buyer (u1, 5.0 + 7.5) with 2 purchases
    _outcome("rec-u1-0", "i1", "click"),
    _outcome("rec-u1-0", "i1", "purchase", 5.0),
    _outcome("rec-u1-1", "i4", "purchase", 7.5),
    _outcome("rec-u3-0", "i2", "click"),
    _outcome("rec-u3-0", "i2", "add_to_cart"),
    _outcome("rec-u5-1", "i9", "click"),
    _outcome("rec-u5-1", "i9", "favorite"),
]
DUPLICATE_LISTS = [LISTS[0], LISTS[7]]
DUPLICATE_OUTCOMES = [OUTCOMES[0], OUTCOMES[2], OUTCOMES[6]]
ORPHAN = _outcome("rec-u1-99", "i1", "click")
OF_UNASSIGNED = _outcome("rec-u9-0", "i1", "click")

EXPECTED = {
    "control": VariantCounts(
        users=3, lists=6, clicked_lists=2, clicks=3, purchases=1, purchasers=1,
        revenue=10.0, revenue_sq=100.0,
    ),
    "bandit": VariantCounts(
        users=3, lists=6, clicked_lists=3, clicks=3, purchases=2, purchasers=1,
        revenue=12.5, revenue_sq=156.25,
    ),
}  # fmt: skip
EXPECTED_STATS = ReadStats(
    lists=12,
    duplicate_lists=2,
    unassigned_lists=1,
    outcomes=len(OUTCOMES),
    duplicate_outcomes=3,
    orphan_outcomes=1,
    invalid_records=1,
)


def _produce(brokers: str, topics) -> None:
    lists = [*LISTS, UNASSIGNED, *DUPLICATE_LISTS]
    outcomes = [*OUTCOMES, *DUPLICATE_OUTCOMES, ORPHAN, OF_UNASSIGNED]
    produce_all(
        brokers,
        topics.recommendations,
        [(r.user_id.encode(), r.to_bytes()) for r in lists] + [(None, b"not json")],
    )
    produce_all(brokers, topics.outcomes, [(o.user_id.encode(), o.to_bytes()) for o in outcomes])


def _check(doc: dict) -> None:
    """The JSON report of the records above."""
    (exp,) = doc["experiments"]
    assert exp["experiment"] == "div" and exp["control"] == "control"
    rows = {v["name"]: v for v in exp["variants"]}
    assert [v["name"] for v in exp["variants"]] == ["control", "bandit"]
    for name, counts in EXPECTED.items():
        assert rows[name]["counts"] == counts.__dict__
    assert rows["bandit"]["ctr"]["estimate"] == pytest.approx(3 / 6)
    assert rows["bandit"]["conversion"]["estimate"] == pytest.approx(1 / 3)
    assert rows["bandit"]["revenue_per_user"]["estimate"] == pytest.approx(12.5 / 3)
    assert set(rows["bandit"]["lift"]) == {"ctr", "conversion"}
    assert not exp["srm"]["mismatch"]
    meta = {k: v for k, v in doc["meta"].items() if k not in ("since", "until")}
    assert meta == EXPECTED_STATS.__dict__


@pytest.mark.integration
def test_report_over_the_topics_counts_duplicates_once(broker, topics) -> None:
    _produce(broker.bootstrap, topics)

    report = experiment_report_from_kafka(broker.bootstrap, topics, idle_s=1.5)

    assert report.stats == EXPECTED_STATS
    _check(json.loads(report.to_json()))
    text = report.to_markdown()
    assert "| control | 50% | 3 | 6 | 3 | 1 |" in text
    assert "| bandit | 50% | 3 | 6 | 3 | 2 |" in text


@pytest.mark.integration
def test_cli_prints_the_json_report(broker, topics, tmp_path) -> None:
    _produce(broker.bootstrap, topics)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    args = ["--brokers", broker.bootstrap, "--topic-prefix", topics.prefix, "--idle-s", "1.5"]

    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "experiment", "report", *args, "--format", "json"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    _check(json.loads(result.stdout))

    out = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "experiment", "report", *args, "--out", str(out)],
        cwd=ROOT,
        env={
            **clean,
            "STREAMREC_EXPERIMENT_REPORT_SEQUENTIAL": "true",
            "STREAMREC_EXPERIMENT_REPORT_WEIGHTS": "control=0.9,bandit=0.1",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "## Experiment `div`" in out.read_text() and "mSPRT, always valid" in out.read_text()


def test_window_and_records_already_read() -> None:
    lists = [r.model_dump() for r in LISTS]
    outcomes = [o.model_dump() for o in OUTCOMES]
    late = _outcome("rec-u0-1", "i5", "click").model_copy(update={"ts": T0 + 10_000})

    everything = experiment_report(lists, [*outcomes, late.model_dump()], experiment="div")
    (exp,) = everything.experiments
    assert exp.variants[0].counts.clicks == 4

    windowed = experiment_report(lists, [*outcomes, late.model_dump()], until=T0 + 5_000)
    assert windowed.stats.outside_window == 1
    # The second lists (created at T0 + 10) and their outcomes fall outside [T0, T0 + 5).
    windowed = experiment_report(lists, outcomes, since=T0, until=T0 + 5)
    counts = {v.name: v.counts for v in windowed.experiments[0].variants}
    assert counts["control"].lists == 3 and counts["control"].clicks == 2  # rec-u2-1 is out
    assert counts["bandit"].purchases == 1 and counts["bandit"].revenue == 5.0
    assert windowed.stats.outside_window == 6 + 4

    none = experiment_report(lists, outcomes, experiment="nope")
    assert none.experiments == () and "No experiment traffic" in none.to_markdown()


def test_uncredited_interactions_are_counted_by_reason_once_each() -> None:
    from streams.contracts import Unattributed

    def lost(event_id: str, reason: str) -> bytes:
        return Unattributed(
            rec_id="rec-x",
            user_id="u1",
            item_id="i1",
            type="click",
            event_id=event_id,
            ts=T0,
            reason=reason,
        ).to_bytes()

    records = [lost("e1", "unknown"), lost("e1", "unknown"), lost("e2", "expired")]
    records += [lost("e3", "other_user"), lost("e4", "expired"), b"not json"]
    report = experiment_report([], [], unattributed=records)
    s = report.stats
    assert (s.unattributed_unknown, s.unattributed_expired, s.unattributed_other_user) == (1, 2, 1)
    assert s.invalid_records == 1
    assert "unattributed expired: 2" in report.to_markdown()
