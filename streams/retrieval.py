"""Candidate retrieval for one user: FAISS over item vectors, or popularity.

Warm users get the top-M items by inner product with their (unit) streamed
embedding; cold users (no embedding yet) get the most popular items. Items the
user has already seen are removed when ``filter_seen`` is on (off for
catalogs where repeat purchases are the norm).
"""

from __future__ import annotations

import numpy as np

from streams.catalog import Catalog
from streams.contracts import Candidate
from streams.state import UserState

__all__ = ["retrieve"]


def retrieve(state: UserState, catalog: Catalog, m: int, filter_seen: bool) -> list[Candidate]:
    """Up to ``m`` candidates for the user, best first, each tagged with its source."""
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
