"""One wire format: every record on every topic is a frozen, strict model of
``streams.contracts``, written with ``to_bytes()`` and read with ``parse``.

>>> from streams.contracts import SignalRow, parse
>>> row = SignalRow(item_id="i9", neighbours=(("i7", 2.5),), short=3.2, long=41.0, ts=1.0)
>>> parse(SignalRow, row.to_bytes()) == row
True
"""

from __future__ import annotations

import doctest
import json
import random

import numpy as np
import pytest
from pydantic import BaseModel

import streams.contracts as contracts
from model.bandit_book import PolicyBook
from streams.attribution import ListReward
from streams.bandit import POLICIES, bandit_key, new_policy, policy_from_state
from streams.contracts import (
    BANDIT_PARAMS,
    CONTROL_HEADER,
    CONTROL_RECORDS,
    TOPIC_RECORDS,
    AssignedPolicy,
    BanditState,
    CatalogItem,
    DeadLetter,
    Event,
    ExperimentStamp,
    ForgetControl,
    ForgetRequest,
    Forgotten,
    FusionWeights,
    Outcome,
    RankedItem,
    RankRequest,
    Recommendation,
    RecommendationRequest,
    ServedPolicy,
    SignalRow,
    Topics,
    Unattributed,
    WeightSet,
    encode_vector,
    parse,
)
from streams.dataflow import _SINK_TOPICS, BanditStep, _to_sink
from streams.experiments import BanditConfig, PolicyConfig

ARMS = ["mmr:0.7", "dpp:0.6"]
EXPERIMENT = ExperimentStamp(name="div", variant="bandit")
SERVED = ServedPolicy(reranker="mmr", arm="mmr:0.7", trade_off=0.7, mode="bandit", segment="h1")


def _bandit_state(policy: str) -> BanditState:
    p = new_policy(BanditConfig(policy=policy), ARMS)
    x = np.array([1.0, 0.0, 1.0])
    rng = random.Random(3)
    for _ in range(25):
        p.update(p.pull(x, rng), rng.random(), x)
    return p.state_record(bandit_key(policy, "h1-e0-new"), 1_700_000_000.5)


def _samples() -> list[BaseModel]:
    """One record of every model, with its optional fields set."""
    interaction = {"rec_id": "rec-1", "user_id": "u1", "item_id": "i1", "type": "click"}
    return [
        Event(
            event_id="e1",
            type="purchase",
            user_id="u1",
            item_id="i1",
            ts=1.7e9,
            price=3.5,
            quantity=2,
            rec_id="rec-1",
            session_id="s1",
            referrer="search",
        ),
        DeadLetter(error="not JSON", raw="garbage", topic="events", partition=1, offset=7),
        CatalogItem(item_id="i1", title="Mug", category="kitchen"),
        RecommendationRequest(request_id="r1", user_id="u1", k=5, ts=1.7e9, context={"p": 1}),
        RankRequest(
            request_id="evt:e1",
            user_id="u1",
            k=10,
            m=50,
            user_vector=encode_vector(np.array([0.6, 0.8])),
            last_ts=1.7e9,
            recent_items=["i1"],
            sequence=["i0", "i1"],
            sequence_ts=[1.6e9, 1.7e9],
            counts={"i1": (2.0, 1.7e9)},
            category_mix={"kitchen": 1.0},
            trigger_event_id="e1",
            arrival_ts=1.7e9,
            created_ts=1.7e9,
            experiment=EXPERIMENT,
            policy=AssignedPolicy(mode="bandit", segment="h1-e0-new", artifact="/models/v2"),
            context=[1.0, 0.0, 1.0],
        ),
        ForgetControl(forget="u1", request_id="f1"),
        Recommendation(
            rec_id="rec-1",
            request_id=None,
            user_id="u1",
            items=[
                RankedItem(
                    item_id="i2",
                    score=1.5,
                    rank=1,
                    features={"covis": 1.2},
                    reason={"source": "covis", "because": "i1", "top": {"covis": 1.2}},
                ),
                RankedItem(item_id="i3", score=1.0, rank=2),
            ],
            experiment=EXPERIMENT,
            policy=SERVED,
            model_version="m1",
            trigger_event_id="e1",
            created_ts=1.7e9,
            latency_ms=12.5,
        ),
        *[_bandit_state(name) for name in POLICIES],
        Outcome(
            **interaction,
            event_id="e2",
            ts=1.7e9,
            experiment=EXPERIMENT,
            policy=SERVED,
            revenue=7.0,
            attributed_by="rec_id",
        ),
        Unattributed(**interaction, event_id="e3", ts=1.7e9, reason="expired"),
        SignalRow(
            item_id="i1",
            neighbours=(("i2", 2.5), ("i3", 1.0)),
            short=3.2,
            long=41.0,
            ts=1.7e9,
            records=57,
        ),
        FusionWeights(bias=-1.2, weights={"covis": 0.8}, updates=50, filter_seen=False),
        FusionWeights(bias=1.7, weights={"seq": 1.0}, masked=WeightSet(bias=0.4, weights={})),
        ForgetRequest(request_id="f1", user_id="u1"),
        Forgotten(request_id="f1", user_id="u1", had_state=True, done_ts=1.7e9),
    ]


