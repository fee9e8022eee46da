"""The diversity bandits: one contract over every policy, LinUCB's algebra, segments, the book."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import pickle
import random
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from model.bandit_book import PolicyBook
from streams.bandit import (
    POLICIES,
    DiversityPolicy,
    LinUCB,
    context_vector,
    make_policy,
    new_policy,
    policy_from_state,
    segment_of,
)
from streams.bandit.context import category_entropy
from streams.contracts import BanditState, DeadLetter, parse
from streams.experiments import BanditConfig, PolicyConfig
from streams.state import UserState

ARMS = ["mmr:1", "mmr:0.7", "mmr:0.4", "dpp:0.6"]
CONTEXT = np.array([1.0, 0.0, 1.0, 0.0, 1.0])

policy_names = pytest.mark.parametrize("name", sorted(POLICIES))


def _policy(name: str, arms: list[str] = ARMS, **params: object) -> DiversityPolicy:
    return POLICIES[name](arms, **params)


def _stats(policy: DiversityPolicy) -> tuple:
    return policy.updates, dict(policy.pulls), dict(policy.reward_sum)


def _train(policy: DiversityPolicy, arm: str, n: int = 100, context=CONTEXT) -> DiversityPolicy:
    """Teach ``policy`` that ``arm`` pays and every other arm does not."""
    for _ in range(n):
        for a in policy.arms:
            policy.update(a, 1.0 if a == arm else 0.0, context)
    return policy


# --- the contract, over every policy ---


@policy_names
def test_pull_returns_a_known_arm(name: str) -> None:
    policy = _policy(name, seed=3)
    rng = random.Random(0)
    picks = [policy.pull(CONTEXT, rng) for _ in range(50)]
    for i, arm in enumerate(picks):
        policy.update(arm, i % 3 / 2, CONTEXT)
    picks += [policy.pull(CONTEXT, rng) for _ in range(50)]
    assert set(picks) <= set(ARMS)


@policy_names
def test_update_of_an_unknown_arm_raises(name: str) -> None:
    policy = _policy(name)
    with pytest.raises(KeyError, match="unknown arm 'shuffle:0.5'"):
        policy.update("shuffle:0.5", 1.0, CONTEXT)
    assert policy.updates == 0


@policy_names
def test_rewards_are_clipped(name: str) -> None:
    policy = _policy(name)
    policy.update("mmr:1", 5.0, CONTEXT)
    policy.update("mmr:0.7", -2.0, CONTEXT)
    assert policy.reward_sum["mmr:1"] == 1.0
    assert policy.reward_sum["mmr:0.7"] == 0.0
    assert policy.mean_reward("mmr:1") == 1.0


@policy_names
def test_bookkeeping(name: str) -> None:
    policy = _policy(name)
    for arm, reward in [("mmr:1", 0.3), ("mmr:1", 0.5), ("dpp:0.6", 1.0), ("mmr:1", 0.1)]:
        policy.update(arm, reward, CONTEXT)
    assert policy.updates == 4
    assert policy.pulls == {"mmr:1": 3, "mmr:0.7": 0, "mmr:0.4": 0, "dpp:0.6": 1}
    assert policy.reward_sum["mmr:1"] == pytest.approx(0.9)
    assert policy.mean_reward("mmr:1") == pytest.approx(0.3)
    assert policy.mean_reward("dpp:0.6") == 1.0
    assert policy.mean_reward("mmr:0.7") == 0.0


@policy_names
def test_state_is_json_and_restores_an_equivalent_policy(name: str) -> None:
    policy = _policy(name, min_exploration=0.2, seed=5)
    rng = random.Random(1)
    for _ in range(60):
        arm = policy.pull(CONTEXT, rng)
        policy.update(arm, rng.random(), CONTEXT)
    state = json.loads(json.dumps(policy.to_state()))
    assert state["policy"] == name
    assert state["arms"] == ARMS
    assert state["updates"] == 60
    assert state["stats"]["mmr:1"] == {
        "pulls": policy.pulls["mmr:1"],
        "reward_sum": pytest.approx(policy.reward_sum["mmr:1"]),
        "mean_reward": pytest.approx(policy.mean_reward("mmr:1")),
    }

    restored = policy_from_state(_record(state))
    assert type(restored) is type(policy)
    assert restored.min_exploration == policy.min_exploration
    assert _stats(restored) == _stats(policy)
    assert restored.to_state() == policy.to_state()  # the sufficient statistics, exactly
    if name != "thompson":  # deterministic between updates: the same arms
        assert [restored.pull(CONTEXT, random.Random(9)) for _ in range(30)] == [
            policy.pull(CONTEXT, random.Random(9)) for _ in range(30)
        ]


def _record(state: dict, key: str = "all") -> BanditState:
    """The ``bandit-weights`` record of a policy's ``to_state()`` (ValueError if it is not one)."""
    return BanditState.model_validate({"key": key, "updated_ts": 0.0, **state})


