"""Per-list quality metrics and their aggregation (EVALUATION.md).

Every metric scores one ranked list: ``ranked`` is the recommended item codes,
best first; ``relevant`` is the item codes that count as hits. Accuracy metrics
use binary relevance. :class:`QualityAccumulator` averages the per-list values
over the test cases of a protocol run and adds catalog coverage, which is a
property of all lists together.

Diversity is measured with :class:`ReferenceEmbeddings`, the pretrained
all-MiniLM-L6-v2 vectors of the item text, never a system's own model, so a
model cannot grade itself.

Exposure (:mod:`streams.exposure`, the same definitions the worker exports
live): each listed item gets its position weight ``1/log2(rank+1)``, summed
over all lists of a run. The summary has the exposure share per category
(``exposure_by_category@k``), the Gini coefficient of that exposure across
categories and across candidate items (zeros included), and the share that
goes to long-tail items (outside the most popular 20% by training
interactions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from corpus.metrics import hr_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from streams.exposure import gini, long_tail_mask, position_weights

if TYPE_CHECKING:
    from corpus.datasets import Item
    from model.encoder import Encoder

__all__ = [
    "hr_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "ild",
    "category_count",
    "novelty",
    "catalog_coverage",
    "long_tail_items",
    "QualityAccumulator",
    "ReferenceEmbeddings",
]


def ild(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance ``1 - cos`` between the rows (L2-normalised).

    NaN for fewer than two rows (no pair to compare).

    >>> v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> round(ild(v), 4)  # pairs: 1, 0, 1
    0.6667
    """
    n = len(vectors)
    if n < 2:
        return float("nan")
    gram = vectors @ vectors.T
    return float((n * (n - 1) - (gram.sum() - np.trace(gram))) / (n * (n - 1)))


def category_count(categories: Sequence[str | None]) -> int:
    """Distinct known categories in a list (None = unknown, not counted).

    >>> category_count(["a", "b", "a", None])
    2
    """
    return len({c for c in categories if c is not None})


def novelty(ranked: Sequence[int], item_users: np.ndarray, n_users: int) -> float:
    """Mean ``-log2(share of users who interacted)`` over the list's items.

    ``item_users[i]`` is how many distinct users interacted with item ``i``; an
    item no one touched counts as one user.

    >>> novelty([0, 1], np.array([4, 0]), n_users=8)  # (-log2(4/8) - log2(1/8)) / 2
    2.0
    """
    counts = np.maximum(np.asarray(item_users)[np.asarray(ranked, dtype=np.int64)], 1)
    if len(counts) == 0:
        return float("nan")
    return float(np.mean(-np.log2(counts / n_users)))


def catalog_coverage(lists: Sequence[Sequence[int]], n_candidates: int) -> float:
    """Distinct items recommended over all lists, over the number of candidate items.

    >>> catalog_coverage([[0, 1], [1, 2]], n_candidates=6)
    0.5
    """
    seen = {int(i) for ranked in lists for i in ranked}
    return len(seen) / n_candidates if n_candidates else 0.0


def long_tail_items(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """Per item code, True when outside the most popular 20% by training interactions.

    ``train_items`` is the item code of every training interaction (repeats count).

    >>> long_tail_items(np.array([0, 0, 2, 1, 0, 2]), n_items=5).tolist()
    [False, True, True, True, True]
    """
    counts = np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items)
    return long_tail_mask(counts)


