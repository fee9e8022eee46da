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
from collections.abc import Sequence

import numpy as np

from model.encoder import Encoder
from streams.catalog import Catalog
from streams.contracts import RankRequest

__all__ = ["Scorer", "TwoTowerScorer", "Scored"]

#: (catalog rows of the candidates, their scores), aligned.
Scored = tuple[np.ndarray, np.ndarray]


class Scorer(ABC):
    """Scores every candidate of a batch of rank requests."""

    @abstractmethod
    def score(self, requests: Sequence[RankRequest]) -> list[Scored]: ...


class TwoTowerScorer(Scorer):
    """LM history query + streamed embedding, dot product with item vectors."""

    def __init__(
        self, encoder: Encoder, catalog: Catalog, blend: float = 0.5, history_items: int = 10
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

    def history_text(self, recent_items: Sequence[str]) -> str | None:
        """The text the user tower reads: recent item titles, newest first."""
        titles = [
            self.catalog.titles[self.catalog.row[i]]
            for i in recent_items[: self.history_items]
            if i in self.catalog.row
        ]
        return " ; ".join(titles) if titles else None

    def score(self, requests: Sequence[RankRequest]) -> list[Scored]:
        texts = [self.history_text(r.recent_items) for r in requests]
        todo = [i for i, t in enumerate(texts) if t is not None]
        queries: dict[int, np.ndarray] = {}
        if todo:
            encoded = self.encoder.encode([texts[i] for i in todo])
            queries = dict(zip(todo, encoded, strict=True))
        return [self._score_one(r, queries.get(i)) for i, r in enumerate(requests)]

    def _score_one(self, request: RankRequest, query: np.ndarray | None) -> Scored:
        pairs = [(self.catalog.row.get(c.item_id), c.score) for c in request.candidates]
        rows = np.array([r for r, _ in pairs if r is not None], dtype=np.int64)
        retrieval = np.array([s for r, s in pairs if r is not None], dtype=np.float32)
        vectors = self.catalog.vectors[rows]
        parts: list[tuple[float, np.ndarray]] = []
        if query is not None:
            parts.append((self.blend, vectors @ query))
        if request.user_vector is not None:
            parts.append((1.0 - self.blend, vectors @ np.asarray(request.user_vector, np.float32)))
        if not parts:
            return rows, retrieval
        total = sum(w for w, _ in parts)
        scores = sum(w * s for w, s in parts) / total
        return rows, scores.astype(np.float32)
