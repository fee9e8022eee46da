"""Exposure (streams.exposure): position weights, the long-tail split, Gini, the rolling window."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import evaluation.quality
import model.rerank
import streams.exposure
from streams.catalog import Catalog
from streams.exposure import RollingExposure, gini, long_tail_mask, position_weights


def test_position_weights_are_the_ndcg_discount() -> None:
    assert position_weights(4).tolist() == pytest.approx(
        [1 / math.log2(r + 1) for r in (1, 2, 3, 4)]
    )
    assert position_weights(0).shape == (0,)


@pytest.mark.parametrize("n", [1, 4, 5, 9, 10, 11, 3185])
def test_the_head_is_the_ceil_of_a_fifth(n: int) -> None:
    rng = np.random.default_rng(n)
    counts = rng.integers(0, 50, n)
    mask = long_tail_mask(counts)
    head = np.flatnonzero(~mask)
    assert len(head) == math.ceil(0.2 * n)
    # Every head item is at least as popular as every long-tail item.
    if mask.any():
        assert counts[head].min() >= counts[mask].max()


def test_long_tail_ties_go_to_the_lower_index_and_share_is_checked() -> None:
    assert long_tail_mask([1, 1, 1, 1, 1]).tolist() == [False, True, True, True, True]
    assert long_tail_mask([], 0.2).shape == (0,)
    assert not long_tail_mask([3, 2, 1], head_share=1.0).any()
    with pytest.raises(ValueError, match="head_share"):
        long_tail_mask([1, 2], head_share=1.5)


def test_gini_by_hand() -> None:
    assert gini([]) == gini([0, 0]) == gini([2, 2, 2]) == 0.0
    assert gini([0, 0, 0, 5]) == pytest.approx(0.75)
    # Mean absolute difference / (2 * mean): pairs of [1, 3]: |1-3| = 2 -> 2*2/(2*2*2*2)
    assert gini([1, 3]) == pytest.approx(0.25)
    assert gini([3, 1]) == gini([1, 3])  # order does not matter
    x = np.random.default_rng(0).random(50)
    brute = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(brute)


def _batch(lists, long_tail, categories):
    """Long-tail share and category Gini of ``lists`` from scratch."""
    kinds = sorted({c for c in categories if c is not None})
    by_kind = dict.fromkeys(kinds, 0.0)
    total = tail = 0.0
    for rows in lists:
        for w, r in zip(position_weights(len(rows)), rows, strict=True):
            total += w
            tail += w * bool(long_tail[r])
            if categories[r] is not None:
                by_kind[categories[r]] += w
    return (tail / total if total else 0.0), gini(list(by_kind.values()))


def test_rolling_window_matches_a_recount_of_its_last_lists() -> None:
    rng = np.random.default_rng(3)
    n = 30
    long_tail = rng.random(n) < 0.7
    categories = [None if i % 7 == 0 else f"c{i % 4}" for i in range(n)]
    roll = RollingExposure(long_tail, categories, window=25)
    lists = []
    for step in range(600):  # past the periodic recount (10 x window)
        rows = rng.choice(n, size=int(rng.integers(1, 8)), replace=False)
        lists.append(rows)
        roll.add(rows)
        if step % 37 == 0 or step > 590:
            share, g = _batch(lists[-25:], long_tail, categories)
            assert roll.long_tail_share == pytest.approx(share, abs=1e-9)
            assert roll.category_gini == pytest.approx(g, abs=1e-9)
    assert len(roll) == 25
    roll.clear()
    assert len(roll) == 0 and roll.long_tail_share == 0.0 and roll.category_gini == 0.0


def test_rolling_window_without_categories() -> None:
    roll = RollingExposure([True, False], None, window=3)
    roll.add([1, 0])
    assert roll.long_tail_share == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert roll.category_gini == 0.0


def test_the_catalog_flags_its_long_tail_by_popularity() -> None:
    ids = [f"i{i}" for i in range(10)]
    popularity = np.array([5, 50, 1, 0, 7, 40, 2, 2, 3, 9], dtype=np.float32)
    catalog = Catalog(ids, ids, [None] * 10, np.eye(10, dtype=np.float32), popularity)
    assert np.flatnonzero(~catalog.long_tail).tolist() == [1, 5]  # the two most popular
    assert catalog.long_tail.dtype == bool and catalog.long_tail.sum() == 8


@pytest.mark.parametrize(
    "module", [streams.exposure, model.rerank, evaluation.quality], ids=lambda m: m.__name__
)
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_rolling_distinct_items_is_the_windows_set_of_rows() -> None:
    """The worker's catalog-coverage gauge: distinct rows over the window's lists,
    kept incrementally (against the set rebuilt from the window each time)."""
    from collections import deque

    rng = np.random.default_rng(4)
    roll = RollingExposure(rng.random(50) < 0.5, None, window=30)
    window: deque[list[int]] = deque(maxlen=30)
    for _ in range(700):  # past the periodic rebuild (every 10 windows)
        rows = rng.choice(50, size=int(rng.integers(1, 11)), replace=False).tolist()
        roll.add(rows)
        window.append(rows)
        assert roll.distinct_items == len({r for lst in window for r in lst})