SAMPLES = _samples()
RECORD_MODELS = {
    *TOPIC_RECORDS.values(),
    *(m for c in CONTROL_RECORDS.values() for m in c.values()),
}
#: Models only streamrec's processes write (NaN refused).
INTERNAL = [SignalRow, FusionWeights, BanditState, ForgetControl, CatalogItem]


def _id(value: object) -> str:
    return value.__name__ if isinstance(value, type) else str(value)[:16]


def _sample(model: type) -> BaseModel:
    return next(s for s in SAMPLES if type(s) is model)


# --- one model per topic ---


def test_every_topic_maps_to_exactly_one_record_model() -> None:
    topics = Topics("p1-")
    assert sorted(TOPIC_RECORDS) == sorted(Topics().all())
    for name in topics.all():
        model = topics.record_model(name)
        assert model is TOPIC_RECORDS[name.removeprefix("p1-")]
        assert topics.name(name.removeprefix("p1-")) == name
    with pytest.raises(ValueError):
        topics.record_model("events")  # another prefix
    assert set(CONTROL_RECORDS) <= set(TOPIC_RECORDS)


def test_every_record_model_is_frozen_strict_and_closed() -> None:
    for model in RECORD_MODELS:
        cfg = model.model_config
        assert cfg["frozen"] and cfg["strict"], model
        assert cfg["extra"] == ("allow" if model is Event else "forbid"), model
    for model in INTERNAL:
        assert model.model_config["allow_inf_nan"] is False, model
    assert {type(s) for s in SAMPLES} == RECORD_MODELS  # a sample of every model


# --- round trips ---


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_each_record_round_trips_through_its_topic(record: BaseModel) -> None:
    raw = record.to_bytes()
    back = parse(type(record), raw, "t", 0, 1)
    assert not isinstance(back, DeadLetter) or type(record) is DeadLetter, back
    assert back == record
    assert back.to_bytes() == raw


def test_keys_are_the_readme_keys() -> None:
    keys = {type(s).__name__: s.kafka_key() for s in SAMPLES if not isinstance(s, BanditState)}
    assert keys == {
        "Event": b"u1",
        "DeadLetter": None,
        "CatalogItem": b"i1",
        "RecommendationRequest": b"u1",
        "RankRequest": b"u1",
        "ForgetControl": b"u1",
        "Recommendation": b"u1",
        "Outcome": b"u1",
        "Unattributed": b"u1",
        "SignalRow": b"i1",
        "FusionWeights": b"global",
        "ForgetRequest": b"u1",
        "Forgotten": b"u1",
    }
    assert {_bandit_state(p).kafka_key() for p in ("thompson", "linucb")} == {
        b"h1-e0-new",
        b"global",
    }
    assert _sample(ForgetControl).kafka_headers() == [(CONTROL_HEADER, b"forget")]
    assert _sample(RankRequest).kafka_headers() == []


