"""Candidate retrieval: popularity for cold users, inner product for warm ones."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from streams.catalog import Catalog
from streams.retrieval import retrieve
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


def _warm(vector: list[float], seen: list[str] = ()) -> UserState:
    return UserState(
        embedding=np.asarray(vector, dtype=np.float32),
        seen=OrderedDict.fromkeys(seen),
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
    state = UserState(seen=OrderedDict.fromkeys(["i1", "i2"]))
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
    state.seen = OrderedDict.fromkeys(["i0"])
    out = retrieve(state, catalog, m, filter_seen=True)
    assert len(out) == m
    assert len({c.item_id for c in out}) == m


@pytest.mark.parametrize("state", [UserState(), _warm([0, 1, 0])], ids=["cold", "warm"])
def test_fewer_when_catalog_is_too_small(catalog, state) -> None:
    assert len(retrieve(state, catalog, 10, filter_seen=True)) == 6
    state.seen = OrderedDict.fromkeys(["i0", "i4", "not-in-catalog"])
    out = retrieve(state, catalog, 10, filter_seen=True)
    assert sorted(c.item_id for c in out) == ["i1", "i2", "i3", "i5"]