class _Creates:
    """A pickle that would create ``path`` when loaded: what a crafted record could carry."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@policy_names
def test_a_crafted_pickle_in_a_bandit_record_runs_nothing(name: str, tmp_path) -> None:
    marker = tmp_path / "pwned"
    state = json.loads(json.dumps(_policy(name).to_state()))
    crafted = base64.b64encode(pickle.dumps(_Creates(str(marker)))).decode("ascii")
    for record in ({**state, "blob": crafted}, {"blob": crafted}, {**state, "params": crafted}):
        # Refused or the blob ignored: either way, nothing was unpickled.
        parsed = parse(BanditState, json.dumps({"key": "all", "updated_ts": 0.0, **record}))
        assert isinstance(parsed, DeadLetter)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            policy_from_state(_record(record))
    assert not marker.exists()


@pytest.mark.parametrize(
    "change",
    [
        {"policy": "os.system"},
        {"arms": []},
        {"min_exploration": "0.1"},
        {"params": {"beta": {"mmr:1": ["nan", 1]}, "n": 0, "counts": {}}},
        {"stats": {}},
    ],
)
def test_a_bandit_state_that_is_not_plain_numbers_is_refused(change: dict) -> None:
    state = {**json.loads(json.dumps(_policy("thompson").to_state())), **change}
    with pytest.raises((ValueError, KeyError, TypeError)):
        policy_from_state(_record(state))


@policy_names
def test_full_exploration_is_uniform(name: str) -> None:
    policy = _train(_policy(name, min_exploration=1.0), "mmr:0.4")
    rng = random.Random(2)
    counts = Counter(policy.pull(CONTEXT, rng) for _ in range(4000))
    assert chisquare([counts[a] for a in ARMS]).pvalue > 0.001


@policy_names
def test_without_exploration_a_policy_concentrates_on_the_better_arm(name: str) -> None:
    arms = ["good", "bad"]
    p_click = {"good": 0.8, "bad": 0.2}
    policy = _policy(name, arms, min_exploration=0.0, seed=11)
    rng, env = random.Random(4), random.Random(5)
    picks = []
    for _ in range(400):
        arm = policy.pull(CONTEXT, rng)
        policy.update(arm, float(env.random() < p_click[arm]), CONTEXT)
        picks.append(arm)
    assert picks[-100:].count("good") >= 90
    assert policy.mean_reward("good") > policy.mean_reward("bad")


@policy_names
@pytest.mark.parametrize("rate", [-0.1, 1.01, math.nan])
def test_invalid_min_exploration_raises(name: str, rate: float) -> None:
    with pytest.raises(ValueError, match="min_exploration"):
        _policy(name, min_exploration=rate)


@policy_names
def test_no_arms_raises(name: str) -> None:
    with pytest.raises(ValueError, match="at least one arm"):
        _policy(name, [])


@policy_names
def test_new_policy_follows_the_config(name: str) -> None:
    cfg = BanditConfig(policy=name, min_exploration=0.3, seed=7, ucb_delta=2.0, linucb_alpha=0.9)
    policy = new_policy(cfg, ARMS)
    assert type(policy) is POLICIES[name]
    assert (policy.arms, policy.min_exploration, policy.seed) == (ARMS, 0.3, 7)
    if name == "ucb":
        assert policy._policy.delta == 2.0
    if name == "linucb":
        assert policy.alpha == 0.9


def test_make_policy_of_an_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown bandit policy 'greedy'"):
        make_policy("greedy", ARMS)


# --- LinUCB ---


def test_linucb_inverse_matches_the_ridge_matrix() -> None:
    ridge, d = 2.0, 6
    policy = LinUCB(ARMS, ridge=ridge)
    gen = np.random.default_rng(0)
    seen: dict[str, list[tuple[np.ndarray, float]]] = {a: [] for a in ARMS[:3]}  # one arm unused
    for _ in range(300):
        arm = ARMS[int(gen.integers(3))]
        x, r = gen.normal(size=d), float(gen.random())
        policy.update(arm, r, x)
        seen[arm].append((x, r))
    for i, arm in enumerate(ARMS):
        xs = seen.get(arm, [])
        a = ridge * np.eye(d) + sum((np.outer(x, x) for x, _ in xs), np.zeros((d, d)))
        b = sum((r * x for x, r in xs), np.zeros(d))
        np.testing.assert_allclose(policy._a_inv[i], np.linalg.inv(a), atol=1e-10)
        np.testing.assert_allclose(policy._b[i], b, atol=1e-10)


def test_linucb_learns_a_context_dependent_best_arm() -> None:
    policy = LinUCB(["wide", "narrow"], min_exploration=0.0, alpha=0.1)
    young, old = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0])
    env = np.random.default_rng(1)
    for _ in range(200):
        policy.update("wide", float(env.random() < 0.8), young)
        policy.update("narrow", float(env.random() < 0.2), young)
        policy.update("wide", float(env.random() < 0.2), old)
        policy.update("narrow", float(env.random() < 0.8), old)
    rng = random.Random(0)
    assert {policy.pull(young, rng) for _ in range(20)} == {"wide"}
    assert {policy.pull(old, rng) for _ in range(20)} == {"narrow"}


def test_linucb_needs_a_context() -> None:
    policy = LinUCB(ARMS, min_exploration=0.0)
    with pytest.raises(ValueError, match="context"):
        policy.pull(None, random.Random(0))
    with pytest.raises(ValueError, match="context"):
        policy.update("mmr:1", 1.0, None)


# --- segments and context vectors ---

CFG = BanditConfig()  # history edges [3, 20], entropy edges [0.5, 1.2]
UNIFORM4 = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}


@pytest.mark.parametrize(
    ("state", "segment", "vector"),
    [
        (UserState(), "h0-e0-new", [1, 1, 0, 0, 1, 0, 0, 0]),
        (
            UserState(events=2, sessions=1, categories={"a": 3.0}),
            "h0-e0-new",
            [1, 1, 0, 0, 1, 0, 0, 0],
        ),
        (
            UserState(events=3, sessions=2, categories={"a": 1.0, "b": 1.0}),
            "h1-e1-ret",
            [1, 0, 1, 0, 0, 1, 0, 1],
        ),
        (
            UserState(events=19, sessions=1, categories=UNIFORM4),
            "h1-e2-new",
            [1, 0, 1, 0, 0, 0, 1, 0],
        ),
        (
            UserState(events=20, sessions=5, categories=UNIFORM4),
            "h2-e2-ret",
            [1, 0, 0, 1, 0, 0, 1, 1],
        ),
    ],
)
def test_segment_and_context_vector(state: UserState, segment: str, vector: list[int]) -> None:
    assert segment_of(state, CFG) == segment
    assert context_vector(state, CFG) == [float(v) for v in vector]


@pytest.mark.parametrize(
    ("features", "segment"),
    [(["history"], "h1"), (["returning", "entropy"], "ret-e1"), ([], "all")],
)
def test_segment_uses_only_the_configured_features(features: list[str], segment: str) -> None:
    cfg = BanditConfig(segment_features=features)
    state = UserState(events=5, sessions=2, categories={"a": 1.0, "b": 1.0})
    assert segment_of(state, cfg) == segment


def test_context_vector_layout_follows_the_bucket_edges() -> None:
    cfg = BanditConfig(history_buckets=[1, 2, 3], entropy_buckets=[0.1])
    x = context_vector(UserState(events=2, sessions=3, categories={"a": 1.0, "b": 1.0}), cfg)
    # [bias | history 0..3 | entropy 0..1 | returning]
    assert x == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_category_entropy() -> None:
    assert category_entropy(UserState(categories=UNIFORM4)) == pytest.approx(math.log(4))
    assert category_entropy(UserState(categories={"a": 2.0, "b": 0.0})) == 0.0
    assert category_entropy(UserState()) == 0.0


# --- the worker's policy book ---


def _published(policy: DiversityPolicy, key: str) -> BanditState:
    """The record as the worker reads it off ``bandit-weights``."""
    record = parse(BanditState, policy.state_record(key, 0.0).to_bytes())
    assert isinstance(record, BanditState), record
    return record


def test_book_picks_with_a_fresh_policy_before_any_state() -> None:
    book = PolicyBook(PolicyConfig(), seed=0)
    arms = [a.name for a in book.cfg.arms]
    assert {book.pick("h0-e0-new", None) for _ in range(20)} <= set(arms)


def test_book_keeps_the_newest_state_per_key() -> None:
    book = PolicyBook(PolicyConfig(), seed=0)
    newer = _train(_policy("ucb", min_exploration=0.0), "dpp:0.6", n=50)
    older = _train(_policy("ucb", min_exploration=0.0), "mmr:1", n=10)
    assert book.apply(_published(newer, "h1-e0-new"))
    assert not book.apply(_published(older, "h1-e0-new"))
    assert {book.pick("h1-e0-new", None) for _ in range(10)} == {"dpp:0.6"}
    # Another key is independent, and a state at least as new replaces the held one.
    assert book.apply(_published(older, "h0-e0-new"))
    assert {book.pick("h0-e0-new", None) for _ in range(10)} == {"mmr:1"}
    assert book.apply(_published(_train(older, "mmr:0.4", n=40), "h1-e0-new"))
    assert {book.pick("h1-e0-new", None) for _ in range(10)} == {"mmr:0.4"}


def test_book_uses_one_global_linucb() -> None:
    cfg = PolicyConfig.model_validate({"bandit": {"policy": "linucb", "min_exploration": 0.0}})
    book = PolicyBook(cfg, seed=0)
    assert book.key("h2-e1-ret") == "global"
    x = context_vector(UserState(events=4), cfg.bandit)
    assert book.pick("h1-e0-new", x) in {a.name for a in cfg.arms}
    trained = _train(LinUCB(ARMS, min_exploration=0.0), "mmr:0.7", n=30, context=np.array(x))
    assert book.apply(_published(trained, "global"))
    assert book.pick("h1-e0-new", x) == "mmr:0.7"