class QualityAccumulator:
    """Collects per-list metrics over a protocol run and summarises them.

    ``vectors`` (rows = item codes, L2-normalised reference embeddings) enables
    ILD; ``categories`` (per item code) enables category coverage and the
    exposure per category and its Gini; ``long_tail`` (bool per item code, see
    :func:`long_tail_items`) enables the long-tail share of the exposure. The
    Gini across items always comes. NaN values (a list too short for ILD) are
    left out of the mean.

    >>> acc = QualityAccumulator(k=2)
    >>> acc.add([0, 1], [1], item_users=np.array([2, 2, 1]), n_users=4)
    >>> acc.add([2, 0], [1], item_users=np.array([2, 2, 1]), n_users=4)
    >>> s = acc.summary(n_candidates=3)
    >>> s["n"], s["recall@2"], round(s["ndcg@2"], 4), s["mrr@2"], s["catalog_coverage"]
    (2, 0.5, 0.3155, 0.25, 1.0)
    """

    def __init__(
        self,
        k: int = 10,
        vectors: np.ndarray | None = None,
        categories: Sequence[str | None] | None = None,
        long_tail: Sequence[bool] | np.ndarray | None = None,
    ) -> None:
        self.k = k
        self.vectors = vectors
        self.categories = categories
        self.long_tail = None if long_tail is None else np.asarray(long_tail, dtype=bool)
        self._values: dict[str, list[float]] = {}
        self._recommended: set[int] = set()
        self._weights = position_weights(k)
        self._exposure = np.zeros(0, dtype=np.float64)  # per item code, grown on demand

    def _put(self, name: str, value: float) -> None:
        self._values.setdefault(name, []).append(value)

    def add(
        self,
        ranked: Sequence[int] | np.ndarray,
        relevant: Sequence[int] | np.ndarray,
        item_users: np.ndarray,
        n_users: int,
    ) -> None:
        """Score one list; ``item_users``/``n_users`` are the novelty counts at that time."""
        k = self.k
        ranked = np.asarray(ranked, dtype=np.int64)[:k]
        self._put(f"hr@{k}", hr_at_k(ranked, relevant, k))
        self._put(f"recall@{k}", recall_at_k(ranked, relevant, k))
        self._put(f"ndcg@{k}", ndcg_at_k(ranked, relevant, k))
        self._put(f"mrr@{k}", mrr_at_k(ranked, relevant, k))
        self._put(f"novelty@{k}", novelty(ranked, item_users, n_users))
        if self.vectors is not None:
            self._put(f"ild@{k}", ild(self.vectors[ranked]))
        if self.categories is not None:
            categories = [self.categories[i] for i in ranked]
            self._put(f"category_coverage@{k}", category_count(categories))
        self._recommended.update(ranked.tolist())
        if len(ranked):
            top = int(ranked.max()) + 1
            if top > len(self._exposure):
                grown = np.zeros(max(top, 2 * len(self._exposure)), dtype=np.float64)
                grown[: len(self._exposure)] = self._exposure
                self._exposure = grown
            np.add.at(self._exposure, ranked, self._weights[: len(ranked)])

    @property
    def n(self) -> int:
        return len(self._values.get(f"hr@{self.k}", ()))

    def summary(self, n_candidates: int) -> dict[str, float]:
        """Means of the per-list metrics, catalog coverage and ``n`` (test cases)."""
        out: dict[str, float] = {"n": self.n}
        for name, values in self._values.items():
            arr = np.asarray(values, dtype=np.float64)
            arr = arr[~np.isnan(arr)]
            out[name] = float(arr.mean()) if len(arr) else float("nan")
        out["catalog_coverage"] = catalog_coverage([sorted(self._recommended)], n_candidates)
        out.update(self.exposure(n_candidates))
        return out

    def exposure(self, n_candidates: int) -> dict[str, float | dict[str, float]]:
        """The exposure metrics (see the module's docstring); empty before any list.

        ``exposure_gini_item@k`` counts ``n_candidates`` items, the unexposed
        ones as zeros; ``exposure_gini_category@k`` every category of
        ``categories`` (unknown ones left out of it).
        """
        k, exposure = self.k, self._exposure
        total = float(exposure.sum())
        if total <= 0.0:
            return {}
        exposed = exposure[exposure > 0]
        zeros = np.zeros(max(0, n_candidates - len(exposed)))
        out: dict[str, float | dict[str, float]] = {
            f"exposure_gini_item@{k}": gini(np.concatenate([exposed, zeros]))
        }
        if self.long_tail is not None:
            n = min(len(exposure), len(self.long_tail))
            out[f"long_tail_share@{k}"] = float(exposure[:n][self.long_tail[:n]].sum()) / total
        if self.categories is not None:
            by_category = dict.fromkeys(sorted({c for c in self.categories if c is not None}), 0.0)
            for code in np.flatnonzero(exposure).tolist():
                c = self.categories[code]
                if c is not None:
                    by_category[c] += float(exposure[code])
            out[f"exposure_gini_category@{k}"] = gini(list(by_category.values()))
            out[f"exposure_by_category@{k}"] = {c: v / total for c, v in by_category.items()}
        return out


class ReferenceEmbeddings:
    """Pretrained all-MiniLM-L6-v2 vectors of item text, computed once per item id.

    The encoder is loaded on first use (it imports torch), so building one is cheap.
    """

    def __init__(self, items: Mapping[str, Item], encoder: Encoder | None = None) -> None:
        self.items = items
        self._encoder = encoder
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, item_ids: Sequence[str]) -> np.ndarray:
        """Float32 ``(len(item_ids), 384)``, rows L2-normalised, in ``item_ids`` order."""
        missing = list(dict.fromkeys(i for i in item_ids if i not in self._cache))
        if missing:
            if self._encoder is None:
                from model.encoder import Encoder

                self._encoder = Encoder()
            texts = [self.items[i].title if i in self.items else i for i in missing]
            vectors = self._encoder.encode(texts)
            self._cache.update(zip(missing, vectors, strict=True))
        if not item_ids:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[i] for i in item_ids]).astype(np.float32)