def test_the_json_keeps_the_documented_shapes() -> None:
    """The stamps and the internal records read as they did before they were typed."""

    def keys(record: BaseModel) -> list[str]:
        return list(json.loads(record.to_bytes()))

    request = json.loads(_sample(RankRequest).to_bytes())
    assert request["policy"] == {
        "mode": "bandit",
        "arm": None,
        "segment": "h1-e0-new",
        "artifact": "/models/v2",
    }
    assert json.loads(AssignedPolicy(segment="all").to_bytes()) == {
        "mode": "fixed",
        "arm": None,
        "segment": "all",
    }  # no artifact: no key
    assert request["experiment"] == {"name": "div", "variant": "bandit"}
    rec = json.loads(_sample(Recommendation).to_bytes())
    assert rec["policy"] == {
        "reranker": "mmr",
        "arm": "mmr:0.7",
        "lambda": 0.7,
        "mode": "bandit",
        "segment": "h1",
    }
    assert SERVED.model_dump()["lambda"] == 0.7  # the UI's view of a list, too
    assert keys(_sample(SignalRow)) == ["item_id", "neighbours", "short", "long", "ts", "records"]
    assert json.loads(_sample(SignalRow).to_bytes())["neighbours"] == [["i2", 2.5], ["i3", 1.0]]
    assert keys(_sample(FusionWeights)) == ["bias", "weights", "updates", "filter_seen"]
    assert keys(FusionWeights(bias=0.0, weights={})) == ["bias", "weights"]
    assert sorted(keys(_bandit_state("ucb"))) == sorted(
        ["key", "updated_ts", "policy", "arms", "updates", "min_exploration", "seed"]
        + ["stats", "params"]
    )
    assert keys(_sample(ForgetControl)) == ["forget", "request_id"]


def test_a_bandit_record_rebuilds_its_policy() -> None:
    assert set(POLICIES) == set(BANDIT_PARAMS)
    for name in POLICIES:
        record = _bandit_state(name)
        back = parse(BanditState, record.to_bytes())
        assert isinstance(back, BanditState)
        policy = policy_from_state(back)
        assert policy.name == name and policy.state_record(back.key, back.updated_ts) == record


# --- the one parser: dead letters with the reason ---

GARBAGE = [
    (None, "empty record"),
    (b"garbage", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b"null", "not a JSON object"),
    (b'{"nope": 1}', "Field required"),
]


@pytest.mark.parametrize("model", INTERNAL + [RankRequest], ids=lambda m: m.__name__)
@pytest.mark.parametrize(("raw", "reason"), GARBAGE, ids=_id)
def test_garbage_is_a_dead_letter_with_the_reason(model: type, raw, reason: str) -> None:
    dead = parse(model, raw, "p1-item-signals", 2, 40)
    assert isinstance(dead, DeadLetter)
    assert reason in dead.error
    assert (dead.topic, dead.partition, dead.offset) == ("p1-item-signals", 2, 40)


def _with(record: BaseModel, path: list, value: object) -> bytes:
    obj = json.loads(record.to_bytes())
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(obj).encode()  # json.dumps writes NaN and Infinity literals


NON_FINITE = [
    (SignalRow, ["short"], float("nan")),
    (SignalRow, ["neighbours", 0, 1], float("inf")),
    (FusionWeights, ["weights", "covis"], float("inf")),
    (FusionWeights, ["bias"], float("nan")),
    (BanditState, ["stats", "mmr:0.7", "reward_sum"], float("nan")),
    (BanditState, ["min_exploration"], float("-inf")),
]


@pytest.mark.parametrize(("model", "path", "value"), NON_FINITE, ids=_id)
def test_a_non_finite_number_is_a_dead_letter(model: type, path: list, value: float) -> None:
    dead = parse(model, _with(_sample(model), path, value))
    assert isinstance(dead, DeadLetter)
    assert "finite number" in dead.error
    assert dead.error.startswith(".".join(map(str, path)))


