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

from model.bandit_book import PolicyBook
from model.encoder import Encoder
from model.reasons import fusion_reasons, simple_reasons
from model.rerank import MMR, Reranker, get_reranker, intra_list_diversity, standardise
from model.scoring import Scorer, TwoTowerScorer
from streams.catalog import Catalog, CatalogNotFound
from streams.contracts import (
    FusionWeights,
    RankedItem,
    RankRequest,
    Recommendation,
    ServedPolicy,
    rec_id_for,
)
from streams.experiments import Arm
from streams.settings import Settings

__all__ = ["Ranker", "FUSION_DEFAULT_ARM", "build_ranker", "load_ranker"]

log = logging.getLogger(__name__)

#: The fusion ranker's default arm (lists outside every experiment, unless the
#: experiments file names a ``default_arm``): pinned MMR at 0.5 on standardised
#: relevance (``model.rerank.standardise``), P1 ILD@10 +10.1% for NDCG@10 +0.1%
#: (docs/eval/fusion/online-retail-leave-last-out/sweep.md). The most diverse
#: setting within 1% on P1, 0.375 (+16.8% / -0.8%), costs P2 6.9% NDCG@10 and
#: falls behind ALS on P2 `new`; 0.5 costs P2 3.3-3.8% and stays ahead on
#: every table (docs/eval/defaults.md).
#: The two-tower ranker keeps MMR at ``mmr_lambda``: no setting of its sweep
#: stays within 1%.
FUSION_DEFAULT_ARM = Arm(reranker="mmr_pinned", trade_off=0.5)


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
    def fusion_weights(self) -> FusionWeights | None:
        return getattr(self.scorer, "weights", None)

    @fusion_weights.setter
    def fusion_weights(self, weights: FusionWeights | None) -> None:
        if weights is not None and hasattr(self.scorer, "set_weights"):
            self.scorer.set_weights(weights)

    @property
    def default_arm(self) -> Arm:
        return Arm(reranker=self.reranker.name, trade_off=self.trade_off)

    def choose(self, request: RankRequest) -> ServedPolicy:
        """What serves the request's list: its arm (reranker, trade-off), the mode it
        was chosen in and the user's segment."""
        p = request.policy
        segment, mode = p.segment, p.mode
        if mode == "bandit" and self.book is not None:
            arm = Arm.from_name(self.book.pick(segment, request.context))
        elif p.arm:
            try:
                arm = Arm.from_name(p.arm)
            except ValueError as exc:  # pydantic's ValidationError is one too
                # A record names an arm no config has: rank it with the default
                # rather than die on it (and again on every redelivery).
                log.warning("request %s: %s; using the default arm", request.request_id, exc)
                mode, arm = "fixed", self.default_arm
        else:
            mode, arm = "fixed", self.default_arm
        return ServedPolicy(
            reranker=arm.reranker, arm=arm.name, trade_off=arm.trade_off, mode=mode, segment=segment
        )

    def _reranker(self, name: str) -> Reranker:
        if name not in self._rerankers:
            self._rerankers[name] = get_reranker(name)
        return self._rerankers[name]

    def rank(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[ServedPolicy] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """For each request, the final ``k`` (item_id, score) pairs in list order."""
        return [[(i, s) for i, s, _, _ in items] for items in self._rank(requests, policies)]

    def rank_with_features(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[ServedPolicy] | None = None,
    ) -> list[list[tuple[str, float, dict[str, float] | None]]]:
        """Like :meth:`rank`, with each listed item's scorer features (None if the
        scorer has none): the fusion learner trains on them when outcomes return."""
        return [[(i, s, f) for i, s, f, _ in items] for items in self._rank(requests, policies)]

    def rank_with_reasons(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[ServedPolicy] | None = None,
    ) -> list[list[tuple[str, float, dict[str, float] | None, dict]]]:
        """Like :meth:`rank_with_features`, with each listed item's reason
        (``RankedItem.reason``, see :mod:`model.reasons`)."""
        return self._rank(requests, policies, reasons=True)  # type: ignore[return-value]

    def _rank(
        self,
        requests: Sequence[RankRequest],
        policies: Sequence[ServedPolicy] | None = None,
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
            reranker = self._reranker(policy.reranker)
            pos = reranker.rerank(
                standardise(scores) if self.standardise else scores,
                self.catalog.vectors[rows],
                request.k,
                policy.trade_off,
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
                # Built, not validated: every field comes typed from the ranking above,
                # and validating ten items per list cost 6% of a fusion list.
                items=[
                    RankedItem.model_construct(
                        item_id=item, score=round(score, 6), rank=i + 1, features=feats, reason=why
                    )
                    for i, (item, score, feats, why) in enumerate(items)
                ],
                experiment=r.experiment,
                policy=policy,
                model_version=self.model_version,
                trigger_event_id=r.trigger_event_id,
                created_ts=now,
                latency_ms=round(max(0.0, now - r.arrival_ts) * 1000.0, 3),
            )
            for r, items, policy in zip(requests, ranked, policies, strict=True)
        ]


def build_ranker(
    settings: Settings,
    catalog: Catalog,
    book: PolicyBook | None = None,
    encoder: Encoder | None = None,
) -> Ranker:
    """The ranking path for ``settings``: two-tower LM scoring, MMR by default.

    With a ``book`` (the latest bandit policies), requests of bandit variants
    get the bandit's arm; others their variant's fixed arm or MMR at
    ``settings.mmr_lambda``. ``settings.quantize`` picks the int8 CPU path;
    ``settings.cross_encoder`` adds the cross-encoder over the top candidates.
    Lists carry the encoder's name: the artifact's version when it is one.

    The default arm is MMR at ``settings.mmr_lambda`` for the two-tower ranker
    and :data:`FUSION_DEFAULT_ARM` for the fusion ranker.

    ``settings.sequence_model`` switches to the fusion ranker
    (:class:`model.fusion.FusionScorer`): the sequence model's candidates and
    scores fused with the LM score and the streamed signals, with the model
    folder's ``fusion.json`` weights; the version becomes ``<lm>+seq:<version>``.
    """
    if encoder is None:
        encoder = Encoder(settings.artifact, device=settings.device, quantize=settings.quantize)
    scorer: Scorer = TwoTowerScorer(
        encoder, catalog, settings.lm_blend, settings.history_items, settings.repeat_n
    )
    version = encoder.name
    if settings.sequence_model is not None:
        from model.fusion import FusionScorer, warm_start_or_default
        from model.sequence import SequenceModel

        sequence = SequenceModel(settings.sequence_model, device=settings.device)
        # The sequence model reads the order the title query cannot: with it, the
        # query adds nothing measurable (P1 NDCG@10 .2454 with it, .2452 without)
        # and costs most of the latency (demo p99 1,622 ms against 612 ms).
        lm = TwoTowerScorer(encoder, catalog, settings.fusion_lm_blend, settings.history_items)
        scorer = FusionScorer(
            catalog,
            lm,
            sequence,
            warm_start_or_default(sequence.path / "fusion.json"),
            settings.seq_candidates,
            settings.covis_candidates,
            settings.trending_candidates,
            settings.repeat_n,
        )
        version = f"{encoder.name}+seq:{sequence.version}"
    reranker, trade_off = MMR(), settings.mmr_lambda
    if settings.sequence_model is not None:
        reranker, trade_off = (
            get_reranker(FUSION_DEFAULT_ARM.reranker),
            FUSION_DEFAULT_ARM.trade_off,
        )
    if settings.cross_encoder is not None:
        from model.crossencoder import CrossEncoder, CrossEncoderScorer

        cross = CrossEncoder(settings.cross_encoder, device=settings.device)
        scorer = CrossEncoderScorer(scorer, cross, settings.cross_top_n)
    # The fusion ranker's scale moves as the online learner updates its weights:
    # its lists are reranked on standardised scores (model.rerank.standardise).
    return Ranker(
        scorer,
        reranker,
        catalog,
        trade_off,
        version,
        book,
        reasons=settings.reasons,
        standardise=settings.sequence_model is not None,
    )


def load_ranker(settings: Settings, book: PolicyBook | None = None) -> Ranker:
    """The worker's ranker: the artifact's own catalog when it has one, else ``--catalog``.

    The item vectors must come from the model that embeds the query, so a
    fine-tuned artifact's catalog wins over ``settings.catalog``.
    """
    encoder = Encoder(settings.artifact, device=settings.device, quantize=settings.quantize)
    own = encoder.artifact.catalog_dir if encoder.artifact else None
    path = own or settings.catalog
    if path is None:
        raise CatalogNotFound(
            "no catalog: set --catalog / STREAMREC_CATALOG, or --artifact a fine-tuned "
            "artifact (it carries its catalog)"
        )
    return build_ranker(settings, Catalog.load(path), book, encoder)
