"""Why an item is in a list: ``RankedItem.reason``, one small dict per listed item.

    {"source": "covis", "because": "i9", "top": {"covis": 1.23, "seq": 0.8}}

``source``
    The candidate source that proposed the item: ``retrieval`` (nearest items
    to the streamed user embedding), ``popular`` (a cold user's retrieval),
    ``repeat`` (the user's own items), and for the fusion ranker ``seq`` (the
    sequence model's top items), ``covis`` (co-visitation neighbours of the
    recent items) and ``trending``. A candidate several sources proposed gets
    the **strongest** of them: the one whose own features
    (:data:`SOURCE_FEATURES`) add the most to its score, ties to the first in
    the fusion ranker's merge order (retrieval, popular, repeat, seq, covis,
    trending). Other scorers (the two-tower ranker) have no contributions to
    compare: ``repeat`` when the user had the item, else ``retrieval`` (or
    ``popular`` for a cold user).
``because``
    The user's item that explains it, or null: the item itself for
    ``repeat``; for ``covis`` the recent item whose neighbour weight adds the
    most to its co-visitation score; for ``seq`` the last item of the
    sequence; for ``retrieval`` the recent item most similar to it (item
    vectors); null for ``popular`` and ``trending``.
``top``
    The fusion ranker's features that added most to the item's score, at
    most :data:`TOP_FEATURES`, as ``{name: contribution}``, largest first (an
    object rather than a list of pairs: one container per item instead of
    four, which the garbage collector of a busy worker notices). The
    contribution of feature f is ``w_f * (x_f - mean_f)``, the mean taken over
    the request's candidates: for a linear score these are its exact Shapley
    values against the candidate list, and they sum to the item's score minus
    the candidates' mean score. Raw ``w_f * x_f`` terms would mislead: the
    sequence model's log-probability is negative for every item, so the
    model's main signal would never show. Only features the item has
    (``w_f * x_f != 0``) with a positive contribution are named. Empty for
    other scorers.

Cheap by construction: everything per candidate stays in the scorer's
arrays; only the ``k`` listed items get a dict, computed after reranking, for
the whole batch at once (:func:`fusion_reasons`). ``Settings.reasons``
(``STREAMREC_REASONS``, on by default) turns them off: ``reason`` is then null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from streams.catalog import Catalog
from streams.contracts import RankRequest

__all__ = [
    "SOURCES",
    "SOURCE_FEATURES",
    "TOP_FEATURES",
    "FusionEvidence",
    "fusion_reasons",
    "most_similar_recent",
    "simple_reasons",
]

#: Features named in ``top`` at most.
TOP_FEATURES = 3

#: Each candidate source, in the fusion ranker's merge order, and its own features.
SOURCE_FEATURES: dict[str, tuple[str, ...]] = {
    "retrieval": ("lm",),
    "popular": ("popularity",),
    "repeat": ("repeat", "repeat_count", "repeat_recency"),
    "seq": ("seq", "seq_rank"),
    "covis": ("covis",),
    "trending": ("trend",),
}
SOURCES: tuple[str, ...] = tuple(SOURCE_FEATURES)
_INDEX = {s: j for j, s in enumerate(SOURCES)}
# streams.retrieval's source names -> the reason's.
_RETRIEVED = {"ann": "retrieval", "popular": "popular", "repeat": "repeat"}


def most_similar_recent(
    catalog: Catalog, recent_items: Sequence[str], rows: np.ndarray
) -> list[str | None]:
    """Per catalog row: the user's recent item (not the item itself) with the
    largest inner product of item vectors, ties to the most recent; None when
    there is none. One (rows x recent) product."""
    known = catalog.row
    recent = [known[i] for i in dict.fromkeys(recent_items) if i in known]
    if not recent or not len(rows):
        return [None] * len(rows)
    r = np.asarray(recent, dtype=np.int64)
    sims = catalog.vectors[rows] @ catalog.vectors[r].T
    sims[rows[:, None] == r[None, :]] = -np.inf
    best = sims.argmax(axis=1)
    found = np.isfinite(sims[np.arange(len(rows)), best])
    ids = catalog.item_ids
    return [
        ids[int(r[b])] if ok else None for b, ok in zip(best.tolist(), found.tolist(), strict=True)
    ]


def _warm(catalog: Catalog, request: RankRequest) -> bool:
    """Retrieval used the user's embedding (as :func:`streams.retrieval.retrieve` decides)."""
    v = request.vector()
    return v is not None and len(v) == catalog.dim


