"""The fusion ranker: multi-source candidates scored from their features.

Candidate sources, merged and deduplicated per request:

- from the dataflow (in the request): ``ann`` (FAISS over the streamed LM user
  embedding) and ``repeat`` (the user's most bought items, with their counts
  and ages as features);
- added here: ``seq`` (the sequence model's top items for the user's ordered
  history) and, when the worker follows ``item-signals``, ``covis`` (streamed
  co-visitation neighbours of the recent items) and ``trending``.

Every candidate gets the same feature vector (:data:`FEATURES`, a missing
signal counts as 0) and the score is linear:

    score = bias + sum_f w_f * x_f

The weights are warm-started offline (:func:`fit_weights`, a listwise softmax
over each validation user's candidates, so the target item must outscore the
rest of its list) and then follow the ``fusion-weights`` topic, which the
dataflow's online learner publishes from attributed outcomes. A linear model
keeps the two exchangeable: same features, same form.

Reasons: :meth:`FusionScorer.score_with_reasons` also keeps where each
candidate came from, so the listed items can say why they are there
(``RankedItem.reason``: the strongest proposing source, the user's item behind
it, the largest terms of the linear score; :mod:`model.reasons`).

Masking: candidates added here skip ``RankRequest.exclude`` (the user's seen
items when the dataflow filters them), like the dataflow's own sources, and a
request with ``filter_seen`` is scored with the second weight set, fitted on
targets the user never had (repeats cannot win there; see :mod:`streams.fusion_learner`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from model.reasons import FusionEvidence
from model.scoring import Scored, Scorer, TwoTowerScorer
from model.sequence import SequenceModel
from streams.catalog import Catalog
from streams.contracts import FusionWeights, RankRequest, WeightSet
from streams.retrieval import Candidates, retrieve
from streams.signals import SignalsView

__all__ = ["FEATURES", "FusionScorer", "fit_weights", "warm_start_or_default", "DEFAULT_WEIGHTS"]

_DAY_S = 86_400.0
#: The log-probability given to items the sequence model cannot score.
_SEQ_FLOOR = -20.0

#: Feature names, in the order of the feature matrix.
FEATURES: tuple[str, ...] = (
    "seq",  # the sequence model's next-item log-probability
    "seq_rank",  # 1 / (1 + rank) of the item in the sequence model's ranking
    "lm",  # two-tower LM score (LM history query + streamed LM embedding)
    "repeat",  # 1 if the user interacted with the item before
    "repeat_count",  # log(1 + times the user interacted with it)
    "repeat_recency",  # 1 / (1 + days since the user's last interaction with it)
    "last_item",  # 1 if it is the user's most recent item
    "covis",  # log(1 + co-visitation weight from the recent items)
    "trend",  # log(1 + short-window count / long-window baseline)
    "popularity",  # log(1 + decayed long-window count), streamed
    "category",  # the item's category's share of the user's decayed category mix
    "last_category",  # 1 if the item shares the category of the user's most recent item
)

_COLUMN = {f: j for j, f in enumerate(FEATURES)}

# Per request, where its candidates came from: retrieval's sources, the sequence
# model's rows, the rows and sources of covis/trending candidates, the signals
# table and the request's time.
_Provenance = tuple[
    Sequence[str], np.ndarray, tuple[list[int], list[str]] | None, object | None, float
]

#: Used when no fitted weights exist: the sequence model decides, repeats help.
DEFAULT_WEIGHTS = FusionWeights(bias=0.0, weights={"seq": 1.0, "repeat_count": 0.5})


def _linear(weights: WeightSet) -> tuple[np.ndarray, float, WeightSet]:
    """(weight vector in FEATURES order, bias, the set)."""
    w = weights.weights
    vector = np.array([w.get(f, 0.0) for f in FEATURES], dtype=np.float32)
    return vector, weights.bias, weights


def warm_start_or_default(path: Path | None) -> FusionWeights:
    """The warm-start weights of the file ``path``
    (:func:`streams.fusion_learner.read_warm_start`, with its ``masked`` set when
    it has one), or :data:`DEFAULT_WEIGHTS` when there is no file (a sequence
    model trained without a fusion fit). A file that is there but wrong raises."""
    from streams.fusion_learner import read_warm_start

    if path is None or not Path(path).is_file():
        return DEFAULT_WEIGHTS
    return read_warm_start(path)


class FusionScorer(Scorer):
    """Merge candidate sources, compute features, score linearly."""

    feature_names = FEATURES

    def __init__(
        self,
        catalog: Catalog,
        lm: TwoTowerScorer | None,
        sequence: SequenceModel | None,
        weights: FusionWeights | Mapping | None = None,
        seq_candidates: int = 100,
        covis_candidates: int = 50,
        trending_candidates: int = 20,
        repeat_n: int = 50,
    ) -> None:
        self.catalog = catalog
        self.repeat_n = repeat_n
        # Category code per catalog row (-1: none), so category features are array lookups.
        self._category_names = sorted({c for c in catalog.categories if c is not None})
        self._category_index = {c: i for i, c in enumerate(self._category_names)}
        self._category_codes = np.array(
            [-1 if c is None else self._category_index[c] for c in catalog.categories],
            dtype=np.int64,
        )
        self.lm = lm
        self.sequence = sequence
        self.seq_candidates = seq_candidates
        self.covis_candidates = covis_candidates
        self.trending_candidates = trending_candidates
        self.signals = None  # a streams.signals.SignalsTable, set by the worker / evaluation
        self.set_weights(weights or DEFAULT_WEIGHTS)
        # Catalog row of each sequence-model item (-1: not in this catalog).
        if sequence is not None:
            self._seq_rows = np.array(
                [catalog.row.get(i, -1) for i in sequence.item_ids], dtype=np.int64
            )
            self._seq_index = np.full(len(catalog), -1, dtype=np.int64)
            known = self._seq_rows >= 0
            self._seq_index[self._seq_rows[known]] = np.flatnonzero(known)

    def set_weights(self, weights: FusionWeights | Mapping) -> None:
        """Swap the linear weights (the warm start, or a published ``fusion-weights``
        record); a mapping is read as a :class:`~streams.contracts.FusionWeights`.

        A warm start holds the set for lists that may repeat the user's items
        and, under ``masked``, the one for lists that may not
        (``RankRequest.filter_seen``); without it both use the first. A
        published record stamps ``filter_seen`` and replaces only that set.
        One attribute assignment, so a batch ranked while the worker's follower
        thread swaps sees the old weights or the new ones, never a mix.
        """
        if not isinstance(weights, FusionWeights):
            weights = FusionWeights.model_validate(dict(weights))
        one = _linear(weights.weight_set(False))
        if weights.filter_seen is not None:
            plain, masked = self._sets
            self._sets = (plain, one) if weights.filter_seen else (one, masked)
            return
        self._sets = (one, _linear(weights.masked) if weights.masked is not None else one)

    @property
    def weights(self) -> FusionWeights:
        """The two weight sets in use now (``masked``: the one for lists with the seen filter)."""
        (_, _, plain), (_, _, masked) = self._sets
        return FusionWeights(bias=plain.bias, weights=plain.weights, masked=masked)

    # --- candidates -------------------------------------------------------

    def _merge(
        self,
        found: Candidates,
        seq_top: np.ndarray,
        view: SignalsView | None,
        proposed: tuple[list[int], list[str]] | None = None,
    ) -> np.ndarray:
        """Retrieved candidates + seq + covis/trending -> catalog rows in first-found
        order, the retrieved ones first. Arrays, not one object per candidate: a
        few hundred candidates per request made per-candidate objects the
        slowest part of ranking. ``proposed`` (when given: two lists, not a
        tuple per candidate) gets the row and source of every covis/trending
        candidate, also those another source found first: the listed items'
        reasons read it."""
        # A mask over the catalog, not np.isin: isin sorts both arrays per call,
        # which cost 6% of a list with the seen filter's thousands of items.
        blocked = None
        if len(found.excluded):
            blocked = np.zeros(len(self.catalog), dtype=bool)
            blocked[found.excluded] = True
            seq_top = seq_top[~blocked[seq_top]]
        parts = [found.rows, seq_top]
        if view is not None and (self.covis_candidates or self.trending_candidates):
            known = self.catalog.row
            items, sources, _ = view.proposals(self.covis_candidates, self.trending_candidates)
            signalled = np.asarray([known.get(item, -1) for item in items], dtype=np.int64)
            keep = signalled >= 0
            if blocked is not None:
                keep[keep] = ~blocked[signalled[keep]]
            parts.append(signalled[keep])
            if proposed is not None:
                proposed[0].extend(parts[-1].tolist())
                proposed[1].extend(s for s, k in zip(sources, keep.tolist(), strict=True) if k)
        # Each row at its first appearance (retrieval's candidates have no excluded
        # row and no duplicate): numpy, not a set check per candidate.
        rows = np.concatenate(parts)
        _, first = np.unique(rows, return_index=True)
        return rows[np.sort(first)]

    # --- features ---------------------------------------------------------

    def _features(
        self,
        request: RankRequest,
        found: Candidates,
        rows: np.ndarray,
        lm_scores: np.ndarray | None,
        log_probs: np.ndarray | None,
        sorted_log_probs: np.ndarray | None,
        view: SignalsView | None,
    ) -> np.ndarray:
        x = np.zeros((len(rows), len(FEATURES)), dtype=np.float32)
        col = _COLUMN
        if log_probs is not None and self.sequence is not None:
            idx = self._seq_index[rows]
            lp = np.where(idx >= 0, log_probs[np.maximum(idx, 0)], _SEQ_FLOOR)
            x[:, col["seq"]] = np.maximum(lp, _SEQ_FLOOR)
            rank = _ranks(log_probs, sorted_log_probs, np.maximum(idx, 0))
            x[:, col["seq_rank"]] = np.where(idx >= 0, 1.0 / (1.0 + rank), 0.0)
        else:
            x[:, col["seq"]] = _SEQ_FLOOR
        if lm_scores is not None:
            x[:, col["lm"]] = lm_scores
        last = request.sequence[-1] if request.sequence else None
        codes = self._category_codes
        mix = request.category_mix
        total = sum(mix.values())
        if total > 0:
            share = np.zeros(len(self._category_names) + 1, dtype=np.float32)
            for name, w in mix.items():
                code = self._category_index.get(name)
                if code is not None:
                    share[code] = w / total
            x[:, col["category"]] = share[codes[rows]]
        last_row = self.catalog.row.get(last) if last is not None else None
        if last_row is not None:
            x[:, col["last_item"]] = rows == last_row
            if codes[last_row] >= 0:
                x[:, col["last_category"]] = codes[rows] == codes[last_row]
        # Repeat features: only the retrieved candidates carry them (the dataflow's
        # sources used to; the fitted weights expect exactly that).
        n = len(found)
        count = found.repeat_count
        had = count > 0
        x[:n, col["repeat"]] = had
        x[:n, col["repeat_count"]] = np.log1p(count)
        x[:n, col["repeat_recency"]] = np.where(had, 1.0 / (1.0 + found.repeat_age_s / _DAY_S), 0.0)
        if view is not None:
            covis, trend, popularity = view.arrays(self.catalog.row, rows)
            x[:, col["covis"]] = np.log1p(covis)
            x[:, col["trend"]] = np.log1p(trend)
            x[:, col["popularity"]] = np.log1p(popularity)
        return x

    def featurize(self, requests: Sequence[RankRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request: (catalog rows of the merged candidates, feature matrix)."""
        return [(rows, x) for rows, x, _ in self._featurize(requests)]

    def _featurize(
        self, requests: Sequence[RankRequest], provenance: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray, _Provenance]]:
        """:meth:`featurize`, with each request's candidate provenance (the signal
        sources' proposals collected only with ``provenance``)."""
        log_probs = None
        if self.sequence is not None and requests:
            log_probs = self.sequence.log_probs(
                [r.sequence for r in requests], [r.sequence_ts for r in requests]
            )
        # One sort for the batch: each candidate's rank in the sequence model's order.
        ordered = None if log_probs is None else np.sort(log_probs, axis=1)
        retrieved = retrieve(self.catalog, requests, self.repeat_n)
        queries = self.lm.queries(requests) if self.lm is not None else [None] * len(requests)
        out = []
        for i, (r, found) in enumerate(zip(requests, retrieved, strict=True)):
            now = r.sequence_ts[-1] if r.sequence_ts else r.arrival_ts
            seq_top = np.zeros(0, dtype=np.int64)
            lp = None if log_probs is None else log_probs[i]
            if lp is not None and self.seq_candidates:
                want = self.seq_candidates + len(r.exclude)
                top = np.argpartition(-lp, min(want, len(lp) - 1))[:want]
                top = top[np.argsort(-lp[top], kind="stable")]
                seq_top = self._seq_rows[top]
                seq_top = seq_top[seq_top >= 0]
            # One signals view per request serves both the candidates and the features.
            table = self.signals
            view = None if table is None else table.view(list(r.recent_items), now)
            proposed: tuple[list[int], list[str]] | None = ([], []) if provenance else None
            rows = self._merge(found, seq_top, view, proposed)
            lm_scores = None if self.lm is None else self.lm.score_rows(r, rows, queries[i])
            sorted_lp = None if ordered is None else ordered[i]
            x = self._features(r, found, rows, lm_scores, lp, sorted_lp, view)
            out.append((rows, x, (found.sources, seq_top, proposed, table, now)))
        return out

    def score(self, requests: Sequence[RankRequest]) -> list[Scored]:
        return [(rows, s) for rows, s, _ in self.score_with_features(requests)]

    def score_with_features(
        self, requests: Sequence[RankRequest]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Like :meth:`score`, plus each candidate's feature row (for ``RankedItem.features``)."""
        sets = self._sets  # one read: a concurrent swap cannot mix two versions in a batch
        out = []
        for r, (rows, x) in zip(requests, self.featurize(requests), strict=True):
            w, bias, _ = sets[r.filter_seen]
            out.append((rows, x @ w + bias, x))
        return out

    def score_with_reasons(
        self, requests: Sequence[RankRequest]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, FusionEvidence]]:
        """Like :meth:`score_with_features`, plus each request's
        :class:`~model.reasons.FusionEvidence`: ``evidence.reasons(positions)`` gives
        the listed candidates' ``RankedItem.reason`` (sources, features, because)."""
        sets = self._sets
        out = []
        for r, (rows, x, (sources, seq_top, proposed, table, now)) in zip(
            requests, self._featurize(requests, provenance=True), strict=True
        ):
            w, bias, _ = sets[r.filter_seen]
            evidence = FusionEvidence(
                self.catalog, r, FEATURES, rows, x, w, sources, seq_top, proposed, table, now
            )
            out.append((rows, x @ w + bias, x, evidence))
        return out


