"""Forget a shopper, on the real broker with the real dataflow and worker: the
user's state goes, also from the recovery store, and their id never reaches a
metric label or an INFO log line."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest

from pipeline.broker import free_port
from streams.contracts import ForgetRequest, RecommendationRequest
from tests.helpers import collect, pipeline, produce_all, values, wait_for_snapshot

pytestmark = pytest.mark.integration

SHOPPER = "shopper-7f3a9c"  # distinctive: searched for in every log and metric


def _click(i: int, user: str) -> tuple[bytes, bytes]:
    item = ["k0", "l1", "b2", "t3"][i % 4]
    event = {"event_id": f"{user}-{i}", "type": "click", "user_id": user, "item_id": item}
    return user.encode(), json.dumps({**event, "ts": 1_700_000_000 + i}).encode()


def _ask(brokers: str, topics, request_id: str, user: str) -> dict:
    """An explicit request for ``user``: its rank request (what the dataflow knew)."""
    request = RecommendationRequest(request_id=request_id, user_id=user)
    produce_all(brokers, topics.recommendation_requests, [(user.encode(), request.to_bytes())])
    got = collect(
        brokers,
        [topics.rank_requests],
        until=lambda ms: any(request_id.encode() in m.value() for m in ms),
        timeout_s=60,
    )
    return next(r for r in values(got, topics.rank_requests) if r.get("request_id") == request_id)


def test_a_forgotten_user_is_gone_also_after_a_restart_from_recovery(
    tmp_path, broker, topics, catalog_path
):
    port = free_port()
    recovery = ("-r", str(tmp_path / "recovery"), "-s", "1", "-b", "0")
    with pipeline(
        tmp_path, broker, topics, catalog_path, dataflow_args=recovery, metrics_port=port
    ) as procs:
        produce_all(
            broker.bootstrap,
            topics.events,
            [_click(i, SHOPPER) for i in range(5)] + [_click(i, "other") for i in range(5)],
        )
        collect(
            broker.bootstrap, [topics.recommendations], until=lambda ms: len(ms) >= 10, procs=procs
        )
        before = _ask(broker.bootstrap, topics, "before", SHOPPER)
        assert before["sequence"] and before["user_vector"] is not None

        forget = ForgetRequest(request_id="forget-1", user_id=SHOPPER)
        produce_all(
            broker.bootstrap, topics.forget_requests, [(SHOPPER.encode(), forget.to_bytes())]
        )
        done = collect(broker.bootstrap, [topics.forgotten], until=lambda ms: ms, procs=procs)
        (answer,) = values(done, topics.forgotten)
        assert answer["request_id"] == "forget-1" and answer["had_state"] is True

        after = _ask(broker.bootstrap, topics, "after", SHOPPER)
        assert after["sequence"] == [] and after["recent_items"] == []
        assert after["user_vector"] is None and after["last_ts"] is None  # as for a new user
        # The dataflow's metrics (the worker's labels are bounded the same way:
        # tests/unit/test_experiments.py checks MetricLabels).
        url = f"http://127.0.0.1:{port}/metrics"
        metrics_text = urllib.request.urlopen(url, timeout=5).read().decode()

        wait_for_snapshot(tmp_path / "recovery", procs, snapshots=2)  # the forget is durable
        procs.children["dataflow"].send_signal(signal.SIGKILL)
        procs.children["dataflow"].wait(10)
        procs.start("dataflow", procs.commands["dataflow"], procs.env)
        restarted = _ask(broker.bootstrap, topics, "after-restart", SHOPPER)
        other = _ask(broker.bootstrap, topics, "other-after-restart", "other")
        logs = "".join(p.read_text(errors="replace") for p in procs.log_dir.glob("*.log"))
    assert restarted["sequence"] == [] and restarted["user_vector"] is None
    assert other["sequence"], "the other user's state came back from recovery"
    assert SHOPPER not in metrics_text and "streamrec_forgotten_users_total 1.0" in metrics_text
    assert SHOPPER not in logs


class _Msg:
    """The few confluent_kafka.Message methods Worker.plan reads."""

    def __init__(self, key: bytes, value: bytes, headers=None) -> None:
        self._key, self._value, self._headers = key, value, headers

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self):
        return self._headers

    def topic(self) -> str:
        return "rank-requests"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


def test_the_worker_drops_the_queued_requests_of_a_forgotten_user() -> None:
    """A forget control record behind a user's requests in the window drops them
    (explicit ones too: they were built from the forgotten state); the other
    user's request and the user's requests after the marker are ranked."""
    from types import SimpleNamespace

    from model.worker import Worker
    from streams.contracts import CONTROL_HEADER, RankRequest
    from streams.settings import Settings

    def request(request_id: str, user: str, explicit: bool = False) -> _Msg:
        r = RankRequest(
            request_id=request_id,
            explicit_request_id=request_id if explicit else None,
            user_id=user,
            k=10,
            arrival_ts=1.0,
            created_ts=1.0,
        )
        return _Msg(user.encode(), r.to_bytes())

    ranker = SimpleNamespace(catalog=None, model_version="test", scorer=None)
    worker = Worker(Settings(brokers="unused:9", metrics_port=0), ranker=ranker)  # type: ignore[arg-type]
    marker = _Msg(SHOPPER.encode(), b'{"forget": "x"}', [(CONTROL_HEADER, b"forget")])
    window = [
        request("evt:1", SHOPPER),
        request("page-1", SHOPPER, explicit=True),
        request("evt:2", "other"),
        marker,
        request("evt:3", SHOPPER),
    ]
    dead_letters, ranked = worker.plan(window)  # type: ignore[arg-type]
    assert dead_letters == []
    assert [r.request_id for r in ranked] == ["evt:2", "evt:3"]


def test_an_idle_user_expires_after_the_retention(tmp_path, broker, topics, catalog_path):
    """With ``user_retention_s``, a user without input for that long is dropped:
    the next request is answered as for a new shopper; an active user is kept."""
    with pipeline(tmp_path, broker, topics, catalog_path, user_retention_s=3.0) as procs:
        # Warm (the worker up) before the clock matters.
        produce_all(broker.bootstrap, topics.events, [_click(0, "warm")])
        collect(broker.bootstrap, [topics.recommendations], until=lambda ms: ms, procs=procs)
        produce_all(
            broker.bootstrap,
            topics.events,
            [_click(i, SHOPPER) for i in range(3)] + [_click(i, "other") for i in range(3)],
        )
        kept = _ask(broker.bootstrap, topics, "kept", "other")  # touches "other" only
        assert kept["sequence"]
        time.sleep(2)
        still = _ask(broker.bootstrap, topics, "still", "other")
        time.sleep(2)  # SHOPPER idle for over 4 s by now, "other" for about 2
        expired = _ask(broker.bootstrap, topics, "expired", SHOPPER)
        procs.check()
    assert still["sequence"], "an active user's state is kept"
    assert expired["sequence"] == [] and expired["user_vector"] is None
