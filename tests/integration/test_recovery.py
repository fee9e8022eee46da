"""Bytewax recovery: kill the dataflow mid-stream (SIGKILL), restart it from
its recovery partitions, and the bandit's per-arm statistics end exactly as
in an uninterrupted run."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

from pipeline.processes import ProcessGroup, streamrec_cmd
from streams.contracts import (
    Event,
    ExperimentStamp,
    RankedItem,
    Recommendation,
    ServedPolicy,
    Topics,
)
from streams.kafka import TopicFollower
from streams.settings import Settings
from tests.helpers import produce_all, wait_for_snapshot, wait_rank_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS, STEPS = 12, 6
ARMS = ["mmr:1", "mmr:0.7", "mmr:0.4", "dpp:0.6"]


def _rec(u: int, s: int) -> Recommendation:
    arm = ARMS[(u + s) % len(ARMS)]
    return Recommendation(
        rec_id=f"r-{u}-{s}",
        request_id=None,
        user_id=f"u{u}",
        items=[
            RankedItem(item_id=i, score=1.0, rank=r + 1) for r, i in enumerate(["k1", "l2", "b3"])
        ],
        experiment=ExperimentStamp(name="t", variant="bandit"),
        policy=ServedPolicy(
            reranker=arm.split(":")[0],
            arm=arm,
            trade_off=float(arm.split(":")[1]),
            mode="bandit",
            segment="all",
        ),
        model_version="test",
        trigger_event_id=None,
        created_ts=0.0,
        latency_ms=0.0,
    )


def _reactions(u: int, s: int) -> list[Event]:
    """Deterministic clicks (and some purchases) on list r-u-s (none on step 0)."""
    if s == 0 or (u + s) % 3 == 0:
        return []
    ts = 1_700_000_000.0 + s * 100 + u
    out = [
        Event(
            event_id=f"c-{u}-{s}",
            type="click",
            user_id=f"u{u}",
            item_id="l2",
            ts=ts,
            rec_id=f"r-{u}-{s}",
        )
    ]
    if (u * s) % 4 == 0:
        out.append(
            Event(
                event_id=f"p-{u}-{s}",
                type="purchase",
                user_id=f"u{u}",
                item_id="l2",
                ts=ts + 1,
                rec_id=f"r-{u}-{s}",
                price=2.0,
                quantity=1,
            )
        )
    return out


def _latest_bandit_state(brokers: str, topic: str, closes: int, procs, timeout_s=90.0) -> dict:
    """Wait until the bandit has learned from ``closes`` lists; its newest state."""
    follower = TopicFollower(brokers, [topic])
    latest: dict = {"updates": -1}
    deadline = time.monotonic() + timeout_s
    try:
        while latest["updates"] < closes and time.monotonic() < deadline:
            procs.check()
            for m in follower.poll(500, 0.2):
                state = json.loads(m.value())
                if state["updates"] > latest["updates"]:
                    latest = state
    finally:
        follower.close()
    assert latest["updates"] == closes, f"bandit saw {latest['updates']} of {closes} lists"
    return latest


def _expected_stats() -> dict:
    """What the bandit must have learned: every list but the last closes with
    min(1, 0.3 per click + 1.0 per purchase) (the default reward weights)."""
    stats = {a: {"pulls": 0, "reward_sum": 0.0} for a in ARMS}
    for u in range(USERS):
        for s in range(STEPS):
            kinds = [e.type for e in _reactions(u, s)]
            reward = min(1.0, 0.3 * kinds.count("click") + 1.0 * kinds.count("purchase"))
            arm = ARMS[(u + s) % len(ARMS)]
            stats[arm]["pulls"] += 1
            stats[arm]["reward_sum"] += reward
    return stats


def _run(tmp_path, broker, catalog_path, kill_after_step: int | None) -> dict:
    topics = Topics(f"r{uuid.uuid4().hex[:8]}-")
    broker.create_topics(topics)
    config = tmp_path / f"exp-{topics.prefix}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "attribution": {"window_s": 1e12, "max_open_lists": 1},
                "bandit": {"policy": "thompson", "min_exploration": 0.0},
            }
        )
    )
    recovery = tmp_path / f"recovery-{topics.prefix}"

    env = (
        Settings(
            brokers=broker.bootstrap,
            catalog=catalog_path,
            topic_prefix=topics.prefix,
            experiments=config,
            metrics_port=0,
            # The test counts rank requests to know what the dataflow applied: every
            # event asks for one (latest wins would coalesce a user's events).
            latest_wins=False,
        )
    ).to_env()
    cmd = streamrec_cmd("dataflow", "-r", str(recovery), "-s", "1", "-b", "0")
    with ProcessGroup(tmp_path / f"logs-{topics.prefix}") as procs:
        procs.start("dataflow", cmd, env)
        state: dict = {}
        for s in range(STEPS + 1):
            # Lists first; wait until the dataflow has shown them (each closes
            # the user's previous list: step 0 only opens one), then the clicks
            # on them: causal order across the two topics, whatever the timing.
            produce_all(
                broker.bootstrap,
                topics.recommendations,
                [(f"u{u}".encode(), _rec(u, s).to_bytes()) for u in range(USERS)],
            )
            if s > 0:
                state = _latest_bandit_state(
                    broker.bootstrap, topics.bandit_weights, USERS * s, procs
                )
            produce_all(
                broker.bootstrap,
                topics.events,
                [
                    (e.user_id.encode(), e.to_bytes())
                    for u in range(USERS)
                    for e in _reactions(u, s)
                ],
            )
            events_so_far = sum(len(_reactions(u, t)) for u in range(USERS) for t in range(s + 1))
            wait_rank_requests(broker.bootstrap, topics.rank_requests, events_so_far, procs)
            if s == kill_after_step:
                wait_for_snapshot(recovery, procs, snapshots=2)  # state so far is durable
                procs.children["dataflow"].kill()
                procs.children["dataflow"].wait()
                procs.start("dataflow", cmd, env)
    return state["stats"]


def test_bandit_statistics_survive_a_killed_dataflow(tmp_path, broker, catalog_path):
    uninterrupted = _run(tmp_path, broker, catalog_path, kill_after_step=None)
    restarted = _run(tmp_path, broker, catalog_path, kill_after_step=3)
    assert restarted == uninterrupted
    expected = _expected_stats()
    for arm, st in uninterrupted.items():
        assert st["pulls"] == expected[arm]["pulls"]
        assert st["reward_sum"] == pytest.approx(expected[arm]["reward_sum"])
