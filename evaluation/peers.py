"""Published-method peers for the harness: ALS and BPR matrix factorisation (``implicit``).

Both are :class:`~evaluation.baselines.Recommender` subclasses, so they run
through the same protocols, candidates and metrics as the baselines:

- P1 (``fit`` on the training fold): one factorisation of the user-item matrix
  of the training events; ``scores`` = user factors . item factors over every
  item code.
- P2 (``fit`` on nothing, then ``update`` per timestamp): a nightly retrain.
  When the first events of a new UTC day arrive, the model is due for a refit
  on everything fed before them; the refit runs at the next ``scores`` call (no
  figure changes: nothing reads the model in between, and in the replay nothing
  is scored before 2011-11-01, so the months before cost no refits). Between
  refits, ALS folds in every user whose row changed since the refit with
  implicit's ``recalculate_user`` (an exact least-squares solve against the
  fixed item factors); implicit's BPR has no ``recalculate_user``, so it keeps
  the user's factors from the last refit. A user with no factors (BPR: no
  events before the last refit; either: no events at all) gets the
  ``popularity`` order.

The matrix: one row per user code, one column per item code, and the entry is
the number of the user's events with the item (so P1 repeat purchases, which
survive the consecutive-duplicate collapse only when something came between,
count), or 1 with ``weighting="binary"``. implicit's ALS uses ``alpha * entry``
as the confidence of an observed pair (unobserved pairs: confidence 1, target
0). implicit's BPR only samples which pairs are observed, so for it the weights
do not matter: it is binary whatever ``weighting`` says.

Fixed seeds (``random_state``) and ``num_threads=2`` (the machine's cores).
ALS is deterministic with any thread count (users, then items, are solved
independently); BPR's SGD runs Hogwild-style over the threads, so two runs
differ in the last digits.

Hyper-parameters were chosen on the P1 validation fold of online-retail
(``LeaveLastOut.valid``: every user's second-to-last item as the target, their
last item unseen), no mask, never on the test fold; the sweep and its figures
are in docs/eval/peers/README.md and in each class's docstring.
"""

from __future__ import annotations

import math

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from scipy import sparse
from threadpoolctl import threadpool_limits

from corpus.protocols import Events, TrainSet
from evaluation.baselines import Popularity, Recommender

__all__ = ["ALS", "BPR", "peer_methods", "PEERS"]

#: Names under which ``streamrec evaluate --methods`` knows the peers.
PEERS = ("als", "bpr")
_DAY_S = 86_400


