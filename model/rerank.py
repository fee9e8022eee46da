"""Diversity rerankers behind one interface.

A reranker turns relevance scores and item vectors into an ordered list of
``k`` positions, trading relevance for diversity with one parameter in [0, 1]
(1 = pure relevance order). ``Reranker.rerank`` validates the inputs and
owns the contract; subclasses implement ``_rerank``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Reranker", "MMR", "RelevanceOnly", "RERANKERS", "get_reranker"]


class Reranker(ABC):
    """Base class: ``rerank(scores, vectors, k, trade_off) -> positions``."""

    name: str = "base"

    def rerank(
        self, scores: np.ndarray, vectors: np.ndarray, k: int, trade_off: float
    ) -> np.ndarray:
        """Indices into ``scores`` of the chosen ``min(k, n)`` items, in list order.

        ``scores``: (n,) relevance; ``vectors``: (n, d) L2-normalised item
        vectors (cosine similarity = dot product); ``trade_off`` in [0, 1].
        """
        scores = np.asarray(scores, dtype=np.float64)
        vectors = np.asarray(vectors, dtype=np.float64)
        if scores.ndim != 1 or vectors.ndim != 2 or len(scores) != len(vectors):
            raise ValueError(
                f"scores (n,) and vectors (n, d) must agree, got {scores.shape}, {vectors.shape}"
            )
        if not 0.0 <= trade_off <= 1.0:
            raise ValueError(f"trade_off must be in [0, 1], got {trade_off}")
        k = min(int(k), len(scores))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        out = np.asarray(self._rerank(scores, vectors, k, trade_off), dtype=np.int64)
        assert len(out) == k and len(set(out.tolist())) == k, "reranker broke its contract"
        return out

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

    def _rerank(self, scores, vectors, k, trade_off):
        n = len(scores)
        chosen = [int(np.argmax(scores))]
        max_sim = vectors @ vectors[chosen[0]]
        available = np.ones(n, dtype=bool)
        available[chosen[0]] = False
        for _ in range(k - 1):
            gain = trade_off * scores - (1.0 - trade_off) * max_sim
            gain[~available] = -np.inf
            nxt = int(np.argmax(gain))
            chosen.append(nxt)
            available[nxt] = False
            np.maximum(max_sim, vectors @ vectors[nxt], out=max_sim)
        return np.array(chosen)


RERANKERS: dict[str, type[Reranker]] = {"relevance": RelevanceOnly, "mmr": MMR}


def get_reranker(name: str) -> Reranker:
    """A reranker by name, or a ValueError listing the known names."""
    try:
        return RERANKERS[name]()
    except KeyError:
        raise ValueError(f"unknown reranker {name!r}; known: {', '.join(RERANKERS)}") from None
