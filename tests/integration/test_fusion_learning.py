"""Online fusion learning on the real broker: the dataflow's ``fusion`` step learns
from closed lists and publishes its weights to ``fusion-weights``.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

from streams.contracts import Topics
from streams.settings import Settings
from tests.unit.test_fusion_learning import WARM, _click, _rec  # shared with the unit half

USERS, STEPS = 6, 6


def _wait(brokers: str, topic: str, done, procs, timeout_s: float = 90.0) -> list[dict]:
    """Read ``topic`` from the beginning until ``done(values)`` (or the timeout)."""
    from streams.kafka import TopicFollower

    follower = TopicFollower(brokers, [topic])
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(got) and time.monotonic() < deadline:
            procs.check()
            got += [json.loads(m.value()) for m in follower.poll(500, 0.2)]
    finally:
        follower.close()
    return got


@pytest.mark.integration
def test_the_fusion_step_learns_from_closed_lists_and_publishes(
    tmp_path, broker, catalog_path
) -> None:
    """Each user's list shows a "good" and a "bad" item; the good one is clicked.
    Every new list closes the user's previous one (max_open_lists = 1)."""
    from pipeline.processes import ProcessGroup, streamrec_cmd
    from tests.helpers import produce_all

    topics = Topics(f"f{uuid.uuid4().hex[:8]}-")
    broker.create_topics(topics)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"attribution": {"window_s": 1e12, "max_open_lists": 1}}))
    warm = tmp_path / "warm.json"
    warm.write_text(json.dumps(WARM))
    settings = Settings(
        brokers=broker.bootstrap,
        catalog=catalog_path,
        topic_prefix=topics.prefix,
        experiments=config,
        fusion_warm_start=warm,
        metrics_port=0,
    )
    with ProcessGroup(tmp_path / "logs") as procs:
        procs.start("dataflow", streamrec_cmd("dataflow"), settings.to_env())
        for s in range(STEPS):
            lists = [_rec(f"r-{u}-{s}", f"u{u}") for u in range(USERS)]
            produce_all(
                broker.bootstrap,
                topics.recommendations,
                [(r.user_id.encode(), r.to_bytes()) for r in lists],
            )
            # A click that beats its list waits for it (attribution's early events);
            # the next list goes out once every click was applied.
            clicks = [
                _click(f"c-{u}-{s}", "a", 10.0 * s + u, f"r-{u}-{s}", f"u{u}") for u in range(USERS)
            ]
            produce_all(
                broker.bootstrap,
                topics.events,
                [(c.user_id.encode(), c.to_bytes()) for c in clicks],
            )
            _wait(
                broker.bootstrap,
                topics.rank_requests,
                lambda got, n=USERS * (s + 1): len({r["request_id"] for r in got}) >= n,
                procs,
            )
        # (STEPS - 1) closed lists per user, two examples each: 60 updates,
        # published after the first and the 50th.
        published = _wait(broker.bootstrap, topics.fusion_weights, lambda got: len(got) >= 2, procs)
    first, fiftieth = published
    assert (first["updates"], fiftieth["updates"]) == (1, 50)
    assert set(first) == {"bias", "weights", "updates", "filter_seen"}
    # One SGD step from the warm start: the first closed list's first example is
    # the clicked good item, so "good" and the bias went up and "bad" stayed.
    assert first["weights"]["good"] > WARM["weights"]["good"]
    assert first["weights"]["bad"] == WARM["weights"]["bad"]
    assert first["bias"] > WARM["bias"]
    # After 50: clicked features up, shown-and-ignored ones down.
    assert fiftieth["weights"]["good"] > first["weights"]["good"]
    assert fiftieth["weights"]["bad"] < WARM["weights"]["bad"]
