"""The reference baselines of EVALUATION.md behind one small base class.

A :class:`Recommender` is fitted on a :class:`~corpus.protocols.TrainSet`
(``fit`` = ``_reset`` + ``update`` with the training events), so the same class
serves P1 (one fit) and P2 (fit on nothing, then ``update`` per timestamp).
Subclasses implement ``_reset``, ``update`` and ``scores``; ``recommend`` masks
and ranks. Scores are over the item codes of the train set.
"""

from __future__ import annotations

import numpy as np

from corpus.protocols import Events, Recommender, TrainSet, top_k
from evaluation.quality import ReferenceEmbeddings

__all__ = [
    "Recommender",
    "Popularity",
    "RepeatBuy",
    "ItemKNN",
    "Content",
    "default_methods",
    "top_k",
]

_DAY_S = 86_400.0


class _UserItems:
    """Per user: item -> [baskets bought in, last event sequence number, last basket]."""

    def __init__(self, n_users: int) -> None:
        self.items: list[dict[int, list[int]]] = [{} for _ in range(n_users)]
        self.seq = 0

    def update(self, events: Events) -> list[tuple[int, int]]:
        """Record ``events``; returns the (user, item) pairs seen for the first time."""
        n = len(events)
        seqs = range(self.seq, self.seq + n)
        baskets = seqs if events.baskets is None else events.baskets.tolist()
        new: list[tuple[int, int]] = []
        rows = zip(events.users.tolist(), events.items.tolist(), baskets, seqs, strict=True)
        for u, i, b, s in rows:
            entry = self.items[u].get(i)
            if entry is None:
                self.items[u][i] = [1, s, b]
                new.append((u, i))
            else:
                entry[0] += entry[2] != b
                entry[1], entry[2] = s, b
        self.seq += n
        return new

    def recent(self, user: int, n: int) -> np.ndarray:
        """The user's last ``n`` distinct items, most recent first."""
        mine = self.items[user]
        return np.array(sorted(mine, key=lambda i: -mine[i][1])[:n], dtype=np.int64)


class Popularity(Recommender):
    """Most interacted items: all-time counts, or counts over a trailing window.

    With ``window_days`` (P2: 30), the score is the count of events in the
    ``window_days`` before ``now``, ties broken by all-time counts.
    """

    def __init__(self, window_days: float | None = None) -> None:
        self.window_days = window_days

    def _reset(self) -> None:
        self._total = np.zeros(self.n_items, dtype=np.float64)
        self._ts: list[np.ndarray] = []
        self._items: list[np.ndarray] = []

    def update(self, events: Events) -> None:
        self._total += np.bincount(events.items, minlength=self.n_items)
        if self.window_days is not None and len(events):
            self._ts.append(events.ts)
            self._items.append(events.items)

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        return np.broadcast_to(self._scores(now), (len(users), self.n_items))

    def _scores(self, now: float | None) -> np.ndarray:
        if self.window_days is None or not self._ts:
            return self._total
        if len(self._ts) > 1:
            self._ts, self._items = [np.concatenate(self._ts)], [np.concatenate(self._items)]
        ts, items = self._ts[0], self._items[0]
        now = float(ts[-1]) if now is None else now
        recent = items[np.searchsorted(ts, now - self.window_days * _DAY_S) :]
        window = np.bincount(recent, minlength=self.n_items).astype(np.float64)
        return window + self._total / (self._total.max() + 1.0)


class RepeatBuy(Recommender):
    """The user's own items by how often they were bought (ties: most recent),
    padded by ``popularity``.

    "How often" counts baskets: events of one basket count once (P2 invoice
    counts); without baskets every event counts.
    """

    def __init__(self, popularity: Popularity | None = None) -> None:
        self.popularity = popularity if popularity is not None else Popularity()

    def _reset(self) -> None:
        self.popularity.fit(TrainSet(self.user_ids, self.item_ids, Events.empty()))
        self._history = _UserItems(len(self.user_ids))

    def update(self, events: Events) -> None:
        self.popularity.update(events)
        self._history.update(events)

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        pad = self.popularity.scores(users, now)
        out = pad / (pad.max(initial=0.0) + 1.0)  # in [0, 1): below every own item
        recency = float(self._history.seq + 1)
        for row, user in enumerate(users.tolist()):
            mine = self._history.items[user]
            if mine:
                codes = np.fromiter(mine, np.int64, len(mine))
                stats = np.array(list(mine.values()), dtype=np.float64)
                out[row, codes] = 1.0 + stats[:, 0] + stats[:, 1] / recency
        return out


