"""Online fusion learning (streams.fusion): closed lists whose items carried
features become labelled examples; the ``fusion`` step's logistic regression
learns from them and publishes its weights to ``fusion-weights``."""

from __future__ import annotations

import doctest
import json
import pickle
import time
import uuid
from collections import deque

import numpy as np
import pytest
import yaml

import streams.fusion
from streams.attribution import attribute, show
from streams.catalog import Catalog
from streams.contracts import Event, RankedItem, RankRequest, Recommendation, Topics
from streams.dataflow import Shown, Trigger, UserStep
from streams.experiments import AttributionConfig, PolicyConfig
from streams.fusion import FusionModel, FusionStep, load_weights, weight_set
from streams.settings import Settings

WARM = {"bias": 0.0, "weights": {"good": 0.1, "bad": 0.1}}


def test_doctests() -> None:
    assert doctest.testmod(streams.fusion).failed == 0


def test_warm_start_score_and_weights_shape() -> None:
    model = FusionModel({"bias": 0.5, "weights": {"a": 2.0, "b": -1.0}})
    assert model.score({"a": 1.0, "b": 2.0, "unknown": 9.0}) == pytest.approx(0.5)
    assert model.weights() == {"bias": 0.5, "weights": {"a": 2.0, "b": -1.0}}
    assert FusionModel().weights() == {"bias": 0.0, "weights": {}}


def test_learning_moves_weights_towards_what_gets_clicked() -> None:
    model = FusionModel(WARM, lr=0.05)
    for _ in range(50):
        model.learn({"good": 1.0}, 1)
        model.learn({"bad": 1.0}, 0)
    w = model.weights()["weights"]
    assert w["good"] > WARM["weights"]["good"] and w["bad"] < WARM["weights"]["bad"]
    assert model.score({"good": 1.0}) > 0 > model.score({"bad": 1.0})
    assert model.updates == 100
    restored = pickle.loads(pickle.dumps(model))
    assert restored.weights() == model.weights()
    restored.learn({"good": 1.0}, 1)
    model.learn({"good": 1.0}, 1)
    assert restored.weights() == model.weights()


def test_step_publishes_on_the_first_update_and_every_n() -> None:
    step = FusionStep(WARM, publish_every=3)
    model, published = None, []
    for i in range(7):
        model, out = step(model, ({"good": 1.0}, i % 2))
        published.append(out)
    assert [None if p is None else p["updates"] for p in published] == [
        1,
        None,
        3,
        None,
        None,
        6,
        None,
    ]
    assert set(published[5]) == {"bias", "weights", "updates", "filter_seen"}
    assert published[5]["filter_seen"] is False
    assert pickle.loads(pickle.dumps(step)).publish_every == 3


def test_a_step_with_the_seen_filter_learns_the_masked_set() -> None:
    warm = {**WARM, "masked": {"bias": -3.0, "weights": {"good": 0.0}}}
    step = FusionStep(warm, publish_every=1, filter_seen=True)
    _, out = step(None, ({"good": 1.0}, 1))
    assert out["filter_seen"] is True
    assert out["bias"] < -2.9  # started from the masked set, not the main one
    assert weight_set(warm, False) == {"bias": WARM["bias"], "weights": WARM["weights"]}


def test_warm_start_file(tmp_path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"bias": 1, "weights": {"a": 2}}))
    assert load_weights(path) == {"bias": 1.0, "weights": {"a": 2.0}}
    path.write_text(json.dumps({"bias": 1, "weights": {}, "masked": {"bias": 0, "weights": {}}}))
    assert load_weights(path)["masked"] == {"bias": 0.0, "weights": {}}
    path.write_text('{"weights": {}}')
    with pytest.raises(ValueError, match="bias"):
        load_weights(path)
    with pytest.raises(ValueError, match="expected a JSON file"):
        load_weights(tmp_path / "missing.json")


# --- closed lists -> examples ---


def _rec(rec_id: str, user: str = "u1", with_features: bool = True) -> Recommendation:
    feats = [{"good": 1.0}, {"bad": 1.0}, None] if with_features else [None] * 3
    return Recommendation(
        rec_id=rec_id,
        request_id=None,
        user_id=user,
        items=[
            RankedItem(item_id=i, score=1.0, rank=r + 1, features=f)
            for r, (i, f) in enumerate(zip(["a", "b", "c"], feats, strict=True))
        ],
        experiment={"name": "none", "variant": "default"},
        policy={"reranker": "mmr", "arm": "mmr:0.7", "lambda": 0.7, "mode": "fixed"},
        model_version="test",
        trigger_event_id=None,
        created_ts=0.0,
        latency_ms=0.0,
    )


def _click(event_id: str, item: str, ts: float, rec_id: str, user: str = "u1") -> Event:
    return Event(event_id=event_id, type="click", user_id=user, item_id=item, ts=ts, rec_id=rec_id)


def test_a_closed_list_labels_each_item_that_carried_features() -> None:
    cfg = AttributionConfig(max_open_lists=1)
    lists: deque = deque()
    show(lists, _rec("r1"), 0.0, None, cfg)
    attribute(lists, _click("e1", "a", 1.0, "r1"), cfg)
    (closed,) = show(lists, _rec("r2"), 2.0, None, cfg)
    # "c" had no features: no example.
    assert closed.examples == (({"good": 1.0}, 1), ({"bad": 1.0}, 0))
    (closed,) = show(lists, _rec("r3", with_features=False), 3.0, None, cfg)
    assert closed.examples == (({"good": 1.0}, 0), ({"bad": 1.0}, 0))
    (closed,) = show(lists, _rec("r4"), 4.0, None, cfg)
    assert closed.examples == ()


def test_user_step_rewards_carry_the_examples() -> None:
    items = ["a", "b", "c"]
    catalog = Catalog(items, items, [None] * 3, np.eye(3, dtype=np.float32), np.ones(3))
    policy = PolicyConfig.model_validate({"attribution": {"max_open_lists": 1}})
    step = UserStep(catalog, Settings(brokers="x"), policy)
    state, _ = step.apply(None, Shown(_rec("r1")))
    state, _ = step.apply(state, Trigger(_click("e1", "b", 1.0, "r1"), 1.0))
    state, (reward,) = step.apply(state, Shown(_rec("r2")))
    assert reward.examples == (({"good": 1.0}, 0), ({"bad": 1.0}, 1))


@pytest.mark.parametrize("filter_seen", [True, False])
def test_rank_requests_say_whether_seen_items_are_filtered(filter_seen: bool) -> None:
    """The worker picks the fusion weight set from ``RankRequest.filter_seen``."""
    items = ["a", "b", "c"]
    catalog = Catalog(items, items, [None] * 3, np.eye(3, dtype=np.float32), np.ones(3))
    step = UserStep(catalog, Settings(brokers="x", filter_seen=filter_seen))
    _, outputs = step.apply(None, Trigger(_click("e1", "b", 1.0, None), 1.0))
    (request,) = [o for o in outputs if isinstance(o, RankRequest)]
    assert request.filter_seen is filter_seen
    assert request.exclude == (["b"] if filter_seen else [])


# --- the dataflow on the real broker ---

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
    from streamrec.cli import settings_env
    from streamrec.processes import ProcessGroup, streamrec_cmd
    from tests.conftest import produce_all

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
        procs.start("dataflow", streamrec_cmd("dataflow"), settings_env(settings))
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
