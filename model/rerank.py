"""Diversity rerankers behind one interface.

A reranker turns relevance scores and item vectors into an ordered list of
``k`` positions, trading relevance for diversity with one parameter in [0, 1]
(1 = pure relevance order). ``Reranker.rerank`` validates the inputs and
owns the contract; subclasses implement ``_rerank``.

A trade-off weighs relevance against cosine similarity, so its effect depends
on the scale of the scores. :func:`standardise` takes that scale out (the
scores minus their maximum, over their standard deviation across the list's
candidates): the fusion ranker's lists are reranked on it
(``model.ranker.Ranker(standardise=True)``), because the online fusion
learner sharpens its logits as it learns, which on raw scores silently
turned the diversity down (the demo's ILD gain over the relevance order fell
from +10.9% with the learner off to +5.4% with it on, at the same arm).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "Reranker",
    "RelevanceOnly",
    "MMR",
    "DPP",
    "PinnedMMR",
    "PinnedDPP",
    "Calibrated",
    "CategoryCap",
    "LongTailQuota",
    "RERANKERS",
    "get_reranker",
    "intra_list_diversity",
    "standardise",
]


def standardise(scores: np.ndarray) -> np.ndarray:
    """``(scores - max) / std`` over the list's candidates (float64): the scale every
    reranker reads; the order is kept. Constant or single scores come back as zeros.

    >>> standardise(np.array([3.0, 1.0, 2.0])).round(3).tolist()
    [0.0, -2.449, -1.225]
    >>> standardise(np.array([5.0, 5.0])).tolist()
    [0.0, 0.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    spread = float(scores.std())
    top = float(scores.max())
    if not math.isfinite(spread) or spread <= 0.0:
        return np.zeros_like(scores) if math.isfinite(top) else scores
    return (scores - top) / spread


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) of L2-normalised ``vectors``; 0 below 2 items.

    >>> intra_list_diversity(np.eye(3))
    1.0
    """
    n = len(vectors)
    if n < 2:
        return 0.0
    sims = np.asarray(vectors, np.float64) @ np.asarray(vectors, np.float64).T
    return float(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))


class Reranker(ABC):
    """Base class: ``rerank(scores, vectors, k, trade_off) -> positions``."""

    name: str = "base"

    def rerank(
        self,
        scores: np.ndarray,
        vectors: np.ndarray,
        k: int,
        trade_off: float,
        categories: Sequence[str | None] | None = None,
        target_mix: Mapping[str, float] | None = None,
        long_tail: Sequence[bool] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Indices into ``scores`` of the chosen ``min(k, n)`` items, in list order.

        ``scores``: (n,) relevance; ``vectors``: (n, d) L2-normalised item
        vectors (cosine similarity = dot product); ``trade_off`` in [0, 1];
        ``categories``: each candidate's category (None = unknown), used by the
        category-aware rerankers; ``target_mix``: the user's category weights
        (calibration's target distribution); ``long_tail``: whether each
        candidate is a long-tail item (``Catalog.long_tail``), read by the
        exposure-aware rerankers (``uses_long_tail``; None = unknown).
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or np.ndim(vectors) != 2 or len(scores) != len(vectors):
            raise ValueError(
                f"scores (n,) and vectors (n, d) must agree, got {scores.shape}, {vectors.shape}"
            )
        if not 0.0 <= trade_off <= 1.0:
            raise ValueError(f"trade_off must be in [0, 1], got {trade_off}")
        k = min(int(k), len(scores))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        if categories is not None and len(categories) != len(scores):
            raise ValueError(f"categories has {len(categories)} entries for {len(scores)} items")
        if long_tail is not None:
            long_tail = np.asarray(long_tail, dtype=bool)
            if long_tail.shape != scores.shape:
                raise ValueError(f"long_tail has {len(long_tail)} entries for {len(scores)} items")
        keep = self._reachable(scores, k, trade_off)
        if keep is not None:  # rerank the items that can be picked, map back
            scores, vectors = scores[keep], np.asarray(vectors)[keep]
            categories = None if categories is None else [categories[i] for i in keep.tolist()]
            long_tail = None if long_tail is None else long_tail[keep]
        # float32, as the catalog stores them: a cosine needs no more, and MMR's
        # product per step reads half the memory (4,000 online-retail fusion
        # lists came out identical to float64's, 5% faster).
        vectors = np.asarray(vectors, dtype=np.float32)
        self._categories = list(categories) if categories is not None else [None] * len(scores)
        self._target_mix = dict(target_mix or {})
        self._long_tail = long_tail
        out = np.asarray(self._rerank(scores, vectors, k, trade_off), dtype=np.int64)
        assert len(out) == k and len(set(out.tolist())) == k, "reranker broke its contract"
        return out if keep is None else keep[out]

    #: Whether ``rerank`` reads ``categories`` (the ranker builds them only then).
    uses_categories: bool = False
    #: Whether ``rerank`` reads ``long_tail`` (the ranker passes it only then).
    uses_long_tail: bool = False

    def _reachable(self, scores: np.ndarray, k: int, trade_off: float) -> np.ndarray | None:
        """The only candidates this reranker can pick (ascending indices), or None for
        all: a hook for rerankers that can rule items out before the costly part."""
        return None

    @abstractmethod
    def _rerank(
        self, scores: np.ndarray, vectors: np.ndarray, k: int, trade_off: float
    ) -> np.ndarray: ...


class RelevanceOnly(Reranker):
    """Top-k by score (ties by input order): the no-diversity reference."""

    name = "relevance"

    def _rerank(self, scores, vectors, k, trade_off):
        return np.argsort(-scores, kind="stable")[:k]


class MMR(Reranker):
    """Maximal Marginal Relevance (Carbonell and Goldstein, 1998).

    Greedy: next = argmax  lambda * rel(i) - (1 - lambda) * max_{j chosen} sim(i, j).
    lambda = 1 is the relevance order; lambda = 0 picks the most relevant item
    first, then always the item least similar to what is already chosen.

    >>> v = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    >>> MMR().rerank(np.array([0.9, 0.8, 0.5]), v, 2, 1.0).tolist()
    [0, 1]
    >>> MMR().rerank(np.array([0.9, 0.8, 0.5]), v, 2, 0.3).tolist()
    [0, 2]
    """

    name = "mmr"
    #: How many of the most relevant items are taken first, in relevance order
    #: (1 = plain MMR, whose first pick is the most relevant item anyway).
    pinned = 1

    def _reachable(self, scores, k, trade_off):
        return _reachable(scores, k, trade_off)

    def _rerank(self, scores, vectors, k, trade_off):
        chosen = _head(scores, self.pinned, k)
        max_sim = np.max(vectors[chosen] @ vectors.T, axis=0)
        relevance = trade_off * scores
        penalty = 1.0 - trade_off
        for _ in range(k - len(chosen)):
            gain = relevance - penalty * max_sim
            gain[chosen] = -np.inf  # a few indices: cheaper than a mask per step
            nxt = int(np.argmax(gain))
            chosen.append(nxt)
            np.maximum(max_sim, vectors @ vectors[nxt], out=max_sim)
        return np.array(chosen)


def _reachable(scores: np.ndarray, k: int, trade_off: float) -> np.ndarray | None:
    """The candidates MMR can pick at all (ascending indices), or None to keep all.

    At every step one of the ``k`` most relevant items is still available, with
    a gain of at least ``lambda * rel_k - (1 - lambda)`` (similarities are
    cosines, at most 1); an item's gain is at most ``lambda * rel + (1 -
    lambda)``. So an item more than ``2 (1 - lambda) / lambda`` below the k-th
    relevance is never picked, and leaving it out changes no list while MMR
    then compares a few dozen candidates instead of hundreds.
    """
    n = len(scores)
    if trade_off <= 0.0 or n <= 2 * k:
        return None
    kth = np.partition(scores, n - k)[n - k]
    # A hair wider than the bound, for float rounding of the cosines.
    floor = kth - 2.001 * (1.0 - trade_off) / trade_off
    keep = np.flatnonzero(scores >= floor)
    return keep if len(keep) < n else None


def _head(scores: np.ndarray, pinned: int, k: int) -> list[int]:
    """The ``max(1, min(pinned, k))`` most relevant items, in order (ties by input order)."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[: max(1, min(pinned, k))]]


