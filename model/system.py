"""streamrec itself as an evaluated method, running the product's own code in-process.

:class:`StreamrecSystem` is a :class:`~evaluation.baselines.Recommender`
whose every step is the product's: user state is built by feeding each
interaction as its real :class:`~streams.contracts.Event` (type, timestamp,
event id from the dataset) through the dataflow's
:class:`~streams.dataflow.UserStep`; a test list is an explicit request for the
user, built by ``UserStep.rank_request`` (retrieval included) and ranked by
:class:`~model.ranker.Ranker` (LM scoring + the reranker), in batches.
The item signals too: the co-visit and hit records of every fed event go
through the dataflow's ``item-signals`` step (:class:`~streams.signals.SignalsFeed`)
and the rows it would publish fill the table the ranker reads
(``ranker.signals``), as the worker's follower does.

The protocol decides two things the product does not know about:

- Masking. No mask = ``filter_seen=False``; a mask (P1 history, P2 ``new``)
  = ``filter_seen=True``, which removes what the user interacted with (the
  fed history) from the candidates.
- The candidate universe (P1: the items left after filtering; P2: items sold
  before the basket). Items outside it, and any item of the protocol's
  ``exclude`` (the history again, should the product's bounded seen set have
  forgotten some), go into the request's ``exclude``, which retrieval and
  every other candidate source of the ranker (sequence model, co-visitation,
  trending) skip. For P1
  build the catalog over the universe (:func:`universe_catalog`): retrieval
  then ranks exactly the protocol's candidates, as the baselines do.

The protocol speaks integer codes, the product item ids; the ranked ids are
mapped back to codes. A fed coded event is matched to its dataset row by
(user, item, timestamp), rows taken in source order: identical lines (same
user, item and second) may swap event ids, never content.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from corpus.protocols import Events, Recommender, TrainSet
from streams.dataflow import Trigger, UserStep
from streams.signals import CoVisit, Hit, SignalsConfig, SignalsFeed
from streams.state import UserState

if TYPE_CHECKING:
    from corpus.datasets import Dataset
    from model.encoder import Encoder
    from model.ranker import Ranker
    from streams.catalog import Catalog
    from streams.contracts import RankRequest
    from streams.settings import Settings

__all__ = ["StreamrecSystem", "universe_catalog"]

#: Events per update below which no progress bar is shown (P2 feeds one timestamp at a time).
_QUIET_BELOW = 10_000
_SIGNAL_RECORDS = (CoVisit, Hit)


def universe_catalog(
    dataset: Dataset, item_ids: Sequence[str], encoder: Encoder, cache_dir: Path
) -> Path:
    """A catalog folder (``build_catalog``, cached) holding only ``item_ids``.

    For P1's full ranking over the filtered items: on taobao only 727 of 55k
    items survive the 5-core filter, so retrieving over the whole catalog and
    dropping the rest would leave a handful of candidates per user.
    """
    from model.index import build_catalog

    keep = sorted(set(item_ids))
    key = hashlib.sha256((dataset.fingerprint + "\0" + "\0".join(keep)).encode()).hexdigest()
    subset = dataclasses.replace(
        dataset, items={i: dataset.items[i] for i in keep}, fingerprint=key[:16]
    )
    path, _ = build_catalog(subset, encoder, cache_dir, progress=False)
    return path


class StreamrecSystem(Recommender):
    """The product (UserStep state + retrieval, Ranker scoring + reranking) as a method.

    ``ranker`` defaults to ``model.ranker.build_ranker(settings, catalog)``,
    the worker's own ranking path; pass one to evaluate another reranker or
    trade-off. ``batch_size`` requests share one ``Ranker.rank`` call (one LM
    forward pass). Fitting the same :class:`TrainSet` twice reuses the states
    (P1 with and without the mask).

    Only lists are produced (``recommend``/``recommend_many``): the product
    ranks retrieved candidates, it has no score for every item.
    """

    def __init__(
        self,
        dataset: Dataset,
        catalog: Catalog,
        settings: Settings,
        ranker: Ranker | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        if ranker is None:
            from model.ranker import build_ranker

            ranker = build_ranker(settings, catalog)
        self.dataset = dataset
        self.catalog = catalog
        self.ranker = ranker
        self.batch_size = batch_size
        self.progress = progress
        # Feeding: each fed event triggers a rank request, which is discarded here
        # (the protocol asks for one list per test case); retrieval reads the state
        # and never writes it, so retrieving one candidate (and no repeats) only
        # saves time.
        self.step = UserStep(
            catalog=catalog,
            settings=settings.model_copy(
                update={"candidates": 1, "filter_seen": False, "repeat_n": 0}
            ),
        )
        self._signals_cfg = SignalsConfig.from_settings(settings)
        self._ask = {
            masked: UserStep(
                catalog=catalog, settings=settings.model_copy(update={"filter_seen": masked})
            )
            for masked in (False, True)
        }
        inter = dataset.interactions
        self._rows: dict[tuple[str, str, float], list[int]] = {}
        keys = zip(inter.user_id, inter.item_id, inter.ts.tolist(), strict=True)
        for row, key in enumerate(keys):
            self._rows.setdefault(key, []).append(row)
        self._fitted: TrainSet | None = None

    def fit(self, train: TrainSet) -> StreamrecSystem:
        """Feed ``train.events``; the states of the last fit serve the same train set again."""
        if train is not self._fitted:
            super().fit(train)
            self._fitted = train
        return self

    def _reset(self) -> None:
        self._states: dict[str, UserState] = {}
        self.signals = SignalsFeed(self._signals_cfg)
        self.ranker.signals = self.signals.table
        self._taken: dict[tuple[str, str, float], int] = {}
        self._code = {item: code for code, item in enumerate(self.item_ids)}

    def _event_row(self, user: str, item: str, ts: float) -> int:
        key = (user, item, ts)
        taken = self._taken.get(key, 0)
        self._taken[key] = taken + 1
        return self._rows[key][taken]

    def update(self, events: Events) -> None:
        """Feed each event, as the dataset's own Event, through the dataflow's UserStep,
        and its signal records through the item-signals step."""
        self._fitted = None
        inter = self.dataset.interactions
        rows = zip(events.users.tolist(), events.items.tolist(), events.ts.tolist(), strict=True)
        quiet = not self.progress or len(events) < _QUIET_BELOW
        for u, i, t in tqdm(rows, total=len(events), desc="streamrec state", disable=quiet):
            event = inter.event(self._event_row(self.user_ids[u], self.item_ids[i], t))
            state = self._states.get(event.user_id)
            self._states[event.user_id], outputs = self.step.apply(
                state, Trigger(message=event, arrival_ts=event.ts)
            )
            self.signals.add(o for o in outputs if isinstance(o, _SIGNAL_RECORDS))
        self.signals.flush()

    def state(self, user_id: str) -> UserState:
        """The user's state (a fresh, cold one for a user never fed)."""
        return self._states.get(user_id) or UserState()

    def requests(
        self,
        users: Sequence[int] | np.ndarray,
        k: int = 10,
        candidates: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> list[RankRequest]:
        """One explicit rank request per user, restricted to the candidate universe.

        ``candidates`` is a bool mask over item codes (None = every code);
        ``exclude`` (one code array per user) switches the mask on.
        """
        universe = np.ones(self.n_items, dtype=bool) if candidates is None else candidates
        step = self._ask[exclude is not None]
        # Outside: universe items the mask leaves out, and catalog items the protocol
        # does not know at all (a catalog wider than the split).
        code = self._code
        outside = [self.item_ids[c] for c in np.flatnonzero(~universe).tolist()]
        outside += [i for i in self.catalog.item_ids if i not in code]
        out = []
        for row, user in enumerate(np.asarray(users).tolist()):
            user_id = self.user_ids[user]
            state = self.state(user_id)
            request = step.rank_request(
                state=state,
                user_id=user_id,
                request_id=f"eval:{user_id}",
                explicit_request_id=f"eval:{user_id}",
                k=k,
                trigger_event_id=None,
                arrival_ts=state.last_ts or 0.0,
            )
            masked = (
                []
                if exclude is None
                else [self.item_ids[c] for c in np.asarray(exclude[row]).tolist()]
            )
            # Retrieval and every source of the worker skip `exclude`, so the masked
            # and outside items never become candidates.
            drop = list(dict.fromkeys([*request.exclude, *masked, *outside]))
            out.append(request.model_copy(update={"exclude": drop}))
        return out

    def codes(self, ranked: Sequence[tuple[str, float]]) -> np.ndarray:
        """A ranked list of (item_id, score) as item codes."""
        return np.array([self._code[item] for item, _ in ranked], dtype=np.int64)

    def recommend_many(
        self,
        users: np.ndarray,
        k: int = 10,
        candidates: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
        now: float | None = None,
    ) -> list[np.ndarray]:
        """Rank ``batch_size`` requests per ``Ranker.rank`` call; ``now`` is not used
        (the state's clock is the time of the user's last event)."""
        out: list[np.ndarray] = []
        for start in range(0, len(users), self.batch_size):
            part = users[start : start + self.batch_size]
            excl = None if exclude is None else exclude[start : start + self.batch_size]
            ranked = self.ranker.rank(self.requests(part, k, candidates, excl))
            out += [self.codes(items) for items in ranked]
        return out

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        raise NotImplementedError(
            "StreamrecSystem ranks retrieved candidates and has no score for every item: "
            "call recommend or recommend_many"
        )
