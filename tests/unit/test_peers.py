"""The ALS and BPR peers (evaluation/peers.py) on tiny synthetic data.

Two groups of users buy from two disjoint groups of items; every user has
bought all but one item of their group. A factorisation that learns the
groups ranks the user's own group first, and with the history masked puts
the one item they have not bought at the top.
"""

from __future__ import annotations

import numpy as np
import pytest

from corpus.datasets import Dataset, Interactions, Item
from evaluation import Events, Popularity, ReferenceEmbeddings, TrainSet, evaluate_p2
from evaluation.peers import ALS, BPR, PEERS, peer_methods

DAY = 86_400.0
N_USERS, GROUP = 40, 6  # items 0-5 are group 0's, 6-11 group 1's


def _group_events(day: float = 0.0) -> tuple[Events, np.ndarray]:
    """Every user buys their group's items but one; returns (events, missing item)."""
    users, items, missing = [], [], np.zeros(N_USERS, dtype=np.int64)
    for u in range(N_USERS):
        group = u % 2
        missing[u] = group * GROUP + (u // 2) % GROUP
        for i in range(group * GROUP, (group + 1) * GROUP):
            if i != missing[u]:
                users.append(u)
                items.append(i)
    order = np.random.default_rng(0).permutation(len(users))
    ts = day * DAY + np.arange(len(users), dtype=np.float64)
    users_a, items_a = np.array(users)[order], np.array(items)[order]
    return Events(users_a, items_a, ts), missing


def _train(events: Events, n_users: int = N_USERS) -> TrainSet:
    return TrainSet([f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(2 * GROUP)], events)


def _small(name: str):
    """Two factors (two groups) and one thread: on tiny data, OpenMP's per-iteration
    synchronisation of a second thread costs seconds on a busy machine."""
    if name == "als":
        return ALS(factors=2, iterations=15, num_threads=1)
    return BPR(factors=2, learning_rate=0.05, iterations=200, num_threads=1)


@pytest.mark.parametrize("name", PEERS)
def test_learns_the_groups(name: str) -> None:
    events, missing = _group_events()
    model = _small(name).fit(_train(events))
    users = np.arange(N_USERS)
    scores = model.scores(users)
    assert scores.shape == (N_USERS, 2 * GROUP)
    own = [np.arange(g * GROUP, (g + 1) * GROUP) for g in (0, 1)]
    # Unmasked: the six items of the user's group fill the top six.
    top = model.recommend_many(users, k=GROUP)
    in_group = [set(t.tolist()) == set(own[u % 2].tolist()) for u, t in enumerate(top)]
    assert np.mean(in_group) >= 0.95
    # Masked: the one group item the user has not bought comes first.
    history = [np.setdiff1d(own[u % 2], [missing[u]]) for u in users]
    first = [r[0] for r in model.recommend_many(users, k=1, exclude=history)]
    assert np.mean(np.array(first) == missing) >= 0.95


def test_p1_fits_once_on_every_training_event() -> None:
    events, _ = _group_events()
    model = ALS(factors=8, iterations=5).fit(_train(events))
    model.scores(np.arange(3))
    assert model._fitted == len(events)
    fitted = model._fitted_model
    model.scores(np.arange(3))
    assert model._fitted_model is fitted  # no second fit without new data


def _p2_model(name: str):
    """A P2-style model: fitted on nothing, fed day 0, then a new user on day 1."""
    model = _small(name)
    model.popularity = Popularity(window_days=30)
    model.fit(_train(Events.empty(), N_USERS + 1))
    events, _ = _group_events(day=0.0)
    model.update(events)
    return model


@pytest.mark.parametrize("name", PEERS)
def test_p2_refits_when_the_day_changes(name: str) -> None:
    model = _p2_model(name)
    newcomer = N_USERS
    # Nothing is fitted before the first query: day 0 has not ended yet.
    assert model._due == 0
    # Day 1: a new user buys three of group 1's items (twice each, on one timestamp).
    bought = np.array([6, 7, 8, 6, 7, 8])
    model.update(Events(np.full(6, newcomer), bought, np.full(6, DAY + 10.0)))
    # The refit covers day 0 only (everything before the new day's first events).
    n_day0 = N_USERS * (GROUP - 1)
    assert model._due == n_day0
    scores = model.scores(np.array([newcomer]), now=DAY + 20.0)[0]
    assert model._fitted == n_day0
    if name == "als":
        # ALS folds the newcomer in against the day-0 item factors: group 1 first.
        assert set(np.argsort(-scores)[:GROUP].tolist()) == set(range(GROUP, 2 * GROUP))
        assert model._folded == n_day0 + 6
    else:
        # BPR has no fold-in: the newcomer, unseen at the refit, gets popularity.
        expected = model.popularity.scores(np.array([newcomer]), DAY + 20.0)[0]
        np.testing.assert_array_equal(scores, expected)
    # Later the same day: no refit.
    fitted = model._fitted_model
    model.update(Events(np.array([0]), np.array([1]), np.array([DAY + 30.0])))
    model.scores(np.array([0]), now=DAY + 40.0)
    assert model._fitted_model is fitted
    # The next day's first events make a refit due over everything before them.
    model.update(Events(np.array([1]), np.array([7]), np.array([2 * DAY + 5.0])))
    model.scores(np.array([newcomer]), now=2 * DAY + 6.0)
    assert model._fitted_model is not fitted
    assert model._fitted == n_day0 + 7
    assert model._has_factors[newcomer]


def test_als_is_reproducible() -> None:
    events, _ = _group_events()
    a = ALS(factors=8, iterations=5).fit(_train(events)).scores(np.arange(N_USERS))
    b = ALS(factors=8, iterations=5).fit(_train(events)).scores(np.arange(N_USERS))
    np.testing.assert_array_equal(a, b)


def test_binary_weighting_ignores_counts() -> None:
    events, _ = _group_events()
    doubled = Events(
        np.concatenate([events.users, events.users]),
        np.concatenate([events.items, events.items]),
        np.concatenate([events.ts, events.ts + 1e6]),
    )
    once = ALS(factors=8, iterations=5, weighting="binary").fit(_train(events))
    twice = ALS(factors=8, iterations=5, weighting="binary").fit(_train(doubled))
    np.testing.assert_allclose(once.scores(np.arange(4)), twice.scores(np.arange(4)), atol=1e-5)
    with pytest.raises(ValueError):
        ALS(weighting="bm25")


class _FakeEncoder:
    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 4), dtype=np.float32)
        for n, text in enumerate(texts):
            out[n, sum(map(ord, text)) % 4] = 1.0
        return out