WRONG_SHAPES = [
    (SignalRow, ["neighbours"], 5, "neighbours"),
    (SignalRow, ["neighbours"], [["i2", 1.0, 3.0]], "neighbours.0"),
    (SignalRow, ["neighbours"], [["", 1.0]], "at least 1 character"),
    (SignalRow, ["neighbours"], [["x" * 300, 1.0]], "at most 256 characters"),
    (SignalRow, ["neighbours"], [["i", 1.0]] * 1001, "at most 1000 items"),
    (SignalRow, ["item_id"], 7, "item_id"),
    (SignalRow, ["short"], "1.0", "short"),
    (SignalRow, ["records"], 2.5, "records"),
    (SignalRow, ["extra"], 1, "Extra inputs"),
    (FusionWeights, ["bias"], "x", "bias"),
    (FusionWeights, ["weights"], [1.0], "weights"),
    (FusionWeights, ["filter_seen"], "yes", "filter_seen"),
    (FusionWeights, ["weights", "covis"], True, "weights.covis"),
    (BanditState, ["policy"], "os.system", "policy"),
    (BanditState, ["arms"], [], "arms"),
    (BanditState, ["stats"], {}, "stats must hold every arm"),
    (BanditState, ["params"], "gASV...", "params"),
    (BanditState, ["params"], {"alpha": 1.0, "ridge": 1.0, "a_inv": None, "b": None}, "thompson"),
    (BanditState, ["blob"], "gASV...", "Extra inputs"),
    (BanditState, ["seed"], True, "seed"),
    (ForgetControl, ["forget"], "", "forget"),
    (CatalogItem, ["title"], None, "title"),
]


@pytest.mark.parametrize(("model", "path", "value", "reason"), WRONG_SHAPES, ids=_id)
def test_a_wrong_shape_is_a_dead_letter_that_names_it(
    model: type, path: list, value: object, reason: str
) -> None:
    sample = _sample(model) if model is not BanditState else _bandit_state("thompson")
    dead = parse(model, _with(sample, path, value))
    assert isinstance(dead, DeadLetter), dead
    assert reason in dead.error, dead.error


def test_a_huge_record_is_cut_in_its_dead_letter() -> None:
    dead = parse(SignalRow, b'{"item_id": "' + b"x" * 100_000 + b'"')
    assert isinstance(dead, DeadLetter) and len(dead.raw) < 5000


# --- the dataflow's sink and the bandit key ---


def test_the_dataflow_routes_each_record_to_its_topic() -> None:
    topics = Topics("p1-")
    labels = PolicyConfig().metric_labels()
    for kind, base in _SINK_TOPICS.items():
        assert TOPIC_RECORDS[base] is kind or kind in CONTROL_RECORDS.get(base, {}).values()
    for record in SAMPLES:
        if type(record) not in _SINK_TOPICS:
            continue
        msg = _to_sink(topics, labels, record)
        assert msg.topic == topics.name(_SINK_TOPICS[type(record)])
        assert (msg.key, msg.value, msg.headers) == (
            record.kafka_key(),
            record.to_bytes(),
            record.kafka_headers(),
        )
    with pytest.raises(TypeError, match="no topic"):
        _to_sink(topics, labels, ("h1-e0-new", {"policy": "thompson"}))


@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_dataflow_and_the_worker_key_bandits_alike(policy: str) -> None:
    cfg = PolicyConfig.model_validate({"bandit": {"policy": policy}})
    step, book = BanditStep(cfg), PolicyBook(cfg, seed=0)
    for segment in ("h0-e0-new", "h2-e1-ret"):
        reward = ListReward("r", "mmr:0.7", segment, "bandit", 1.0, [1.0, 0.0, 1.0])
        assert step.key(reward) == book.key(segment) == bandit_key(policy, segment)
        _, record = step(None, reward)
        assert isinstance(record, BanditState) and record.key == bandit_key(policy, segment)
    assert (bandit_key(policy, "h1") == "global") is (policy == "linucb")


def test_contract_examples_run() -> None:
    result = doctest.testmod(contracts, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0