def _ranks(values: np.ndarray, ascending: np.ndarray, at: np.ndarray) -> np.ndarray:
    """0-based rank of ``values[at]`` in ``values`` ordered best first, ties by index
    (what a stable descending argsort gives), from ``ascending = np.sort(values)``:
    a sort and a binary search instead of a full argsort per request."""
    v = values[at]
    above = np.searchsorted(ascending, v, side="right")
    rank = (len(values) - above).astype(np.float32)
    # v itself sits at ascending[above - 1]: it ties when the value below is v too
    # (one search instead of a second, side="left", one).
    tied = np.flatnonzero((above >= 2) & (ascending[np.maximum(above - 2, 0)] == v))
    for j in tied.tolist():  # equal values: the lower index ranks first
        rank[j] += np.count_nonzero(values[: at[j]] == v[j])
    return rank


def fit_weights(
    groups: Sequence[tuple[np.ndarray, int | Sequence[int]]],
    l2: float = 1e-3,
    epochs: int = 200,
    seed: int = 13,
) -> dict:
    """Listwise warm start: softmax over each group's candidates, the targets win.

    ``groups``: (feature matrix of one request's candidates, the target row or
    rows: one index for a next item, several for a basket; -1 or none found =
    the group is skipped). The loss is -log of the softmax mass on the
    targets (for one target, plain cross-entropy), averaged over groups, plus
    ``l2`` * |w|^2; full-batch L-BFGS.
    """
    import torch

    torch.manual_seed(seed)
    usable = []
    for x, t in groups:
        rows = [int(r) for r in np.atleast_1d(np.asarray(t)) if r >= 0]
        if rows and len(x) > 1:
            usable.append((x, rows))
    if not usable:
        return DEFAULT_WEIGHTS.model_dump()
    width = max(len(x) for x, _ in usable)
    feats = np.zeros((len(usable), width, len(FEATURES)), dtype=np.float32)
    valid = np.zeros((len(usable), width), dtype=bool)
    positive = np.zeros((len(usable), width), dtype=bool)
    for g, (x, rows) in enumerate(usable):
        feats[g, : len(x)] = x
        valid[g, : len(x)] = True
        positive[g, rows] = True
    # Standardise for the optimiser, then fold the scaling back into the weights.
    mean = feats[valid].mean(0)
    std = feats[valid].std(0) + 1e-6
    xs = torch.as_tensor((feats - mean) / std) * torch.as_tensor(valid)[..., None]
    mask = torch.as_tensor(valid)
    pos = torch.as_tensor(positive)
    w = torch.zeros(len(FEATURES), requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=epochs, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax((xs @ w).masked_fill(~mask, float("-inf")), dim=1)
        on_targets = torch.logsumexp(logp.masked_fill(~pos, float("-inf")), dim=1)
        loss = -on_targets.mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    raw = w.detach().numpy() / std
    return {
        "bias": float(-(raw * mean).sum()),
        "weights": {f: round(float(v), 6) for f, v in zip(FEATURES, raw, strict=True)},
        "fitted_on": {"groups": len(usable), "skipped": len(groups) - len(usable)},
    }