def simple_reasons(catalog: Catalog, request: RankRequest, rows: np.ndarray) -> list[dict]:
    """Reasons for a scorer without features (the two-tower ranker): ``repeat``
    when the user had the item, else ``retrieval`` (``popular`` when cold)."""
    ids, counts = catalog.item_ids, request.counts
    fallback = "retrieval" if _warm(catalog, request) else "popular"
    sources = ["repeat" if ids[r] in counts else fallback for r in rows.tolist()]
    similar: list[str | None] = [None] * len(rows)
    if fallback == "retrieval" and "retrieval" in sources:
        similar = most_similar_recent(catalog, request.recent_items, rows)
    out = []
    for r, source, like in zip(rows.tolist(), sources, similar, strict=True):
        because = ids[r] if source == "repeat" else like if source == "retrieval" else None
        out.append({"source": source, "because": because, "top": {}})
    return out


@lru_cache(maxsize=8)
def _source_matrix(features: tuple[str, ...]) -> np.ndarray:
    """(sources x features) 0/1: which features are each source's own."""
    col = {f: j for j, f in enumerate(features)}
    m = np.zeros((len(SOURCES), len(features)), dtype=np.float32)
    for s, names in SOURCE_FEATURES.items():
        for f in names:
            if f in col:
                m[_INDEX[s], col[f]] = 1.0
    return m


@lru_cache(maxsize=64)
def _columns(source: str) -> tuple[int, ...]:
    """``ann+repeat`` (a retrieval or signals source string) -> its SOURCES columns."""
    return tuple(_INDEX[_RETRIEVED.get(name, name)] for name in source.split("+"))


@dataclass(frozen=True, slots=True)
class FusionEvidence:
    """What one request's fusion scoring knew, kept (references, no copies) to
    explain the listed items once the reranker has chosen them."""

    catalog: Catalog
    request: RankRequest
    features: tuple[str, ...]  # the feature names, in the columns' order
    rows: np.ndarray  # every candidate's catalog row, in merge order
    x: np.ndarray  # (candidates x features)
    w: np.ndarray  # the weight vector that scored them
    found_sources: Sequence[str]  # streams.retrieval's source of rows[: len(found_sources)]
    seq_top: np.ndarray  # the sequence model's candidate rows
    # Rows and sources ("covis" | "trending" | "covis+trending") of the signals' candidates.
    signal_sources: tuple[Sequence[int], Sequence[str]] | None
    signals: object | None  # the SignalsTable the scores read, for ``covis_because``
    now: float  # the request's event time

    def reasons(self, pos: np.ndarray) -> list[dict]:
        """The reason of each listed candidate, ``pos`` its positions in ``rows``
        (:func:`fusion_reasons` of this request alone)."""
        return fusion_reasons([(self, pos)])[0]

    def _because(
        self, listed: np.ndarray, item_ids: list[str], chosen: list[str]
    ) -> list[str | None]:
        r = self.request
        last = r.sequence[-1] if r.sequence else None
        if all(s == "seq" for s in chosen):  # the usual list: no lookups
            return [last] * len(chosen)
        covis = [i for i, s in zip(item_ids, chosen, strict=True) if s == "covis"]
        by_covis = (
            self.signals.covis_because(covis, r.recent_items, self.now)  # type: ignore[attr-defined]
            if covis and self.signals is not None
            else {}
        )
        similar = [j for j, s in enumerate(chosen) if s == "retrieval"]
        like = most_similar_recent(self.catalog, r.recent_items, listed[similar]) if similar else []
        like_of = dict(zip(similar, like, strict=True))
        out: list[str | None] = [None] * len(chosen)
        for j, (item, source) in enumerate(zip(item_ids, chosen, strict=True)):
            if source == "repeat":
                out[j] = item
            elif source == "seq":
                out[j] = last
            elif source == "covis":
                out[j] = by_covis.get(item)
            elif source == "retrieval":
                out[j] = like_of[j]
        return out


_NEG = float("-inf")


