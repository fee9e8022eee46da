"""Reward attribution: pure functions, then through the user-state and bandit steps."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from streams.attribution import ListReward, ShownList, attribute, close_expired, show
from streams.bandit import policy_from_state
from streams.catalog import Catalog
from streams.contracts import (
    BanditState,
    Event,
    ExperimentStamp,
    Outcome,
    RankedItem,
    RankRequest,
    Recommendation,
    ServedPolicy,
    parse,
    rec_id_for,
)
from streams.dataflow import BanditStep, Shown, Trigger, UserStep
from streams.experiments import AttributionConfig, PolicyConfig
from streams.settings import Settings
from streams.signals import CoVisit, Hit

CFG = AttributionConfig()  # window 1800 s; click 0.3, favorite 0.5, cart 0.6, purchase 1
POLICY = ServedPolicy(
    reranker="mmr", arm="mmr:0.7", trade_off=0.7, mode="bandit", segment="h1-e0-new"
)
EXPERIMENT = ExperimentStamp(name="div", variant="bandit")


def _rec(rec_id: str, items: list[str], policy: ServedPolicy = POLICY) -> Recommendation:
    return Recommendation(
        rec_id=rec_id,
        request_id=None,
        user_id="u1",
        items=[RankedItem(item_id=item, score=1.0, rank=i + 1) for i, item in enumerate(items)],
        experiment=EXPERIMENT,
        policy=policy,
        model_version="test",
        trigger_event_id=None,
        created_ts=0.0,
        latency_ms=0.0,
    )


def _event(event_id: str, item: str, ts: float, kind: str = "click", **extra: object) -> Event:
    return Event(event_id=event_id, type=kind, user_id="u1", item_id=item, ts=ts, **extra)


def _shown(*lists: tuple[str, list[str], float], cfg: AttributionConfig = CFG) -> deque:
    open_lists: deque[ShownList] = deque()
    for rec_id, items, ts in lists:
        assert show(open_lists, _rec(rec_id, items), ts, [1.0, 0.0], cfg) == []
    return open_lists


def _close_all(open_lists: deque, cfg: AttributionConfig = CFG) -> list[ListReward]:
    return close_expired(open_lists, float("inf"), cfg)


# --- the pure functions ---


def test_an_event_with_an_open_rec_id_is_attributed_by_rec_id() -> None:
    lists = _shown(("r1", ["a", "b"], 100.0), ("r2", ["c"], 200.0))
    outcomes, closed, _ = attribute(lists, _event("e1", "b", 300.0, rec_id="r1"), CFG)
    assert closed == []
    assert outcomes == [
        Outcome(
            rec_id="r1",
            user_id="u1",
            item_id="b",
            type="click",
            event_id="e1",
            ts=300.0,
            experiment=EXPERIMENT,
            policy=POLICY,
            revenue=None,
            attributed_by="rec_id",
        )
    ]


def test_an_item_of_the_last_list_is_attributed_by_window() -> None:
    lists = _shown(("r1", ["a"], 100.0), ("r2", ["b", "c"], 200.0))
    (outcome,), _, _ = attribute(lists, _event("e1", "c", 200.0 + CFG.window_s), CFG)
    assert (outcome.rec_id, outcome.attributed_by) == ("r2", "window")


def test_an_item_of_an_older_list_without_rec_id_is_not_attributed() -> None:
    lists = _shown(("r1", ["a"], 100.0), ("r2", ["b"], 200.0))
    assert attribute(lists, _event("e1", "a", 300.0), CFG) == ([], [], [])
    assert attribute(lists, _event("e2", "z", 300.0), CFG) == ([], [], [])


def test_outside_the_window_nothing_is_attributed_and_the_list_closes() -> None:
    lists = _shown(("r1", ["a"], 0.0))
    attribute(lists, _event("e1", "a", 10.0, rec_id="r1"), CFG)
    late = CFG.window_s + 1.0
    outcomes, closed, _ = attribute(lists, _event("e2", "a", late, "purchase", rec_id="r1"), CFG)
    assert outcomes == []
    assert [(r.rec_id, r.reward) for r in closed] == [("r1", pytest.approx(0.3))]
    assert not lists


def test_views_are_never_attributed() -> None:
    lists = _shown(("r1", ["a"], 0.0))
    assert attribute(lists, _event("e1", "a", 1.0, "view", rec_id="r1"), CFG) == ([], [], [])
    assert attribute(lists, _event("e2", "a", 2.0, "view"), CFG) == ([], [], [])
    assert lists[0].reward == 0.0


def test_replays_are_credited_once() -> None:
    lists = _shown(("r1", ["a"], 0.0))
    click = _event("e1", "a", 1.0, rec_id="r1")
    assert len(attribute(lists, click, CFG)[0]) == 1
    assert attribute(lists, click, CFG) == ([], [], [])
    assert attribute(lists, _event("e2", "a", 2.0, rec_id="r1"), CFG) == ([], [], [])
    assert attribute(lists, _event("e3", "a", 3.0), CFG) == ([], [], [])  # same list via the window
    assert len(attribute(lists, _event("e4", "a", 4.0, "add_to_cart"), CFG)[0]) == 1
    assert [r.reward for r in _close_all(lists)] == [pytest.approx(0.3 + 0.6)]


@pytest.mark.parametrize(
    ("kind", "extra", "revenue"),
    [
        ("purchase", {"price": 2.5, "quantity": 4}, 10.0),
        ("purchase", {"price": 2.5}, None),
        ("purchase", {}, None),
        ("add_to_cart", {"price": 2.5, "quantity": 4}, None),
    ],
)
def test_revenue_is_price_times_quantity_of_a_purchase(kind, extra, revenue) -> None:
    lists = _shown(("r1", ["a"], 0.0))
    (outcome,), _, _ = attribute(lists, _event("e1", "a", 1.0, kind, rec_id="r1", **extra), CFG)
    assert outcome.revenue == revenue


def test_the_reward_is_the_capped_sum_of_weights() -> None:
    lists = _shown(("r1", ["a", "b"], 0.0), ("r2", ["c"], 1.0))
    for i, (item, kind, rec_id) in enumerate(
        [
            ("a", "click", "r1"),
            ("b", "favorite", "r1"),
            ("c", "click", "r2"),
            ("c", "purchase", "r2"),
        ]
    ):
        attribute(lists, _event(f"e{i}", item, 2.0, kind, rec_id=rec_id), CFG)
    rewards = {r.rec_id: r.reward for r in _close_all(lists)}
    assert rewards == {"r1": pytest.approx(0.8), "r2": 1.0}


def test_the_reward_uses_the_configured_weights() -> None:
    cfg = AttributionConfig(reward_weights={"click": 0.1, "purchase": 0.7})
    lists = _shown(("r1", ["a"], 0.0), cfg=cfg)
    for i, kind in enumerate(["click", "favorite", "purchase"]):
        assert len(attribute(lists, _event(f"e{i}", "a", 1.0, kind), cfg)[0]) == 1
    assert [r.reward for r in _close_all(lists, cfg)] == [pytest.approx(0.8)]


def test_showing_the_same_list_twice_is_a_no_op() -> None:
    lists = _shown(("r1", ["a"], 0.0))
    assert show(lists, _rec("r1", ["a"]), 5.0, None, CFG) == []
    assert [(lst.rec_id, lst.shown_ts) for lst in lists] == [("r1", 0.0)]


def test_more_than_max_open_lists_closes_the_oldest() -> None:
    cfg = AttributionConfig(max_open_lists=2)
    lists = _shown(("r1", ["a"], 0.0), ("r2", ["b"], 1.0), cfg=cfg)
    closed = show(lists, _rec("r3", ["c"]), 2.0, None, cfg)
    assert [r.rec_id for r in closed] == ["r1"]
    assert [lst.rec_id for lst in lists] == ["r2", "r3"]


def test_a_new_list_closes_expired_ones() -> None:
    lists = _shown(("r1", ["a"], 0.0), ("r2", ["b"], 100.0))
    closed = show(lists, _rec("r3", ["c"]), 100.0 + CFG.window_s, None, CFG)
    assert [r.rec_id for r in closed] == ["r1"]


def test_the_list_reward_carries_the_lists_policy_and_context() -> None:
    lists: deque[ShownList] = deque()
    show(lists, _rec("r1", ["a"]), 0.0, [1.0, 0.0, 1.0], CFG)
    fixed = ServedPolicy(reranker="mmr", arm="mmr:1", trade_off=1.0)  # mode, segment: defaults
    show(lists, _rec("r2", ["b"], policy=fixed), 0.0, None, CFG)
    first, second = _close_all(lists)
    assert first == ListReward(
        rec_id="r1",
        arm="mmr:0.7",
        segment="h1-e0-new",
        mode="bandit",
        reward=0.0,
        context=[1.0, 0.0, 1.0],
    )
    assert (second.arm, second.segment, second.mode, second.context) == (
        "mmr:1",
        "all",
        "fixed",
        None,
    )


# --- through the user-state step ---

ITEMS = ["a", "b", "c", "d"]


@pytest.fixture
def step() -> UserStep:
    catalog = Catalog(
        item_ids=ITEMS,
        titles=ITEMS,
        categories=["x", "x", "y", "y"],
        vectors=np.eye(4, dtype=np.float32),
        popularity=np.array([4.0, 3.0, 2.0, 1.0]),
    )
    policy = PolicyConfig.model_validate(
        {
            "attribution": {"max_open_lists": 1},
            "experiments": [
                {
                    "name": "div",
                    "salt": "s",
                    "variants": [{"name": "bandit", "weight": 1.0, "policy": "bandit"}],
                }
            ],
        }
    )
    return UserStep(catalog, Settings(brokers="x", catalog=None), policy)


def _trigger(event_id: str, item: str, ts: float, kind: str = "click", **extra) -> Trigger:
    return Trigger(_event(event_id, item, ts, kind, **extra), arrival_ts=ts)


def _recommend(request: RankRequest, items: list[str], arm: str = "mmr:0.7") -> Shown:
    """What the worker publishes for ``request`` (the ranker's stamp, picked arm)."""
    return Shown(
        Recommendation(
            rec_id=rec_id_for(request.request_id, request.user_id),
            request_id=request.explicit_request_id,
            user_id=request.user_id,
            items=[RankedItem(item_id=i, score=1.0, rank=n + 1) for n, i in enumerate(items)],
            experiment=request.experiment,
            policy=ServedPolicy(
                reranker=arm.split(":")[0],
                arm=arm,
                trade_off=float(arm.split(":")[1]),
                mode=request.policy.mode,
                segment=request.policy.segment,
            ),
            model_version="test",
            trigger_event_id=request.trigger_event_id,
            created_ts=request.created_ts,
            latency_ms=0.0,
        )
    )


def _apply(step: UserStep, state, item) -> tuple:
    """``step.apply`` without the item-signal records (test_signals.py checks those)."""
    state, outputs = step.apply(state, item)
    return state, [o for o in outputs if not isinstance(o, (CoVisit, Hit))]


def test_user_step_attributes_and_closes_lists(step: UserStep) -> None:
    state, (request,) = _apply(step, None, _trigger("e1", "a", 1000.0, "view"))
    assert isinstance(request, RankRequest)
    assert request.request_id == "evt:e1"
    assert request.experiment == ExperimentStamp(name="div", variant="bandit")
    assert request.policy.mode == "bandit"
    first = _recommend(request, ["b", "c"])

    state, outputs = _apply(step, state, first)
    assert outputs == []
    assert (state.open_lists[0].shown_ts, state.open_lists[0].context) == (1000.0, request.context)

    click = _trigger("e2", "b", 1100.0, rec_id=first.rec.rec_id)
    state, outputs = _apply(step, state, click)
    outcome, second_request = outputs
    assert isinstance(outcome, Outcome)
    assert (outcome.rec_id, outcome.item_id, outcome.attributed_by) == (
        first.rec.rec_id,
        "b",
        "rec_id",
    )
    assert outcome.experiment == request.experiment
    assert isinstance(second_request, RankRequest)

    # max_open_lists=1: the next list closes the first, with the click's reward.
    state, outputs = _apply(step, state, _recommend(second_request, ["c", "d"], arm="dpp:0.6"))
    assert outputs == [
        ListReward(
            rec_id=first.rec.rec_id,
            arm="mmr:0.7",
            segment=request.policy.segment,
            mode="bandit",
            reward=pytest.approx(0.3),
            context=request.context,
        )
    ]

    # A replayed event changes nothing and emits nothing.
    events = state.events
    state, outputs = _apply(step, state, click)
    assert outputs == []
    assert state.events == events

    # An event past the window closes the open list before it asks for a new one.
    state, outputs = _apply(step, state, _trigger("e3", "d", 1100.0 + 2 * 1800.0))
    closed, third_request = outputs
    assert isinstance(closed, ListReward)
    expected = (rec_id_for("evt:e2", "u1"), "dpp:0.6", 0.0)
    assert (closed.rec_id, closed.arm, closed.reward) == expected
    assert isinstance(third_request, RankRequest)


# --- the bandit step ---


def _reward(arm: str, reward: float, segment: str = "h1-e0-new", context=None) -> ListReward:
    return ListReward(
        rec_id=f"r-{arm}-{reward}",
        arm=arm,
        segment=segment,
        mode="bandit",
        reward=reward,
        context=context,
    )


def test_bandit_step_updates_the_policy_of_its_key() -> None:
    step = BanditStep(PolicyConfig())
    rewards = [_reward("mmr:0.7", 0.3), _reward("mmr:0.7", 1.0), _reward("dpp:0.6", 0.0)]
    state = None
    for r in rewards:
        assert step.key(r) == "h1-e0-new"
        state, published = step(state, r)
    assert isinstance(published, BanditState)
    assert published.key == "h1-e0-new"
    assert published.updates == 3
    assert state.pulls["mmr:0.7"] == 2
    stats = published.stats["mmr:0.7"]
    assert (stats.pulls, stats.reward_sum, stats.mean_reward) == (
        2,
        pytest.approx(1.3),
        pytest.approx(0.65),
    )
    assert published.stats["dpp:0.6"].pulls == 1
    restored = policy_from_state(parse(BanditState, published.to_bytes()))
    assert restored.pulls == state.pulls
    assert restored.reward_sum == state.reward_sum


def test_bandit_step_ignores_an_arm_it_does_not_know() -> None:
    step = BanditStep(PolicyConfig())
    state, _ = step(None, _reward("mmr:0.7", 1.0))
    state, published = step(state, _reward("category_cap:0.2", 1.0))
    assert published.updates == 1
    assert state.updates == 1


def test_bandit_step_uses_one_global_linucb_with_the_context() -> None:
    step = BanditStep(PolicyConfig.model_validate({"bandit": {"policy": "linucb"}}))
    reward = _reward("mmr:0.4", 1.0, context=[1.0, 0.0, 1.0])
    assert step.key(reward) == "global"
    state, published = step(None, reward)
    assert published.key == "global"
    assert state._b[state.arms.index("mmr:0.4")].tolist() == [1.0, 0.0, 1.0]


def test_a_click_that_beats_its_list_is_credited_when_the_list_arrives() -> None:
    """events and recommendations are two topics: the click may be read first."""
    from streams.attribution import claim_early

    open_lists: deque[ShownList] = deque()
    early: deque[Event] = deque()
    click = _event("e1", "a", 10.0, rec_id="r1")
    assert attribute(open_lists, click, CFG, early) == ([], [], [])
    assert list(early) == [click]
    show(open_lists, _rec("r1", ["a", "b"]), 9.0, None, CFG)
    (outcome,), _ = claim_early(open_lists, early, CFG)
    assert outcome.rec_id == "r1" and outcome.attributed_by == "rec_id"
    assert not early and open_lists[-1].reward == pytest.approx(0.3)
    # Once credited, the same click replayed is not credited again.
    assert attribute(open_lists, click, CFG, early)[0] == []


def test_early_events_are_bounded() -> None:
    cfg = AttributionConfig(max_early_events=3)
    early: deque[Event] = deque()
    for i in range(10):
        attribute(deque(), _event(f"e{i}", "a", float(i), rec_id=f"r{i}"), cfg, early)
    assert [e.event_id for e in early] == ["e7", "e8", "e9"]


# --- latest wins inside one input batch ---


def _requests(outputs: list[list]) -> list[str]:
    return [o.request_id for out in outputs for o in out if isinstance(o, RankRequest)]


def test_of_a_users_events_in_one_batch_only_the_newest_asks_for_a_list(step) -> None:
    """The state applies every event; only the last event of the batch triggers a
    request, and explicit requests are always answered, with the state they saw."""
    from streams import metrics
    from streams.contracts import RecommendationRequest
    from streams.dataflow import _UserLogic

    ask = Trigger(RecommendationRequest(request_id="ask-1", user_id="u1", k=3), arrival_ts=2.5)
    batch = [_trigger("e1", "a", 1.0), _trigger("e2", "b", 2.0), ask, _trigger("e3", "c", 3.0)]
    before = metrics.SUPERSEDED_TRIGGERS._value.get()
    logic = _UserLogic(step, 0.0, None)
    outputs, _ = logic.on_batch(batch)
    assert _requests(outputs) == ["ask-1", "evt:e3"]
    asked = next(o for o in outputs[2] if isinstance(o, RankRequest))
    assert asked.sequence == ["a", "b"]
    assert [i for i, _ in logic.state.sequence] == ["a", "b", "c"]
    # The co-visit and hit records of every event still go to the item signals.
    assert any(isinstance(o, (CoVisit, Hit)) for o in outputs[1])
    assert metrics.SUPERSEDED_TRIGGERS._value.get() - before == 2


def test_without_latest_wins_every_event_asks_for_a_list(step) -> None:
    from streams.dataflow import _UserLogic

    step.settings = step.settings.model_copy(update={"latest_wins": False})
    logic = _UserLogic(step, 0.0, None)
    outputs, _ = logic.on_batch([_trigger("e1", "a", 1.0), _trigger("e2", "b", 2.0)])
    assert _requests(outputs) == ["evt:e1", "evt:e2"]
