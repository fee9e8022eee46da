"""Candidate retrieval: popularity for cold users, inner product for warm ones,
the user's own repeat items, and their merge.

Requests are built by the dataflow's own ``UserStep`` from a user state, so
these tests cover the path from state to candidates as the pipeline runs it."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from streams.catalog import Catalog
from streams.dataflow import UserStep
from streams.retrieval import Candidate, merge
from streams.retrieval import retrieve as retrieve_batch
from streams.settings import Settings
from streams.state import UserState

ITEMS = ["i0", "i1", "i2", "i3", "i4", "i5"]
POPULARITY = [1.0, 5.0, 3.0, 5.0, 0.0, 3.0]
POPULAR_ORDER = ["i1", "i3", "i2", "i5", "i0", "i4"]  # ties keep catalog order


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def catalog() -> Catalog:
    # Generic directions: no two items tie for any user vector used below.
    vectors = _unit(
        [[1, 0, 0], [0.9, 0.3, 0], [0, 1, 0.2], [0.5, 0.5, 0.2], [-0.1, 0.2, 1], [0.2, -0.3, 0.9]]
    )
    return Catalog(ITEMS, ITEMS, [None] * 6, vectors, np.array(POPULARITY))


def candidates(
    state: UserState, catalog: Catalog, m: int, filter_seen: bool, repeat_n: int
) -> list[Candidate]:
    """The merged candidates of the request the dataflow builds for ``state``."""
    step = UserStep(catalog, Settings(filter_seen=filter_seen))
    request = step.rank_request(state, "u", "r", "r", None, None, 0.0)
    request = request.model_copy(update={"m": m})
    (found,) = retrieve_batch(catalog, [request], repeat_n)
    return [
        Candidate(
            catalog.item_ids[row],
            float(score),
            source,
            {"repeat_count": float(n), "repeat_age_s": float(age)} if n > 0 else {},
        )
        for row, score, source, n, age in zip(
            found.rows.tolist(),
            found.scores.tolist(),
            found.sources,
            found.repeat_count.tolist(),
            found.repeat_age_s.tolist(),
            strict=True,
        )
    ]


def retrieve(state: UserState, catalog: Catalog, m: int, filter_seen: bool) -> list[Candidate]:
    """The ann (or popular) candidates alone."""
    return candidates(state, catalog, m, filter_seen, repeat_n=0)


def repeat(state: UserState, catalog: Catalog, n: int) -> list[Candidate]:
    """The repeat candidates alone (no ann/popular ones, repeats allowed)."""
    return [c for c in candidates(state, catalog, 0, False, n) if c.source == "repeat"]


def _seen(items) -> OrderedDict:
    """Counts for ``items`` (the seen set is the key set of the counts)."""
    return OrderedDict((i, (1.0, 0.0)) for i in items)


def _warm(vector: list[float], seen: list[str] = ()) -> UserState:
    return UserState(
        embedding=np.asarray(vector, dtype=np.float32),
        counts=_seen(seen),
    )


def _expected_ann(catalog: Catalog, vector: list[float]) -> list[str]:
    user = np.asarray(vector, np.float32) / np.linalg.norm(vector)
    scores = catalog.vectors @ user
    assert len(np.unique(scores.round(4))) == len(scores), "test data must not tie"
    return [ITEMS[i] for i in np.argsort(-scores)]


def test_cold_user_gets_most_popular_first_ties_in_catalog_order(catalog) -> None:
    out = retrieve(UserState(), catalog, m=6, filter_seen=True)
    assert [c.item_id for c in out] == POPULAR_ORDER
    assert {c.source for c in out} == {"popular"}
    assert [c.score for c in out] == [1.0, 1.0, 0.6, 0.6, 0.2, 0.0]


def test_cold_user_with_seen_items(catalog) -> None:
    state = UserState(counts=_seen(["i1", "i2"]))
    assert [c.item_id for c in retrieve(state, catalog, 3, filter_seen=True)] == [
        "i3",
        "i5",
        "i0",
    ]
    assert [c.item_id for c in retrieve(state, catalog, 3, filter_seen=False)] == [
        "i1",
        "i3",
        "i2",
    ]


@pytest.mark.parametrize("vector", [[1, 0, 0], [0, 1, 0.1], [0.1, 0.2, 3.0], [2, 1, 0.5]])
def test_warm_user_gets_nearest_by_inner_product(catalog, vector) -> None:
    out = retrieve(_warm(vector), catalog, m=6, filter_seen=True)
    assert [c.item_id for c in out] == _expected_ann(catalog, vector)
    assert {c.source for c in out} == {"ann"}
    scores = [c.score for c in out]
    assert scores == sorted(scores, reverse=True)
    user = np.asarray(vector) / np.linalg.norm(vector)
    np.testing.assert_allclose(
        scores, [float(catalog.vectors[ITEMS.index(c.item_id)] @ user) for c in out], atol=1e-5
    )


def test_warm_user_scales_do_not_matter(catalog) -> None:
    """The streamed sum is unnormalised; retrieval uses its direction only."""
    small = retrieve(_warm([0.01, 0.02, 0]), catalog, 6, True)
    big = retrieve(_warm([100.0, 200.0, 0]), catalog, 6, True)
    assert [c.item_id for c in small] == [c.item_id for c in big]


def test_zero_embedding_falls_back_to_popular(catalog) -> None:
    out = retrieve(_warm([0, 0, 0]), catalog, 3, True)
    assert [c.item_id for c in out] == POPULAR_ORDER[:3]


def test_seen_items_removed_when_filter_on(catalog) -> None:
    vector = [1, 0, 0]
    nearest = _expected_ann(catalog, vector)
    seen = nearest[:2]
    out = retrieve(_warm(vector, seen), catalog, m=3, filter_seen=True)
    assert [c.item_id for c in out] == nearest[2:5]
    assert not set(seen) & {c.item_id for c in out}


def test_seen_items_kept_when_filter_off(catalog) -> None:
    vector = [1, 0, 0]
    nearest = _expected_ann(catalog, vector)
    out = retrieve(_warm(vector, nearest[:2]), catalog, m=3, filter_seen=False)
    assert [c.item_id for c in out] == nearest[:3]


@pytest.mark.parametrize("state", [UserState(), _warm([0, 1, 0])], ids=["cold", "warm"])
@pytest.mark.parametrize("m", [1, 3, 5])
def test_exactly_m_when_catalog_is_big_enough(catalog, state, m: int) -> None:
    state.counts = _seen(["i0"])
    out = retrieve(state, catalog, m, filter_seen=True)
    assert len(out) == m
    assert len({c.item_id for c in out}) == m


@pytest.mark.parametrize("state", [UserState(), _warm([0, 1, 0])], ids=["cold", "warm"])
def test_fewer_when_catalog_is_too_small(catalog, state) -> None:
    assert len(retrieve(state, catalog, 10, filter_seen=True)) == 6
    state.counts = _seen(["i0", "i4", "not-in-catalog"])
    out = retrieve(state, catalog, 10, filter_seen=True)
    assert sorted(c.item_id for c in out) == ["i1", "i2", "i3", "i5"]


def _with_counts(counts: dict[str, tuple[float, float]], vector=None) -> UserState:
    state = UserState(
        embedding=None if vector is None else np.asarray(vector, dtype=np.float32),
        counts=OrderedDict(counts),
    )
    state.last_ts = max(ts for _, ts in counts.values())
    return state


def test_repeat_is_the_most_interacted_items_ties_most_recent_then_id(catalog) -> None:
    state = _with_counts(
        {"i0": (1.0, 5.0), "i1": (3.0, 1.0), "i2": (1.0, 9.0), "i3": (1.0, 9.0), "zz": (9.0, 9.0)}
    )
    out = repeat(state, catalog, 3)
    # "zz" is not in the catalog: the ranker could not score it.
    assert [c.item_id for c in out] == ["i1", "i2", "i3"]
    assert {c.source for c in out} == {"repeat"} and {c.score for c in out} == {0.0}
    assert repeat(state, catalog, 0) == []


def test_merge_keeps_one_candidate_per_item_with_joined_sources() -> None:
    ann = [
        Candidate(item_id="a", score=0.9, source="ann"),
        Candidate(item_id="b", score=0.5, source="ann", features={"x": 1.0}),
    ]
    rep = [
        Candidate(item_id="b", score=0.0, source="repeat", features={"y": 2.0}),
        Candidate(item_id="c", score=0.0, source="repeat"),
    ]
    out = merge(ann, rep, rep)
    assert [(c.item_id, c.source, c.score) for c in out] == [
        ("a", "ann", 0.9),
        ("b", "ann+repeat", 0.5),
        ("c", "repeat", 0.0),
    ]
    assert out[1].features == {"x": 1.0, "y": 2.0}


def test_candidates_merge_ann_and_repeat_with_repeat_features(catalog) -> None:
    vector = [1, 0, 0]
    nearest = _expected_ann(catalog, vector)
    state = _with_counts({nearest[0]: (2.0, 40.0), nearest[5]: (1.0, 100.0)}, vector)
    out = candidates(state, catalog, m=3, filter_seen=False, repeat_n=5)
    assert [(c.item_id, c.source) for c in out] == [
        (nearest[0], "ann+repeat"),
        (nearest[1], "ann"),
        (nearest[2], "ann"),
        (nearest[5], "repeat"),
    ]
    by_item = {c.item_id: c for c in out}
    assert by_item[nearest[0]].features == {"repeat_count": 2.0, "repeat_age_s": 60.0}
    assert by_item[nearest[5]].features == {"repeat_count": 1.0, "repeat_age_s": 0.0}
    assert by_item[nearest[0]].score == retrieve(state, catalog, 1, False)[0].score
    assert by_item[nearest[5]].score == 0.0 and by_item[nearest[1]].features == {}


def test_no_repeat_candidates_when_seen_items_are_filtered(catalog) -> None:
    state = _with_counts({"i0": (2.0, 40.0), "i1": (1.0, 100.0)}, [1, 0, 0])
    out = candidates(state, catalog, m=6, filter_seen=True, repeat_n=5)
    assert {c.source for c in out} == {"ann"}
    assert not {"i0", "i1"} & {c.item_id for c in out}