class PinnedMMR(MMR):
    """MMR below a relevance head: the two most relevant items come first, in
    relevance order, and MMR fills the rest, penalising similarity to them too.

    Why: NDCG (and a shopper's first glance) weighs the top positions most,
    while ILD counts every pair of the list alike; keeping the head as the
    ranker ordered it and diversifying the tail buys diversity where it costs
    the least relevance. On online-retail P1 it roughly halves the NDCG cost of
    a given ILD gain against plain MMR (docs/eval/fusion sweep).

    >>> v = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    >>> PinnedMMR().rerank(np.array([0.9, 0.8, 0.5]), v, 3, 0.0).tolist()
    [0, 1, 2]
    """

    name = "mmr_pinned"
    pinned = 2


class DPP(Reranker):
    """Fast greedy MAP inference for a DPP (Chen, Zhang and Zhou, NeurIPS 2018).

    Kernel ``L = diag(r) S diag(r)`` with ``S`` the cosine similarity of the
    item vectors (shifted to [0, 1] so ``L`` stays positive semi-definite) and
    ``r = exp(alpha * score)``, ``alpha = trade_off / (2 (1 - trade_off))``
    (the paper's relevance/diversity trade-off). Each step adds the item with
    the largest marginal gain in ``log det L_Y``, updating the Cholesky factor
    incrementally: O(k n) per step instead of a determinant per candidate.
    ``window``: the sliding-window variant for long lists, where only the last
    ``window`` chosen items must be diverse. ``trade_off = 1`` is the relevance order.

    >>> v = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    >>> DPP().rerank(np.array([0.9, 0.8, 0.5]), v, 2, 0.5).tolist()
    [0, 2]
    """

    name = "dpp"
    #: How many of the most relevant items are forced as the first picks, in
    #: relevance order (1 = plain greedy MAP, whose first pick is the most relevant).
    pinned = 1

    def __init__(self, window: int | None = None, eps: float = 1e-10) -> None:
        if window is not None and window < 2:
            raise ValueError(f"window must be >= 2 (or None), got {window}")
        self.window = window
        self.eps = eps

    def _rerank(self, scores, vectors, k, trade_off):
        if trade_off >= 1.0:
            return np.argsort(-scores, kind="stable")[:k]
        alpha = trade_off / (2.0 * (1.0 - trade_off))
        # Centre the scores so exp() cannot overflow; a common factor only
        # scales every determinant and does not change the argmax.
        r = np.exp(alpha * (scores - scores.max()))
        n = len(scores)

        def kernel_row(j: int) -> np.ndarray:
            sim = (vectors @ vectors[j] + 1.0) / 2.0
            return r[j] * r * sim

        chosen: list[int] = []
        cis = np.zeros((k, n))
        di2 = r * r  # diag(L): S_ii = 1
        available = np.ones(n, dtype=bool)
        # The first pick maximises det L_{i} = r_i^2, i.e. the most relevant
        # item (at trade_off 0 all tie, and relevance breaks the tie); pinned
        # items are forced picks, so the ones after them are diverse from them too.
        head = _head(scores, self.pinned, k)
        j = head[0]
        while True:
            chosen.append(j)
            available[j] = False
            if len(chosen) == k:
                break
            if self.window and len(chosen) >= self.window:
                # Sliding window: only the last window - 1 chosen items (j
                # included) constrain the next pick; rebuild their factor.
                cis, di2 = self._refactor(chosen[1 - self.window :], kernel_row, r, n, k)
            else:
                m = len(chosen) - 1
                e = (kernel_row(j) - cis[:m].T @ cis[:m, j]) / math.sqrt(max(di2[j], self.eps))
                cis[m] = e
                di2 = di2 - e * e
            if len(chosen) < len(head):
                j = head[len(chosen)]
                continue
            gains = np.where(available, di2, -np.inf)
            j = int(np.argmax(gains))
            if gains[j] <= self.eps:
                # Every remaining item is (numerically) spanned by the chosen
                # ones: fill the list by relevance.
                rest = [i for i in np.argsort(-scores, kind="stable") if available[i]]
                chosen += [int(i) for i in rest[: k - len(chosen)]]
                break
        return np.array(chosen)

    def _refactor(self, items, kernel_row, r, n, k):
        """Cholesky state for ``items`` alone (the sliding window), from scratch."""
        cis = np.zeros((k, n))
        di2 = r * r
        for m, j in enumerate(items):
            e = (kernel_row(j) - cis[:m].T @ cis[:m, j]) / math.sqrt(max(di2[j], self.eps))
            cis[m] = e
            di2 = di2 - e * e
        return cis, di2


