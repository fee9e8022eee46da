"""Rank requests -> recommendation lists: score with the LM, rerank, stamp.

This is the whole in-process ranking path. The inference worker wraps it
with Kafka; the evaluation harness calls it directly, so quality is measured
on the product's own code, not on a copy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from model.rerank import Reranker
from model.scoring import Scorer
from streams.catalog import Catalog
from streams.contracts import RankedItem, RankRequest, Recommendation, rec_id_for

__all__ = ["Ranker"]


class Ranker:
    """Scorer + reranker at a fixed trade-off (the bandit picks it later)."""

    def __init__(
        self,
        scorer: Scorer,
        reranker: Reranker,
        catalog: Catalog,
        trade_off: float,
        model_version: str,
    ) -> None:
        self.scorer = scorer
        self.reranker = reranker
        self.catalog = catalog
        self.trade_off = trade_off
        self.model_version = model_version

    @property
    def policy(self) -> dict[str, object]:
        return {
            "reranker": self.reranker.name,
            "arm": f"lambda={self.trade_off:g}",
            "lambda": self.trade_off,
        }

    def rank(self, requests: Sequence[RankRequest]) -> list[list[tuple[str, float]]]:
        """For each request, the final ``k`` (item_id, score) pairs in list order."""
        out = []
        for request, (rows, scores) in zip(requests, self.scorer.score(requests), strict=True):
            pos = self.reranker.rerank(
                scores,
                self.catalog.vectors[rows],
                request.k,
                self.trade_off,
                categories=[self.catalog.categories[r] for r in rows],
                target_mix=request.category_mix,
            )
            out.append([(self.catalog.item_ids[rows[p]], float(scores[p])) for p in pos])
        return out

    def recommend(self, requests: Sequence[RankRequest]) -> list[Recommendation]:
        """Rank and wrap each list in the ``recommendations`` contract."""
        ranked = self.rank(requests)
        now = time.time()
        return [
            Recommendation(
                rec_id=rec_id_for(r.request_id),
                request_id=r.explicit_request_id,
                user_id=r.user_id,
                items=[
                    RankedItem(item_id=item, score=round(score, 6), rank=i + 1)
                    for i, (item, score) in enumerate(items)
                ],
                experiment=r.experiment or {"name": "default", "variant": "control"},
                policy=self.policy,
                model_version=self.model_version,
                trigger_event_id=r.trigger_event_id,
                created_ts=now,
                latency_ms=round(max(0.0, now - r.arrival_ts) * 1000.0, 3),
            )
            for r, items in zip(requests, ranked, strict=True)
        ]
