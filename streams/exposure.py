"""Exposure: how much attention a list gives each item, category and the long tail.

Pure numpy (no model, no Bytewax), shared by the offline evaluation
(:class:`evaluation.quality.QualityAccumulator`), the catalog's long-tail
flag (:attr:`streams.catalog.Catalog.long_tail`) and the worker's rolling gauges
(:class:`RollingExposure`), so the three measure the same thing.

- Position weight of rank ``r`` (1-based): ``1 / log2(r + 1)``, the NDCG
  discount: the first slot weighs 1, the tenth 0.29.
- Long tail: every item outside the most popular ``HEAD_SHARE`` (20%) of the
  items, by interaction counts (``ceil(0.2 n)`` items are the head; ties go to
  the lower index, so the split is deterministic).
- Gini coefficient of the exposure over a population (categories or items),
  zeros included: 0 = every member gets the same exposure, towards 1 = one
  member gets it all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

__all__ = [
    "HEAD_SHARE",
    "position_weights",
    "long_tail_mask",
    "gini",
    "RollingExposure",
]

#: Share of the items (the most popular) that make up the head; the rest is the long tail.
HEAD_SHARE = 0.2


def position_weights(n: int) -> np.ndarray:
    """``1 / log2(rank + 1)`` for ranks ``1..n``.

    >>> position_weights(3).round(4).tolist()
    [1.0, 0.6309, 0.5]
    """
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def long_tail_mask(
    counts: Sequence[float] | np.ndarray, head_share: float = HEAD_SHARE
) -> np.ndarray:
    """True for the items outside the ``ceil(head_share * n)`` most popular (by ``counts``).

    Ties at the boundary go to the lower index (stable order), so the head has
    exactly ``ceil(head_share * n)`` items.

    >>> long_tail_mask([5, 0, 9, 1, 1]).tolist()  # head = the top ceil(0.2 * 5) = 1 item
    [True, True, False, True, True]
    >>> long_tail_mask([3, 3, 3, 3, 3, 3]).tolist()  # ceil(1.2) = 2: ties by index
    [False, False, True, True, True, True]
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")
    n_head = math.ceil(round(head_share * len(counts), 9))
    mask = np.ones(len(counts), dtype=bool)
    mask[np.argsort(-counts, kind="stable")[:n_head]] = False
    return mask


def gini(values: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative ``values`` (every member counts, zeros too).

    0 for an equal split (or nothing at all), ``(n - 1) / n`` when one member has all.

    >>> gini([1, 1, 1, 1]), gini([0, 0, 0, 4]), round(gini([1, 2, 3, 4]), 4)
    (0.0, 0.75, 0.25)
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), float(x.sum()) if len(x) else 0.0
    if n == 0 or total <= 0.0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks * x).sum() / (n * total) - (n + 1) / n)


class RollingExposure:
    """Position-weighted exposure of the last ``window`` lists, updated per list.

    ``long_tail`` (bool per catalog row) and ``categories`` (per catalog row,
    None = unknown) come from the catalog. Running sums are kept, so adding a
    list (and dropping the oldest) costs O(k); the Gini over categories is
    O(categories). Every category of the catalog counts in the Gini, also the
    ones no recent list showed.

    >>> roll = RollingExposure([True, False, True], ["a", "a", "b"], window=2)
    >>> roll.add([0, 1]); round(roll.long_tail_share, 4)  # 1 / (1 + 0.6309)
    0.6131
    >>> roll.add([1]); roll.add([1]); roll.long_tail_share  # [0, 1] has left the window
    0.0
    >>> roll.category_gini  # all exposure on "a", none on "b"
    0.5
    >>> roll.distinct_items  # row 1 is the only one the window still shows
    1
    """

    def __init__(
        self,
        long_tail: Sequence[bool] | np.ndarray,
        categories: Sequence[str | None] | None = None,
        window: int = 1000,
    ) -> None:
        self.long_tail = np.asarray(long_tail, dtype=bool)
        cats = list(categories) if categories is not None else [None] * len(self.long_tail)
        kinds = sorted({c for c in cats if c is not None})
        index = {c: i for i, c in enumerate(kinds)}
        # -1 = unknown category: counted in the totals, never in the Gini.
        self._kind = np.array([index.get(c, -1) if c is not None else -1 for c in cats], np.int64)
        self._by_kind = np.zeros(len(kinds), dtype=np.float64)
        # Lists per catalog row in the window, and how many rows have any: the
        # catalog coverage without a set over every list of the window per list.
        self._shown = np.zeros(len(self.long_tail), dtype=np.int64)
        self.distinct_items = 0
        self._lists: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.window = window
        self._total = 0.0
        self._tail = 0.0
        self._added = 0

    def __len__(self) -> int:
        return len(self._lists)

    def _apply(self, rows: np.ndarray, weights: np.ndarray, sign: float) -> None:
        self._total += sign * float(weights.sum())
        self._tail += sign * float(weights[self.long_tail[rows]].sum())
        kinds = self._kind[rows]
        known = kinds >= 0
        np.add.at(self._by_kind, kinds[known], sign * weights[known])
        distinct = np.unique(rows)
        before = self._shown[distinct] > 0
        np.add.at(self._shown, rows, int(sign))
        after = self._shown[distinct] > 0
        self.distinct_items += int(after.sum()) - int(before.sum())

    def add(self, rows: Sequence[int] | np.ndarray) -> None:
        """One list's catalog rows, in list order (rank 1 first)."""
        rows = np.asarray(rows, dtype=np.int64)
        weights = position_weights(len(rows))
        self._lists.append((rows, weights))
        self._apply(rows, weights, 1.0)
        if len(self._lists) > self.window:
            old_rows, old_weights = self._lists.popleft()
            self._apply(old_rows, old_weights, -1.0)
        self._added += 1
        if self._added % (10 * self.window) == 0:  # float drift of the running sums
            lists = list(self._lists)
            self.clear()
            for r, w in lists:
                self._lists.append((r, w))
                self._apply(r, w, 1.0)

    def clear(self) -> None:
        self._lists.clear()
        self._by_kind[:] = 0.0
        self._shown[:] = 0
        self.distinct_items = 0
        self._total = self._tail = 0.0

    @property
    def long_tail_share(self) -> float:
        """Share of the window's exposure on long-tail items (0 with no lists)."""
        return max(0.0, self._tail) / self._total if self._total > 1e-12 else 0.0

    @property
    def category_gini(self) -> float:
        """Gini coefficient of the window's exposure across the catalog's categories."""
        return gini(np.maximum(self._by_kind, 0.0))