class PinnedDPP(DPP):
    """The DPP below a relevance head: the two most relevant items are forced
    as the first picks, in relevance order (see :class:`PinnedMMR` for why).

    >>> v = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    >>> PinnedDPP().rerank(np.array([0.9, 0.8, 0.5]), v, 3, 0.1).tolist()
    [0, 1, 2]
    """

    name = "dpp_pinned"
    pinned = 2


class Calibrated(Reranker):
    """Calibrated recommendations (Steck, RecSys 2018), greedy.

    Maximises ``(1 - w) * sum(score) - w * KL(p || q~)`` where ``p`` is the
    user's category mix, ``q`` the list's category mix (each item counting
    once), ``q~ = (1 - a) q + a p`` with ``a = 0.01`` so the KL is finite,
    and ``w = 1 - trade_off``. Without a target mix (cold user) or categories
    it is the relevance order.
    """

    name = "calibrated"
    uses_categories = True
    smoothing = 0.01

    def _rerank(self, scores, vectors, k, trade_off):
        cats = self._categories
        target = {c: w for c, w in self._target_mix.items() if w > 0}
        if trade_off >= 1.0 or not target or all(c is None for c in cats):
            return np.argsort(-scores, kind="stable")[:k]
        total = sum(target.values())
        p = {c: w / total for c, w in target.items()}
        w_kl = 1.0 - trade_off
        # KL(p || q~) after adding a candidate depends only on its category,
        # so each step computes it once per distinct category, not per item.
        kinds = sorted({c for c in cats if c is not None})
        kind_of = np.array([kinds.index(c) if c is not None else -1 for c in cats])
        chosen: list[int] = []
        available = np.ones(len(scores), dtype=bool)
        mass: Counter[str] = Counter()
        rel = 0.0
        for _ in range(k):
            kl_same = self._kl(p, mass)
            kl_kind = np.array([self._kl(p, mass + Counter({c: 1.0})) for c in kinds])
            kl = np.where(kind_of >= 0, kl_kind[np.maximum(kind_of, 0)], kl_same)
            value = (1 - w_kl) * (rel + scores) - w_kl * kl
            value[~available] = -np.inf
            best = int(np.argmax(value))
            chosen.append(best)
            available[best] = False
            rel += scores[best]
            if cats[best] is not None:
                mass[cats[best]] += 1.0
        return np.array(chosen)

    def _kl(self, p: Mapping[str, float], mass: Mapping[str, float]) -> float:
        total = sum(mass.values())
        a = self.smoothing
        kl = 0.0
        for c, pc in p.items():
            q = mass.get(c, 0.0) / total if total else 0.0
            kl += pc * math.log(pc / ((1 - a) * q + a * pc))
        return kl