def _replay_dataset() -> Dataset:
    """Four days of two-group baskets: one basket per user per day, then a test day."""
    rng = np.random.default_rng(1)
    rows = []
    for day in range(5):
        for u in range(12):
            group = u % 2
            items = rng.choice(np.arange(group * GROUP, (group + 1) * GROUP), 3, replace=False)
            for i in items:
                rows.append((f"u{u}", f"i{i:02d}", day * DAY + 60.0 * u, f"b{day}-{u}"))
    rows.sort(key=lambda r: r[2])
    data = Interactions(
        event_id=[str(n) for n in range(len(rows))],
        user_id=[r[0] for r in rows],
        item_id=[r[1] for r in rows],
        type=["purchase"] * len(rows),
        ts=np.array([r[2] for r in rows]),
        price=[1.0] * len(rows),
        quantity=[1] * len(rows),
        basket=[r[3] for r in rows],
    )
    items = {i: Item(i, f"item {i}", None) for i in set(data.item_id)}
    return Dataset("test", data, items, [], {}, "0")


def test_p2_smoke_through_the_runner() -> None:
    data = _replay_dataset()
    emb = ReferenceEmbeddings(data.items, encoder=_FakeEncoder())
    methods = {"als": _small("als"), "bpr": _small("bpr")}
    res = evaluate_p2(data, methods, k=3, start=3 * DAY, embeddings=emb)
    for name in PEERS:
        every = res["all"][name]
        assert every["n"] == 24  # 12 users x days 3 and 4
        # Baskets are 3 of the user's group's 6 items: lists from the group hit.
        assert every["hr@3"] >= 0.9
        assert 0.0 <= res["new"][name].get("hr@3", 0.0) <= 1.0


def test_registered_for_streamrec_evaluate() -> None:
    from streamrec.evaluate import METHODS, _baselines

    assert {"als", "bpr"} <= set(METHODS)
    emb = ReferenceEmbeddings({}, encoder=_FakeEncoder())
    p1 = _baselines("leave-last-out", emb, ["als"])
    assert isinstance(p1["als"], ALS) and isinstance(p1["bpr"], BPR)
    assert p1["als"].popularity.window_days is None
    p2 = _baselines("prequential", emb, ["bpr"])
    assert p2["bpr"].popularity.window_days == 30
    assert "als" not in _baselines("leave-last-out", emb, ["popularity"])
    assert set(peer_methods("p1")) == set(PEERS)
