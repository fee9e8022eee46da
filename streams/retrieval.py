"""Candidate retrieval for one user: one function per source, and their merge.

Sources (a candidate's ``source`` names the one that found it):

``ann``      warm users: the top-M items by inner product with their (unit)
             streamed embedding
``popular``  cold users (no embedding yet): the most popular items
``repeat``   the user's own most interacted items (ties: the most recent)

Items the user has already seen are removed when ``filter_seen`` is on (off
for catalogs where repeat purchases are the norm), which also turns the
repeat source off. :func:`merge` keeps one candidate per item: the sources
that found it joined with ``+`` (``ann+repeat``), their features merged, and
the score of the first source that found it (repeat candidates score 0).
Every candidate of an item the user interacted with carries
``repeat_count`` and ``repeat_age_s`` (seconds from the item's last event
to the user's last one) in its features.
"""

from __future__ import annotations

import heapq

import numpy as np

from streams.catalog import Catalog
from streams.contracts import Candidate
from streams.state import UserState

__all__ = ["retrieve", "repeat", "merge", "with_repeat_features", "candidates"]


def retrieve(state: UserState, catalog: Catalog, m: int, filter_seen: bool) -> list[Candidate]:
    """Up to ``m`` ``ann`` (or, for a cold user, ``popular``) candidates, best first."""
    seen = state.seen if filter_seen else {}
    user = state.unit_embedding()
    if user is not None:
        rows, scores = catalog.search(user, m + len(seen))
        source = "ann"
    else:
        rows = catalog.popular_rows[: m + len(seen)]
        top = float(catalog.popularity[rows[0]]) if len(rows) else 1.0
        scores = catalog.popularity[rows] / max(top, 1.0)
        source = "popular"
    out: list[Candidate] = []
    for row, score in zip(rows.tolist(), np.asarray(scores).tolist(), strict=True):
        item = catalog.item_ids[row]
        if item in seen:
            continue
        out.append(Candidate(item_id=item, score=round(float(score), 6), source=source))
        if len(out) == m:
            break
    return out


def repeat(state: UserState, catalog: Catalog, n: int) -> list[Candidate]:
    """The user's ``n`` most interacted catalog items (ties: most recent, then item id)."""
    if n <= 0:
        return []
    known = ((item, c) for item, c in state.counts.items() if item in catalog.row)
    top = heapq.nsmallest(n, known, key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [Candidate(item_id=item, score=0.0, source="repeat") for item, _ in top]


def merge(*sources: list[Candidate]) -> list[Candidate]:
    """One candidate per item, in first-found order: sources joined with ``+``,
    features merged, the first source's score."""
    merged: dict[str, Candidate] = {}
    for candidates_ in sources:
        for c in candidates_:
            first = merged.get(c.item_id)
            if first is None:
                merged[c.item_id] = c
            elif c.source not in first.source.split("+"):
                merged[c.item_id] = first.model_copy(
                    update={
                        "source": f"{first.source}+{c.source}",
                        "features": {**c.features, **first.features},
                    }
                )
    return list(merged.values())


def with_repeat_features(state: UserState, candidates_: list[Candidate]) -> list[Candidate]:
    """Candidates whose item the user interacted with gain ``repeat_count``/``repeat_age_s``."""
    now = state.last_ts or 0.0
    out = []
    for c in candidates_:
        count = state.counts.get(c.item_id)
        if count is not None:
            c = c.model_copy(
                update={
                    "features": {
                        **c.features,
                        "repeat_count": count[0],
                        "repeat_age_s": round(max(0.0, now - count[1]), 6),
                    }
                }
            )
        out.append(c)
    return out


def candidates(
    state: UserState, catalog: Catalog, m: int, filter_seen: bool, repeat_n: int
) -> list[Candidate]:
    """Every source for the user, merged: ``m`` ann/popular + ``repeat_n`` repeat
    candidates (none with ``filter_seen``: they are seen), with repeat features."""
    found = merge(
        retrieve(state, catalog, m, filter_seen),
        [] if filter_seen else repeat(state, catalog, repeat_n),
    )
    return with_repeat_features(state, found)
