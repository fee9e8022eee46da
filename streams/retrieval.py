"""Candidate retrieval for a batch of rank requests: one function per source, and their merge.

Sources (a candidate's ``source`` names the one that found it):

``ann``      warm users: the top-M items by inner product with their (unit)
             streamed embedding (``RankRequest.user_vector``)
``popular``  cold users (no embedding yet): the most popular items
``repeat``   the user's own most interacted items (ties: the most recent,
             then the item id), from ``RankRequest.counts``

Items in ``RankRequest.exclude`` (the seen set when the dataflow filters seen
items) are never proposed. :func:`retrieve` keeps one candidate per item: the
sources that found it joined with ``+`` (``ann+repeat``) and the score of the
first source that found it (repeat candidates score 0). Every candidate of
an item the user interacted with carries ``repeat_count`` and
``repeat_age_s`` (seconds from the item's last event to the user's last one).

The worker retrieves for its whole micro-batch at once: one matrix product
of the batch's user vectors with the item vectors (exact, like the flat
FAISS index it replaces on this path, and the shape a GPU or a larger batch
speeds up), instead of one index search per event in the dataflow, which
cost most of the dataflow's time. Results are columnar (:class:`Candidates`,
catalog rows and arrays), not one object per candidate.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streams.catalog import Catalog
from streams.contracts import RankRequest

__all__ = ["Candidate", "Candidates", "retrieve", "merge"]

# Scores of one chunk of the batch at most (queries x items floats): bounds the
# memory of the matrix product on a large catalog.
_CHUNK_FLOATS = 1 << 23


@dataclass(frozen=True, slots=True)
class Candidate:
    """One item a source proposes, with its score and features (a missing feature = 0).

    The streamed item signals propose ``covis`` and ``trending`` candidates
    this way (:meth:`streams.signals.SignalsView.candidates`).
    """

    item_id: str
    score: float
    source: str
    features: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidates:
    """One request's retrieved candidates, aligned arrays in first-found order."""

    rows: np.ndarray  # int64 catalog rows
    scores: (
        np.ndarray
    )  # retrieval scores rounded to 6 places (ann: inner product; popular: share of top)
    sources: list[str]
    repeat_count: np.ndarray  # float32: times the user interacted with the item (0 = never)
    repeat_age_s: np.ndarray  # float32: seconds since then, on the user's clock
    # int64 catalog rows of RankRequest.exclude: no source may propose them.
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.rows)


def merge(*sources: list[Candidate]) -> list[Candidate]:
    """One candidate per item, in first-found order: sources joined with ``+``,
    features merged, the first source's score.

    >>> merge([Candidate("a", 1.0, "covis")], [Candidate("a", 0.5, "trending", {"trend": 2.0})])
    [Candidate(item_id='a', score=1.0, source='covis+trending', features={'trend': 2.0})]
    """
    merged: dict[str, Candidate] = {}
    for candidates_ in sources:
        for c in candidates_:
            first = merged.get(c.item_id)
            if first is None:
                merged[c.item_id] = c
            elif c.source not in first.source.split("+"):
                merged[c.item_id] = Candidate(
                    first.item_id,
                    first.score,
                    f"{first.source}+{c.source}",
                    {**c.features, **first.features},
                )
    return list(merged.values())


def _excluded_rows(catalog: Catalog, request: RankRequest) -> np.ndarray:
    row = catalog.row
    return np.fromiter(
        (r for r in (row.get(i) for i in request.exclude) if r is not None), np.int64
    )


def _ann(
    catalog: Catalog, vectors: np.ndarray, ms: list[int], excluded: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query vector: the top-``m`` rows by inner product, excluded rows skipped."""
    n_items = len(catalog)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    chunk = max(1, _CHUNK_FLOATS // max(1, n_items))
    for start in range(0, len(vectors), chunk):
        scores = vectors[start : start + chunk] @ catalog.vectors.T
        for j, row_scores in enumerate(scores):
            i = start + j
            if len(excluded[i]):
                row_scores[excluded[i]] = -np.inf
            m = min(ms[i], n_items)
            if m <= 0:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            top = np.argpartition(-row_scores, m - 1)[:m] if m < n_items else np.arange(n_items)
            # Best first; ties by row, so the order does not depend on the partition.
            top = top[np.lexsort((top, -row_scores[top]))]
            top = top[np.isfinite(row_scores[top])]
            out.append((top.astype(np.int64), row_scores[top]))
    return out


def _popular(catalog: Catalog, m: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` most popular rows not excluded; score = popularity / the top item's."""
    rows = catalog.popular_rows[: m + len(excluded)]
    if len(excluded):
        rows = rows[~np.isin(rows, excluded)]
    rows = rows[:m]
    top = float(catalog.popularity[catalog.popular_rows[0]]) if len(catalog) else 1.0
    return rows.astype(np.int64), catalog.popularity[rows] / max(top, 1.0)


def _repeat(catalog: Catalog, request: RankRequest, n: int, excluded: np.ndarray) -> list[int]:
    """The user's ``n`` most interacted catalog rows (ties: most recent, then item id)."""
    if n <= 0 or not request.counts:
        return []
    row, drop = catalog.row, set(excluded.tolist())
    known = (
        (item, c) for item, c in request.counts.items() if item in row and row[item] not in drop
    )
    top = heapq.nsmallest(n, known, key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [row[item] for item, _ in top]


def retrieve(
    catalog: Catalog, requests: Sequence[RankRequest], repeat_n: int = 50
) -> list[Candidates]:
    """Every source for each request, merged: ``m`` ann/popular + up to ``repeat_n``
    repeat candidates (the request's ``counts`` is empty when seen items are
    filtered), with repeat features."""
    excluded = [_excluded_rows(catalog, r) for r in requests]
    vectors = [r.vector() for r in requests]
    warm = [i for i, v in enumerate(vectors) if v is not None and len(v) == catalog.dim]
    found: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}
    if warm:
        matrix = np.stack([vectors[i] for i in warm]).astype(np.float32)
        for i, (rows, scores) in zip(
            warm,
            _ann(catalog, matrix, [requests[i].m for i in warm], [excluded[i] for i in warm]),
            strict=True,
        ):
            found[i] = (rows, scores, "ann")
    out = []
    for i, r in enumerate(requests):
        if i in found:
            rows, scores, source = found[i]
        else:
            rows, scores = _popular(catalog, r.m, excluded[i])
            source = "popular"
        sources = [source] * len(rows)
        extra = _repeat(catalog, r, repeat_n, excluded[i])
        if extra:
            position = {row: j for j, row in enumerate(rows.tolist())}
            added = []
            for row in extra:
                j = position.get(row)
                if j is None:
                    position[row] = len(position)
                    added.append(row)
                    sources.append("repeat")
                else:
                    sources[j] = f"{sources[j]}+repeat"
            rows = np.concatenate([rows, np.asarray(added, np.int64)])
            scores = np.concatenate([scores, np.zeros(len(added))])
        count = np.zeros(len(rows), np.float32)
        age = np.zeros(len(rows), np.float32)
        if r.counts:
            now = r.last_ts or 0.0
            ids = catalog.item_ids
            for j, row in enumerate(rows.tolist()):
                c = r.counts.get(ids[row])
                if c is not None:
                    count[j] = c[0]
                    age[j] = round(max(0.0, now - c[1]), 6)
        out.append(
            Candidates(
                rows=rows,
                scores=np.round(scores.astype(np.float64), 6),
                sources=sources,
                repeat_count=count,
                repeat_age_s=age,
                excluded=excluded[i],
            )
        )
    return out