def fusion_reasons(listed: Sequence[tuple[FusionEvidence, np.ndarray]]) -> list[list[dict]]:
    """The reasons of a batch of lists: per (evidence, positions of the listed
    candidates in its ``rows``), one dict per listed item.

    The arithmetic runs once for the whole batch (every listed item's
    contributions, top features and source strengths in a few array
    operations); Python runs per listed item only, to say which sources
    proposed it and to build its dict."""
    if not listed:
        return []
    names = listed[0][0].features
    positions = [np.asarray(p, dtype=np.int64) for _, p in listed]
    sizes = [len(p) for p in positions]
    if not sum(sizes):
        return [[] for _ in listed]
    xl = np.concatenate([e.x[p] for (e, _), p in zip(listed, positions, strict=True)])
    # Per request: the candidates' mean features and the weights that scored
    # them, repeated for its listed rows.
    means = np.stack([_ones(len(e.x)) @ e.x / len(e.x) for e, _ in listed])
    weights = np.stack([e.w for e, _ in listed])
    w = np.repeat(weights, sizes, axis=0)
    contrib = (xl - np.repeat(means, sizes, axis=0)) * w
    named = np.where((xl != 0) & (w != 0) & (contrib > 0), contrib, _NEG)
    top_n = min(TOP_FEATURES, named.shape[1])
    order = np.argsort(-named, axis=1)[:, :top_n]
    best = np.take_along_axis(named, order, axis=1)
    valid = (best != _NEG).sum(axis=1).tolist()  # named features per row, the first ones
    # Flat lists (one object each, not one per row): the garbage collector's work
    # grows with every container made per list.
    best = np.round(best.astype(np.float64), 3).ravel().tolist()  # float32 would print 0.1140000001
    top_names = [names[f] for f in order.ravel().tolist()]
    # Which sources proposed each listed item: (listed row, source column) pairs.
    at_j: list[int] = []
    at_s: list[int] = []
    seq_j: list[np.ndarray] = []
    rows, item_ids = [], []
    start = 0
    ids = listed[0][0].catalog.item_ids
    for (e, _), p in zip(listed, positions, strict=True):
        r = e.rows[p]
        rows.append(r)
        r_list = r.tolist()
        item_ids.append([ids[i] for i in r_list])
        n_found = len(e.found_sources)
        found = e.found_sources
        for j, at in enumerate(p.tolist(), start):
            if at < n_found:
                for c in _columns(found[at]):
                    at_j.append(j)
                    at_s.append(c)
        if len(e.seq_top):
            seq_j.append(start + np.flatnonzero((r[:, None] == e.seq_top[None, :]).any(axis=1)))
        if e.signal_sources and e.signal_sources[0]:
            where = {row: j for j, row in enumerate(r_list, start)}
            for row, source in zip(*e.signal_sources, strict=True):
                j = where.get(row)
                if j is not None:
                    for c in _columns(source):
                        at_j.append(j)
                        at_s.append(c)
        start += len(p)
    proposed = np.zeros((len(xl), len(SOURCES)), dtype=bool)
    proposed[at_j, at_s] = True
    if seq_j:
        proposed[np.concatenate(seq_j), _INDEX["seq"]] = True
    proposed[~proposed.any(axis=1), _INDEX["retrieval"]] = True  # never expected
    strength = np.where(proposed, contrib @ _source_matrix(names).T, _NEG)
    chosen = [SOURCES[s] for s in strength.argmax(axis=1).tolist()]
    out = []
    start = 0
    for (e, _), r, mine in zip(listed, rows, item_ids, strict=True):
        end = start + len(r)
        because = e._because(r, mine, chosen[start:end])
        reasons = []
        for j, why in zip(range(start, end), because, strict=True):
            t = j * top_n
            top = dict(zip(top_names[t : t + valid[j]], best[t : t + valid[j]], strict=True))
            reasons.append({"source": chosen[j], "because": why, "top": top})
        out.append(reasons)
        start = end
    return out


_ONES = np.ones(0, dtype=np.float32)


def _ones(n: int) -> np.ndarray:
    """``n`` float32 ones, from one cached array: a product with them is a column
    sum several times faster than ``x.sum(0)`` on a (candidates x 12) matrix."""
    global _ONES
    if len(_ONES) < n:
        _ONES = np.ones(max(n, 2 * len(_ONES), 512), dtype=np.float32)
    return _ONES[:n]