class ItemKNN(Recommender):
    """Item-based kNN: cosine over the binary user-item matrix; a user's score for
    an item is the sum of its similarities to the user's last ``n_recent``
    distinct items.

    The co-occurrence matrix ``C = X^T X`` is kept dense (items x items, float32)
    and grown per user with dense block updates: a user's new items ``N`` on
    top of their old ones add ``N^T N + N^T X + X^T N``, which serves a one-shot
    fit and a per-basket replay alike (a sparse product per basket costs more in
    scipy overhead than the arithmetic). An item's similarity with itself is not part of the sum.
    """

    def __init__(self, n_recent: int = 20) -> None:
        self.n_recent = n_recent

    def _reset(self) -> None:
        self._co = np.zeros((self.n_items, self.n_items), dtype=np.float32)
        self._history = _UserItems(len(self.user_ids))

    def update(self, events: Events) -> None:
        new = self._history.update(events)
        by_user: dict[int, list[int]] = {}
        for user, item in new:
            by_user.setdefault(user, []).append(item)
        for user, added in by_user.items():
            # C = X^T X grows by N^T N + N^T X_old + X_old^T N for the user's new items N.
            fresh = np.array(added, dtype=np.int64)
            items = np.fromiter(self._history.items[user], np.int64)
            old = items[~np.isin(items, fresh)]
            self._co[np.ix_(fresh, items)] += 1.0
            self._co[np.ix_(old, fresh)] += 1.0

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        diag = np.diag(self._co)
        inv = np.divide(1.0, np.sqrt(diag), out=np.zeros_like(diag), where=diag > 0)
        out = np.zeros((len(users), self.n_items), dtype=np.float32)
        for row, user in enumerate(users.tolist()):
            recent = self._history.recent(user, self.n_recent)
            if len(recent):
                sims = self._co[recent] * inv[recent, None] * inv
                # Self-similarity is left out: an item is not its own neighbour.
                sims[np.arange(len(recent)), recent] = 0.0
                out[row] = sims.sum(axis=0)
        return out


class Content(Recommender):
    """Pretrained-text content baseline: the user is the mean of the reference
    embeddings of their last ``n_recent`` distinct items; score = cosine."""

    def __init__(self, embeddings: ReferenceEmbeddings, n_recent: int = 10) -> None:
        self.embeddings = embeddings
        self.n_recent = n_recent

    def _reset(self) -> None:
        self._vectors = self.embeddings(list(self.item_ids))
        self._history = _UserItems(len(self.user_ids))

    def update(self, events: Events) -> None:
        self._history.update(events)

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        profiles = np.zeros((len(users), self._vectors.shape[1]), dtype=np.float32)
        for row, user in enumerate(users.tolist()):
            recent = self._history.recent(user, self.n_recent)
            if len(recent):
                profiles[row] = self._vectors[recent].mean(axis=0)
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        cosines = (profiles / np.maximum(norms, 1e-12)) @ self._vectors.T
        # Items with the same text have the same vector, but BLAS blocking gives their
        # cosines different rounding noise; rounded, they tie and go by id like elsewhere.
        return np.round(cosines, 6)


def default_methods(embeddings: ReferenceEmbeddings, protocol: str) -> dict[str, Recommender]:
    """The baselines of EVALUATION.md's tables for ``protocol`` ("p1" or "p2")."""
    if protocol == "p2":
        return {
            "popularity": Popularity(window_days=30),
            "repeat-buy": RepeatBuy(Popularity(window_days=30)),
            "item-knn": ItemKNN(),
        }
    return {
        "popularity": Popularity(),
        "repeat-buy": RepeatBuy(),
        "item-knn": ItemKNN(),
        "content": Content(embeddings),
    }