class _Factorization(Recommender):
    """Shared machinery: the event log, the day-change refit, fold-in and scoring."""

    #: Whether the implicit model can fold a user in (``recalculate_user``).
    fold_in = False

    def __init__(
        self,
        weighting: str = "count",
        popularity: Popularity | None = None,
        num_threads: int = 2,
        seed: int = 42,
    ) -> None:
        if weighting not in ("count", "binary"):
            raise ValueError(f"weighting must be 'count' or 'binary', not {weighting!r}")
        self.weighting = weighting
        self.popularity = popularity if popularity is not None else Popularity()
        self.num_threads = num_threads
        self.seed = seed

    # -- the implicit model, per subclass ---------------------------------------------

    def _model(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- Recommender hooks ------------------------------------------------------------

    def fit(self, train: TrainSet) -> _Factorization:
        super().fit(train)
        self._due = self._n_fed  # P1: one fit on every training event
        return self

    def _reset(self) -> None:
        self.popularity.fit(TrainSet(self.user_ids, self.item_ids, Events.empty()))
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_fed = 0
        self._day: int | None = None
        self._due = 0  # events the next refit is over
        self._fitted = 0  # events the current factors are over
        self._folded = 0  # events already folded in (ALS)
        self._rows: list[dict[int, int]] = [{} for _ in self.user_ids]
        self._fitted_model = None
        self._user_factors: np.ndarray | None = None
        self._has_factors = np.zeros(len(self.user_ids), dtype=bool)

    def update(self, events: Events) -> None:
        if not len(events):
            return
        self.popularity.update(events)
        first_day = math.floor(float(events.ts[0]) / _DAY_S)
        if self._day is not None and first_day > self._day:
            self._due = self._n_fed  # nightly retrain over everything before today
        self._day = math.floor(float(events.ts[-1]) / _DAY_S)
        users, items = events.users.astype(np.int64), events.items.astype(np.int64)
        self._chunks.append((users, items))
        self._n_fed += len(events)
        if self.fold_in:
            for u, i in zip(users.tolist(), items.tolist(), strict=True):
                row = self._rows[u]
                row[i] = row.get(i, 0) + 1

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        self._refresh()
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.n_items), dtype=np.float64)
        known = self._has_factors[users]
        if known.any():
            assert self._user_factors is not None and self._fitted_model is not None
            items = np.asarray(self._fitted_model.item_factors)
            out[known] = self._user_factors[users[known]] @ items.T
        if not known.all():
            out[~known] = self.popularity.scores(users[~known], now)
        return out

    # -- internals --------------------------------------------------------------------

    def _events(self, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``stop`` fed events as (users, items)."""
        if len(self._chunks) > 1:
            users, items = zip(*self._chunks, strict=True)
            self._chunks = [(np.concatenate(users), np.concatenate(items))]
        if not self._chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        users, items = self._chunks[0]
        return users[:stop], items[:stop]

    def _matrix(self, users: np.ndarray, items: np.ndarray, n_rows: int) -> sparse.csr_matrix:
        """``(n_rows, n_items)`` float32 CSR of event counts (or 1s when binary)."""
        ones = np.ones(len(users), dtype=np.float32)
        m = sparse.csr_matrix((ones, (users, items)), shape=(n_rows, self.n_items))
        m.sum_duplicates()
        if self.weighting == "binary":
            m.data[:] = 1.0
        return m

    def _refresh(self) -> None:
        """Refit if one is due, then fold in the users whose rows changed since."""
        if self._due > self._fitted:
            users, items = self._events(self._due)
            with threadpool_limits(1, "blas"):  # implicit warns, and is slower, otherwise
                model = self._model()
                model.fit(self._matrix(users, items, len(self.user_ids)), show_progress=False)
            self._fitted_model = model
            self._user_factors = np.array(model.user_factors, copy=True)
            self._has_factors = np.zeros(len(self.user_ids), dtype=bool)
            self._has_factors[np.unique(users)] = True
            self._fitted = self._folded = self._due
        if self.fold_in and self._fitted_model is not None and self._n_fed > self._folded:
            users, _ = self._events(self._n_fed)
            changed = np.unique(users[self._folded :])
            rows = [self._rows[u] for u in changed.tolist()]
            indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
            indices = np.fromiter((i for r in rows for i in r), np.int32, int(indptr[-1]))
            data = np.fromiter((c for r in rows for c in r.values()), np.float32, len(indices))
            if self.weighting == "binary":
                data[:] = 1.0
            matrix = sparse.csr_matrix((data, indices, indptr), shape=(len(rows), self.n_items))
            with threadpool_limits(1, "blas"):
                factors = self._fitted_model.recalculate_user(changed, matrix)
            assert self._user_factors is not None
            self._user_factors[changed] = factors
            self._has_factors[changed] = True
            self._folded = self._n_fed


class ALS(_Factorization):
    """Weighted matrix factorisation by alternating least squares (Hu, Koren and
    Volinsky 2008), implicit's ``AlternatingLeastSquares`` with conjugate gradient.

    Defaults chosen on online-retail's P1 validation fold (Recall@10 / NDCG@10,
    no mask; masked in brackets), 4,095 users, so one standard error is about
    .005 Recall and differences below that are noise:

    - 64 factors, regularization .05, 20 iterations: binary, alpha 1 / 5 / 20:
      .1228/.0618, .1233/.0588, .1094/.0533; counts, alpha 1 / 2 / 5 / 20:
      .1260/.0630, .1319/.0636, .1263/.0597, .1162/.0544. Counts beat binary;
      a high alpha pushes the user's own frequent items over everything else.
    - counts, alpha 2: regularization .01 / .1 (64 factors) .1311 / .1304;
      15 / 30 iterations .1304 / .1331; 128 factors .1314/.0633 (.1053/.0564).
    - **128 factors, regularization .1, alpha 1, counts, 20 iterations:
      .1355/.0645 (.1040/.0547)**, the best no-mask Recall and within noise of
      the best masked one; 30 iterations .1353/.0648 for 50% more time; binary
      at alpha 1 / 5 .1277 / .1253.

    The fit on the 389k training events takes about 3 s on 2 threads.
    """

    fold_in = True

    def __init__(
        self,
        factors: int = 128,
        regularization: float = 0.1,
        alpha: float = 1.0,
        iterations: int = 20,
        weighting: str = "count",
        popularity: Popularity | None = None,
        num_threads: int = 2,
        seed: int = 42,
    ) -> None:
        super().__init__(weighting, popularity, num_threads, seed)
        self.factors, self.regularization = factors, regularization
        self.alpha, self.iterations = alpha, iterations

    def _model(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.seed,
        )


class BPR(_Factorization):
    """Bayesian personalised ranking (Rendle et al. 2009), implicit's
    ``BayesianPersonalizedRanking``: SGD on sampled (user, bought, not bought)
    triples; the item factors carry a bias term, so ``scores`` includes it.

    Defaults chosen on online-retail's P1 validation fold (Recall@10 / NDCG@10,
    no mask; masked in brackets; one standard error is about .005), 100
    iterations each:

    - 64 factors, regularization .01: learning rate .01 / .05 .1013/.0508,
      .1023/.0495; at .05, regularization .001 .0904/.0456.
    - 128 factors, regularization .01: learning rate .01 / .03 / .05
      .1053/.0520, **.1096/.0546 (.0894/.0474)**, .1084/.0532 (.0877/.0484);
      150 iterations at .05 .1050/.0499; regularization .03 at .05 .1001/.0512.

    Chosen: 128 factors, learning rate .03, regularization .01, 100 iterations
    (about 15 s on 2 threads). Binary (BPR samples observed pairs; counts do
    not enter).
    """

    def __init__(
        self,
        factors: int = 128,
        learning_rate: float = 0.03,
        regularization: float = 0.01,
        iterations: int = 100,
        popularity: Popularity | None = None,
        num_threads: int = 2,
        seed: int = 42,
    ) -> None:
        super().__init__("binary", popularity, num_threads, seed)
        self.factors, self.learning_rate = factors, learning_rate
        self.regularization, self.iterations = regularization, iterations

    def _model(self) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.seed,
        )


def peer_methods(protocol: str) -> dict[str, Recommender]:
    """ALS and BPR for ``protocol`` ("p1" or "p2"): P2's unknown users get the
    trailing-30-day popularity of the P2 baseline, P1's the all-time one."""
    window = 30 if protocol == "p2" else None
    return {
        "als": ALS(popularity=Popularity(window_days=window)),
        "bpr": BPR(popularity=Popularity(window_days=window)),
    }