class CategoryCap(Reranker):
    """At most ``c`` items per category, in relevance order.

    ``c = max(1, round(1 + trade_off * (k - 1)))``: trade_off 1 allows k of one
    category (the relevance order), 0 allows one per category. Items without
    a category are never capped. When the cap cannot fill the list, the best
    remaining items fill it.
    """

    name = "category_cap"
    uses_categories = True

    def _rerank(self, scores, vectors, k, trade_off):
        cap = max(1, round(1 + trade_off * (k - 1)))
        order = np.argsort(-scores, kind="stable")
        used: Counter[str] = Counter()
        chosen: list[int] = []
        for i in order:
            c = self._categories[i]
            if c is None or used[c] < cap:
                chosen.append(int(i))
                if c is not None:
                    used[c] += 1
                if len(chosen) == k:
                    return np.array(chosen)
        taken = set(chosen)
        chosen += [int(i) for i in order if i not in taken][: k - len(chosen)]
        return np.array(chosen)


class LongTailQuota(Reranker):
    """A minimum share of long-tail items in every prefix of the list.

    ``q = 1 - trade_off``. The most relevant item leads; from position 2 on,
    whenever fewer than ``floor(q * p)`` of the first ``p`` items are long-tail
    (``long_tail``, from ``Catalog.long_tail``: outside the most popular 20%),
    position ``p`` takes the most relevant long-tail candidate left, otherwise
    the most relevant candidate left. So the long tail gets its share near the
    top too, where the exposure (``1/log2(rank+1)``) is, not only at the end
    of the list, while every pick within a group keeps the relevance order;
    it is ranked group fairness (Zehlike et al., FA*IR, CIKM 2017) with a fixed
    proportion instead of FA*IR's significance test, and scale-free: the
    scores only order the candidates. ``trade_off = 1`` is the relevance
    order, 0 fills positions 2..k with long-tail items. Without ``long_tail``
    (or when no candidate is long-tail) it is the relevance order.

    >>> v = np.eye(4)
    >>> tail = [False, False, True, True]
    >>> LongTailQuota().rerank(np.array([0.9, 0.8, 0.5, 0.4]), v, 3, 0.5, long_tail=tail).tolist()
    [0, 2, 1]
    >>> LongTailQuota().rerank(np.array([0.9, 0.8, 0.5, 0.4]), v, 3, 1.0, long_tail=tail).tolist()
    [0, 1, 2]
    """

    name = "long_tail"
    uses_long_tail = True

    def _rerank(self, scores, vectors, k, trade_off):
        order = np.argsort(-scores, kind="stable")
        if trade_off >= 1.0 or self._long_tail is None:
            return order[:k]
        is_tail = self._long_tail[order]
        if not is_tail.any():
            return order[:k]
        share = 1.0 - trade_off
        tail = order[is_tail].tolist()  # long-tail candidates, most relevant first
        chosen: list[int] = []
        taken = np.zeros(len(scores), dtype=bool)
        n_tail = next_any = next_tail = 0
        for p in range(1, k + 1):
            need = math.floor(share * p + 1e-9) if p > 1 else 0
            while next_tail < len(tail) and taken[tail[next_tail]]:
                next_tail += 1
            if n_tail < need and next_tail < len(tail):
                j = tail[next_tail]
            else:
                while taken[order[next_any]]:
                    next_any += 1
                j = int(order[next_any])
            chosen.append(j)
            taken[j] = True
            n_tail += int(self._long_tail[j])
        return np.array(chosen)


RERANKERS: dict[str, type[Reranker]] = {
    "relevance": RelevanceOnly,
    "mmr": MMR,
    "dpp": DPP,
    "mmr_pinned": PinnedMMR,
    "dpp_pinned": PinnedDPP,
    "calibrated": Calibrated,
    "category_cap": CategoryCap,
    "long_tail": LongTailQuota,
}


def get_reranker(name: str) -> Reranker:
    """A reranker by name, or a ValueError listing the known names."""
    try:
        return RERANKERS[name]()
    except KeyError:
        raise ValueError(f"unknown reranker {name!r}; known: {', '.join(RERANKERS)}") from None
