"""Candidate scoring with the language model (two-tower).

User tower: the LM reads the user's recent item texts (most recent first, one
sequence) -> a query vector. Item tower: the catalog's item vectors, made by
the same LM. A candidate's score blends the LM query with the streamed user
embedding from the dataflow:

    score = blend * <q_lm, v> + (1 - blend) * <u_stream, v>

Either side may be missing (a cold user has neither: the retrieval score,
popularity, is kept). ``Scorer`` is the base class for pluggable scorers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from model.encoder import Encoder
from streams.catalog import Catalog
from streams.contracts import RankRequest
from streams.retrieval import retrieve

__all__ = ["Scorer", "TwoTowerScorer", "Scored", "history_text"]

#: (catalog rows of the candidates, their scores), aligned.
Scored = tuple[np.ndarray, np.ndarray]


def history_text(
    recent_items: Sequence[str], title_of: Callable[[str], str | None], n: int
) -> str | None:
    """The text the user tower reads: the first ``n`` recent items' titles (newest
    first, items without a title skipped), joined by `` ; ``. Fine-tuning builds
    its training contexts with this same function."""
    titles = [t for t in map(title_of, recent_items[:n]) if t is not None]
    return " ; ".join(titles) if titles else None


class Scorer(ABC):
    """Scores every candidate of a batch of rank requests."""

    @abstractmethod
    def score(self, requests: Sequence[RankRequest]) -> list[Scored]: ...


class TwoTowerScorer(Scorer):
    """LM history query + streamed embedding, dot product with item vectors."""

    def __init__(
        self,
        encoder: Encoder,
        catalog: Catalog,
        blend: float = 0.5,
        history_items: int = 10,
        repeat_n: int = 50,
    ) -> None:
        if encoder.dim != catalog.dim:
            raise ValueError(
                f"encoder dim {encoder.dim} != catalog dim {catalog.dim}: the catalog was "
                "built with another model; rebuild it with `streamrec index`"
            )
        self.encoder = encoder
        self.catalog = catalog
        self.blend = blend
        self.history_items = history_items
        self.repeat_n = repeat_n

    def history_text(self, recent_items: Sequence[str]) -> str | None:
        """The text the user tower reads: recent item titles, newest first."""
        return history_text(recent_items, self._title, self.history_items)

    def _title(self, item_id: str) -> str | None:
        row = self.catalog.row.get(item_id)
        return None if row is None else self.catalog.titles[row]

    def queries(self, requests: Sequence[RankRequest]) -> list[np.ndarray | None]:
        """The LM query vector of each request (None: no titles, or blend 0), one
        forward pass for the batch."""
        # blend 0 = streamed embedding only: skip the LM forward pass entirely.
        texts = [self.history_text(r.recent_items) if self.blend > 0 else None for r in requests]
        todo = [i for i, t in enumerate(texts) if t is not None]
        out: list[np.ndarray | None] = [None] * len(requests)
        if todo:
            for i, vec in zip(todo, self.encoder.encode([texts[i] for i in todo]), strict=True):
                out[i] = vec
        return out

    def score(self, requests: Sequence[RankRequest]) -> list[Scored]:
        """Retrieve each request's candidates (one batched product) and score them."""
        retrieved = retrieve(self.catalog, requests, self.repeat_n)
        out = []
        for r, q, found in zip(requests, self.queries(requests), retrieved, strict=True):
            scores = self.score_rows(r, found.rows, q)
            out.append((found.rows, found.scores if scores is None else scores))
        return out

    def score_rows(
        self, request: RankRequest, rows: np.ndarray, query: np.ndarray | None
    ) -> np.ndarray | None:
        """The blended LM score of catalog ``rows`` for the request (None: the user
        has neither an LM query nor a streamed embedding)."""
        vectors = self.catalog.vectors[rows]
        parts: list[tuple[float, np.ndarray]] = []
        if query is not None:
            parts.append((self.blend, vectors @ query))
        user = request.vector()
        if user is not None:
            parts.append((1.0 - self.blend, vectors @ user))
        if not parts:
            return None
        total = sum(w for w, _ in parts)
        if total == 0:  # only the side the blend gives no weight exists: use it alone
            parts, total = [(1.0, s) for _, s in parts], float(len(parts))
        return (sum(w * s for w, s in parts) / total).astype(np.float32)
