"""Rank requests -> recommendation lists: score with the LM, rerank, stamp.

This is the whole in-process ranking path. The inference worker wraps it
with Kafka; the evaluation harness calls it directly, so quality is measured
on the product's own code, not on a copy.

Each request's diversity arm (reranker and trade-off) comes from its policy:
a fixed arm of its experiment variant, the bandit's pick (``mode: bandit``,
from the latest ``bandit-weights``), or the ranker's default arm.

With ``reasons`` (``Settings.reasons``, on by default) every listed item of
:meth:`Ranker.recommend` carries ``RankedItem.reason`` (:mod:`model.reasons`),
computed after reranking for the listed items of the whole batch at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from model.reasons import fusion_reasons, simple_reasons
from model.rerank import Reranker, get_reranker, intra_list_diversity, standardise
from model.scoring import Scorer
from streams.bandit.book import PolicyBook
from streams.catalog import Catalog
from streams.contracts import RankedItem, RankRequest, Recommendation, rec_id_for
from streams.experiments import Arm
from streams.settings import Settings

__all__ = ["Ranker"]

log = logging.getLogger(__name__)


class Ranker:
    """Scorer + per-request diversity arm (default: ``reranker`` at ``trade_off``)."""

    def __init__(
        self,
        scorer: Scorer,
        reranker: Reranker,
        catalog: Catalog,
        trade_off: float,
        model_version: str,
        book: PolicyBook | None = None,
        reasons: bool | None = None,
        standardise: bool = False,
    ) -> None:
        self.scorer = scorer
        # Rerank on each list's standardised scores (model.rerank.standardise):
        # for a scorer whose scale moves, the fusion ranker's online-learned logits.
        self.standardise = standardise
        # Lists from recommend() carry RankedItem.reason; None = the setting
        # (STREAMREC_REASONS), so the worker's ranker follows it.
        self.reasons = Settings().reasons if reasons is None else reasons
        self.reranker = reranker
        self.catalog = catalog
        self.trade_off = trade_off
        self.model_version = model_version
        self.book = book
        self._rerankers: dict[str, Reranker] = {reranker.name: reranker}
        # ILD@k of the relevance order (top-k by score) of each recent list's
        # candidates: the baseline the served lists' diversity is measured against
        # (recorded for recommend()'s lists only: the worker's gauge reads it).
        self.relevance_ild: deque[float] = deque(maxlen=1000)

    # The worker's followers (and the in-process evaluation) hand the latest
    # streamed item signals and fusion weights to the ranker; a scorer that
    # reads them (model.fusion.FusionScorer) gets them, others ignore them.
    @property
    def signals(self) -> object | None:
        return getattr(self.scorer, "signals", None)

    @signals.setter
    def signals(self, table: object | None) -> None:
        if hasattr(self.scorer, "signals"):
            self.scorer.signals = table

    @property
    def fusion_weights(self) -> dict | None:
        return getattr(self.scorer, "weights", None)

    @fusion_weights.setter
    def fusion_weights(self, weights: dict | None) -> None:
        if weights is not None and hasattr(self.scorer, "set_weights"):
            self.scorer.set_weights(weights)

    @property
    def default_arm(self) -> Arm:
        return Arm(reranker=self.reranker.name, trade_off=self.trade_off)

    def choose(self, request: RankRequest) -> dict[str, object]:
        """The request's policy stamp: reranker, arm, lambda, mode, segment."""
        p = request.policy
        segment = str(p.get("segment", "all"))
        mode = str(p.get("mode", "fixed"))
        if mode == "bandit" and self.book is not None:
            arm = Arm.from_name(self.book.pick(segment, request.context))
        elif p.get("arm"):
            try:
                arm = Arm.from_name(str(p["arm"]))
            except ValueError as exc:  # pydantic's ValidationError is one too
                # A record names an arm no config has: rank it with the default
                # rather than die on it (and again on every redelivery).
                log.warning("request %s: %s; using the default arm", request.request_id, exc)
                mode, arm = "fixed", self.default_arm
        else:
            mode, arm = "fixed", self.default_arm
        return {
            "reranker": arm.reranker,
            "arm": arm.name,
            "lambda": arm.trade_off,
            "mode": mode,
            "segment": segment,
        }

    def _reranker(self, name: str) -> Reranker:
        if name not in self._rerankers:
            self._rerankers[name] = get_reranker(name)
        return self._rerankers[name]

    def rank(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[dict[str, object]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """For each request, the final ``k`` (item_id, score) pairs in list order."""
        return [[(i, s) for i, s, _, _ in items] for items in self._rank(requests, policies)]

    def rank_with_features(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[dict[str, object]] | None = None,
    ) -> list[list[tuple[str, float, dict[str, float] | None]]]:
        """Like :meth:`rank`, with each listed item's scorer features (None if the
        scorer has none): the fusion learner trains on them when outcomes return."""
        return [[(i, s, f) for i, s, f, _ in items] for items in self._rank(requests, policies)]

    def rank_with_reasons(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[dict[str, object]] | None = None,
    ) -> list[list[tuple[str, float, dict[str, float] | None, dict]]]:
        """Like :meth:`rank_with_features`, with each listed item's reason
        (``RankedItem.reason``, see :mod:`model.reasons`)."""
        return self._rank(requests, policies, reasons=True)  # type: ignore[return-value]

    def _rank(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[dict[str, object]] | None = None,
        reasons: bool = False,
        baseline: bool = False,
    ) -> list[list[tuple[str, float, dict[str, float] | None, dict | None]]]:
        """(item_id, score, features, reason) per listed item; reasons only when
        asked (None otherwise), computed for the ``k`` listed items alone. With
        ``baseline``, each list's relevance-order ILD joins ``relevance_ild``."""
        if policies is None:
            policies = [self.choose(r) for r in requests]
        names: Sequence[str] = ()
        if reasons and hasattr(self.scorer, "score_with_reasons"):
            scored = self.scorer.score_with_reasons(requests)
            names = self.scorer.feature_names
        elif hasattr(self.scorer, "score_with_features"):
            scored = [(*found, None) for found in self.scorer.score_with_features(requests)]
            names = self.scorer.feature_names
        else:
            scored = [(rows, scores, None, None) for rows, scores in self.scorer.score(requests)]
        ids, categories = self.catalog.item_ids, self.catalog.categories
        lists = []  # per request: listed rows, their scores, features and reasons
        pending: list[tuple[int, object, np.ndarray]] = []  # fusion lists, explained together
        for request, (rows, scores, feats, evidence), policy in zip(
            requests, scored, policies, strict=True
        ):
            reranker = self._reranker(str(policy["reranker"]))
            pos = reranker.rerank(
                standardise(scores) if self.standardise else scores,
                self.catalog.vectors[rows],
                request.k,
                float(policy["lambda"]),
                categories=[categories[r] for r in rows.tolist()]
                if reranker.uses_categories
                else None,
                target_mix=request.category_mix,
                long_tail=self.catalog.long_tail[rows] if reranker.uses_long_tail else None,
            )
            chosen = rows[pos].tolist()
            listed = np.asarray(scores)[pos].tolist()
            if baseline:
                top = rows[np.argsort(-np.asarray(scores), kind="stable")[: request.k]]
                self.relevance_ild.append(intra_list_diversity(self.catalog.vectors[top]))
            why: list[dict] | None = None
            if reasons and evidence is not None:
                pending.append((len(lists), evidence, pos))
            elif reasons:
                why = simple_reasons(self.catalog, request, np.asarray(chosen, dtype=np.int64))
            values = None if feats is None else np.round(feats[pos].astype(np.float64), 5).tolist()
            lists.append((chosen, listed, values, why))
        if pending:  # one pass over the whole batch's listed items
            explained = fusion_reasons([(e, pos) for _, e, pos in pending])  # type: ignore[misc]
            for (i, _, _), why in zip(pending, explained, strict=True):
                lists[i] = (*lists[i][:3], why)
        out = []
        for chosen, listed, values, why in lists:
            whys = why if why is not None else [None] * len(chosen)
            if values is None:
                out.append(
                    [(ids[r], s, None, y) for r, s, y in zip(chosen, listed, whys, strict=True)]
                )
                continue
            out.append(
                [
                    (ids[r], s, {n: v for n, v in zip(names, row, strict=True) if v}, y)
                    for r, s, row, y in zip(chosen, listed, values, whys, strict=True)
                ]
            )
        return out

    def recommend(self, requests: Sequence[RankRequest]) -> list[Recommendation]:
        """Rank and wrap each list in the ``recommendations`` contract."""
        policies = [self.choose(r) for r in requests]
        ranked = self._rank(requests, policies, reasons=self.reasons, baseline=True)
        now = time.time()
        return [
            Recommendation(
                rec_id=rec_id_for(r.request_id, r.user_id),
                request_id=r.explicit_request_id,
                user_id=r.user_id,
                items=[
                    RankedItem(
                        item_id=item, score=round(score, 6), rank=i + 1, features=feats, reason=why
                    )
                    for i, (item, score, feats, why) in enumerate(items)
                ],
                experiment=r.experiment or {"name": "none", "variant": "default"},
                policy=policy,
                model_version=self.model_version,
                trigger_event_id=r.trigger_event_id,
                created_ts=now,
                latency_ms=round(max(0.0, now - r.arrival_ts) * 1000.0, 3),
            )
            for r, items, policy in zip(requests, ranked, policies, strict=True)
        ]
