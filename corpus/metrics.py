"""The ranking metrics of EVALUATION.md: one definition for evaluation and training.

The per-list functions (``hr_at_k``, ``recall_at_k``, ``ndcg_at_k``, ``mrr_at_k``)
score one ranked list against its relevant items; :func:`target_metrics` scores
a batch of queries with one target each from the target's rank alone, as the
trainers' validation does over the full catalog (``model.finetune``,
``model.sequence``). With one target the two agree:

>>> ndcg_at_k([5, 3, 9], [3], k=10) == target_metrics(np.array([1]), k=10)["ndcg@10"]
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["hr_at_k", "recall_at_k", "ndcg_at_k", "mrr_at_k", "target_metrics"]


def _hits(
    ranked: Sequence[int] | np.ndarray, relevant: Sequence[int] | np.ndarray, k: int
) -> np.ndarray:
    return np.isin(np.asarray(ranked)[:k], np.asarray(relevant))


def hr_at_k(ranked: Sequence[int], relevant: Sequence[int], k: int = 10) -> float:
    """1 when any relevant item is in the top ``k``, else 0.

    >>> hr_at_k([5, 3, 9], [9, 1], k=3), hr_at_k([5, 3, 9], [9, 1], k=2)
    (1.0, 0.0)
    """
    return float(_hits(ranked, relevant, k).any())


def recall_at_k(ranked: Sequence[int], relevant: Sequence[int], k: int = 10) -> float:
    """Hits in the top ``k`` divided by ``min(k, |relevant|)``; equals HR for one target.

    >>> recall_at_k([5, 3, 9], [9, 3, 1, 2], k=3)  # 2 hits / min(3, 4)
    0.6666666666666666
    >>> recall_at_k([5, 3, 9], [7], k=3)
    0.0
    """
    n_relevant = len(np.unique(np.asarray(relevant)))
    if n_relevant == 0:
        return 0.0
    return float(_hits(ranked, relevant, k).sum()) / min(k, n_relevant)


def ndcg_at_k(ranked: Sequence[int], relevant: Sequence[int], k: int = 10) -> float:
    """Binary-relevance NDCG: sum of ``1/log2(rank+1)`` over hits, over the ideal DCG.

    The ideal DCG puts ``min(k, |relevant|)`` hits at the top, so with one target
    this is ``1/log2(rank+1)``.

    >>> ndcg_at_k([5, 3, 9], [3], k=10)  # rank 2
    0.6309297535714575
    >>> round(ndcg_at_k([5, 3, 9], [5, 9], k=10), 4)  # (1 + 1/2) / (1 + 1/log2(3))
    0.9197
    """
    n_relevant = len(np.unique(np.asarray(relevant)))
    if n_relevant == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits = _hits(ranked, relevant, k)
    return float(discounts[: len(hits)][hits].sum() / discounts[: min(k, n_relevant)].sum())


def mrr_at_k(ranked: Sequence[int], relevant: Sequence[int], k: int = 10) -> float:
    """``1/rank`` of the first relevant item in the top ``k``, 0 when none is.

    >>> mrr_at_k([5, 3, 9], [9, 3], k=10)
    0.5
    """
    hits = np.flatnonzero(_hits(ranked, relevant, k))
    return 1.0 / (int(hits[0]) + 1) if len(hits) else 0.0


def target_metrics(rank: np.ndarray, k: int = 10) -> dict[str, float]:
    """NDCG@k and Recall@k of queries with one target each, from the target's
    0-based rank among all items (how many items score above it).

    >>> target_metrics(np.array([0, 1, 10]), k=10)["recall@10"]
    0.6666666666666666
    """
    rank = np.asarray(rank, dtype=np.float64)
    hit = rank < k
    return {
        f"ndcg@{k}": float(np.mean(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0))),
        f"recall@{k}": float(np.mean(hit)),
    }
