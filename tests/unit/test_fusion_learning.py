"""Online fusion learning (streams.fusion_learner), in-process: closed lists whose
items carried features become labelled examples, and the ``fusion`` step's
logistic regression learns from them.
"""

from __future__ import annotations

import doctest
import json
import pickle
from collections import deque

import numpy as np
import pytest

import streams.fusion_learner
from streams.attribution import attribute, show
from streams.catalog import Catalog
from streams.contracts import (
    NO_EXPERIMENT,
    Event,
    FusionWeights,
    RankedItem,
    RankRequest,
    Recommendation,
    ServedPolicy,
    WeightSet,
)
from streams.dataflow import Shown, Trigger, UserStep
from streams.experiments import AttributionConfig, PolicyConfig
from streams.fusion_learner import FusionModel, FusionStep, read_warm_start
from streams.settings import Settings

WARM = {"bias": 0.0, "weights": {"good": 0.1, "bad": 0.1}}  # a warm-start file's JSON
WARM_SET = WeightSet.model_validate(WARM)


def test_doctests() -> None:
    assert doctest.testmod(streams.fusion_learner).failed == 0


def test_warm_start_score_and_weights_shape() -> None:
    model = FusionModel(WeightSet(bias=0.5, weights={"a": 2.0, "b": -1.0}))
    assert model.score({"a": 1.0, "b": 2.0, "unknown": 9.0}) == pytest.approx(0.5)
    assert model.weights() == WeightSet(bias=0.5, weights={"a": 2.0, "b": -1.0})
    assert FusionModel().weights() == WeightSet(bias=0.0, weights={})


def test_learning_moves_weights_towards_what_gets_clicked() -> None:
    model = FusionModel(WARM_SET, lr=0.05)
    for _ in range(50):
        model.learn({"good": 1.0}, 1)
        model.learn({"bad": 1.0}, 0)
    w = model.weights().weights
    assert w["good"] > WARM["weights"]["good"] and w["bad"] < WARM["weights"]["bad"]
    assert model.score({"good": 1.0}) > 0 > model.score({"bad": 1.0})
    assert model.updates == 100
    restored = pickle.loads(pickle.dumps(model))
    assert restored.weights() == model.weights()
    restored.learn({"good": 1.0}, 1)
    model.learn({"good": 1.0}, 1)
    assert restored.weights() == model.weights()


def test_step_publishes_on_the_first_update_and_every_n() -> None:
    step = FusionStep(FusionWeights.model_validate(WARM), publish_every=3)
    model, published = None, []
    for i in range(7):
        model, out = step(model, ({"good": 1.0}, i % 2))
        published.append(out)
    assert [None if p is None else p.updates for p in published] == [
        1,
        None,
        3,
        None,
        None,
        6,
        None,
    ]
    assert isinstance(published[5], FusionWeights)
    assert set(json.loads(published[5].to_bytes())) == {"bias", "weights", "updates", "filter_seen"}
    assert published[5].filter_seen is False
    assert pickle.loads(pickle.dumps(step)).publish_every == 3


def test_a_step_with_the_seen_filter_learns_the_masked_set() -> None:
    warm = FusionWeights.model_validate(
        {**WARM, "masked": {"bias": -3.0, "weights": {"good": 0.0}}}
    )
    step = FusionStep(warm, publish_every=1, filter_seen=True)
    _, out = step(None, ({"good": 1.0}, 1))
    assert out.filter_seen is True
    assert out.bias < -2.9  # started from the masked set, not the main one
    assert warm.weight_set(False) == WARM_SET


def test_warm_start_file(tmp_path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"bias": 1, "weights": {"a": 2}}))
    assert read_warm_start(path) == FusionWeights(bias=1.0, weights={"a": 2.0})
    path.write_text(json.dumps({"bias": 1, "weights": {}, "masked": {"bias": 0, "weights": {}}}))
    assert read_warm_start(path).masked == WeightSet(bias=0.0, weights={})
    # What a fit reports beside the weights (model.finetune_seq writes it) is left out;
    # a published record's stamps too (a warm start is both sets).
    fitted = {"bias": 1, "weights": {}, "fitted_on": {"groups": 3}, "warm_start": {"users": 9}}
    path.write_text(json.dumps({**fitted, "updates": 5, "filter_seen": True}))
    assert read_warm_start(path) == FusionWeights(bias=1.0, weights={})
    path.write_text('{"weights": {}}')
    with pytest.raises(ValueError, match="bias"):
        read_warm_start(path)
    path.write_text('{"bias": NaN, "weights": {}}')
    with pytest.raises(ValueError, match="finite"):
        read_warm_start(path)
    with pytest.raises(ValueError, match="expected a JSON file"):
        read_warm_start(tmp_path / "missing.json")


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
        experiment=NO_EXPERIMENT,
        policy=ServedPolicy(reranker="mmr", arm="mmr:0.7", trade_off=0.7, mode="fixed"),
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


USERS, STEPS = 6, 6
