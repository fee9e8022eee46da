"""The two evaluation protocols of EVALUATION.md, as integer-coded numpy data.

P1, :func:`leave_last_out`: per-user time order, consecutive duplicates
collapsed, iterative 5-core, last item = test target, second to last =
validation target, everything else (all users, global time order) = training.

P2, :class:`PrequentialReplay`: online-retail invoices replayed in time order;
each step yields the test baskets of one timestamp, scored against the state
before that timestamp, then the step's lines, which the caller feeds to the
method before asking for the next step.

Users and items are integer codes (``user_ids[code]``, ``item_ids[code]``):
users in order of first appearance, items in id order (score ties go to the
lower id).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from corpus.datasets import Interactions

__all__ = [
    "Events",
    "TrainSet",
    "Fold",
    "LeaveLastOut",
    "leave_last_out",
    "Basket",
    "TestBasket",
    "Step",
    "PrequentialReplay",
    "ProtocolError",
    "Recommender",
    "top_k",
]


class ProtocolError(ValueError):
    """The data cannot be evaluated with this protocol (e.g. P2 without baskets)."""


@dataclass(frozen=True)
class Events:
    """Coded interactions in global time order: what a method is fitted on or fed.

    ``baskets`` holds one code per event (events of one invoice share it); None
    means every event is its own basket.
    """

    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    baskets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def empty(cls) -> Events:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros(0, dtype=np.float64), none)

    def take(self, rows: np.ndarray | slice) -> Events:
        """The events at ``rows`` (an index array or slice), as a new :class:`Events`."""
        baskets = None if self.baskets is None else self.baskets[rows]
        return Events(self.users[rows], self.items[rows], self.ts[rows], baskets)


@dataclass(frozen=True)
class TrainSet:
    """What a method is fitted on: the code spaces and the events it may see."""

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    events: Events


@dataclass(frozen=True)
class Fold:
    """One leave-last-out fold: per-user history and target, plus the training events.

    ``history(u)`` is user ``u``'s items in time order without the target (and,
    for validation, without the test item); ``train.events`` is every user's
    history merged in global time order.
    """

    train: TrainSet
    targets: np.ndarray
    history_indptr: np.ndarray
    history_items: np.ndarray

    def history(self, user: int) -> np.ndarray:
        return self.history_items[self.history_indptr[user] : self.history_indptr[user + 1]]

    def item_users(self) -> np.ndarray:
        """Distinct users per item in the histories (for novelty)."""
        users = np.repeat(np.arange(len(self.targets)), np.diff(self.history_indptr))
        pairs = np.unique(users * len(self.train.item_ids) + self.history_items)
        return np.bincount(pairs % len(self.train.item_ids), minlength=len(self.train.item_ids))


@dataclass(frozen=True)
class LeaveLastOut:
    """The P1 split: filtered code spaces, the test fold and the validation fold."""

    user_ids: list[str]
    item_ids: list[str]
    n_interactions: int
    test: Fold
    valid: Fold

    @property
    def repeat_share(self) -> float:
        """Share of test targets the same user interacted with before."""
        repeats = [t in self.test.history(u) for u, t in enumerate(self.test.targets)]
        return float(np.mean(repeats)) if repeats else 0.0


def _codes(values: Sequence[str], by_id: bool = False) -> tuple[np.ndarray, list[str]]:
    """Integer codes and the values they stand for.

    Codes follow first appearance, or with ``by_id`` the ids' natural order
    (numeric when every id is a number), so that score ties, which rank the
    lower code first, go to the lower id whatever the order of the data.
    """
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int64, len(values))
    ids = list(index)
    if by_id:
        numeric = all(v.isdigit() for v in ids)
        order = sorted(range(len(ids)), key=lambda c: (int(ids[c]), ids[c]) if numeric else ids[c])
        recode = np.empty(len(ids), dtype=np.int64)
        recode[order] = np.arange(len(ids))
        codes, ids = recode[codes], [ids[c] for c in order]
    return codes, ids


def _collapse(users: np.ndarray, items: np.ndarray, keep: np.ndarray) -> None:
    """Drop (in ``keep``) kept events that repeat the user's previous kept item."""
    rows = np.flatnonzero(keep)
    repeat = (users[rows[1:]] == users[rows[:-1]]) & (items[rows[1:]] == items[rows[:-1]])
    keep[rows[1:][repeat]] = False


def leave_last_out(interactions: Interactions, min_count: int = 5) -> LeaveLastOut:
    """Build the P1 split of EVALUATION.md from time-ordered interactions.

    1. Per user, events in time order (ties: source order), consecutive
       duplicates of one item collapsed.
    2. Users and items with fewer than ``min_count`` events dropped together,
       then collapse and count again until nothing changes.
    3. Per user: test target = last item, validation target = second to last.
    """
    users, _ = _codes(interactions.user_id)
    items, _ = _codes(interactions.item_id)
    # Stable sort by user keeps time order, and source order within a timestamp.
    order = np.argsort(users, kind="stable")
    u, i = users[order], items[order]
    keep = np.ones(len(order), dtype=bool)
    while True:
        _collapse(u, i, keep)
        rows = np.flatnonzero(keep)
        few_users = np.bincount(u[rows]) < min_count
        few_items = np.bincount(i[rows]) < min_count
        drop = few_users[u[rows]] | few_items[i[rows]]
        if not drop.any():
            break
        keep[rows[drop]] = False

    # Recode the survivors in time order, then group them by user again.
    pos = np.sort(order[keep])
    u_time, user_ids = _codes([interactions.user_id[p] for p in pos])
    i_time, item_ids = _codes([interactions.item_id[p] for p in pos], by_id=True)
    regroup = np.argsort(u_time, kind="stable")
    u_grp, i_grp, pos = u_time[regroup], i_time[regroup], pos[regroup]
    ts_grp = np.asarray(interactions.ts, dtype=np.float64)[pos]

    n_users = len(user_ids)
    ends = np.searchsorted(u_grp, np.arange(n_users), side="right")

    def fold(cut: int) -> Fold:
        """Hold out each user's last ``cut`` events; target = the first held out."""
        held = np.zeros(len(u_grp), dtype=bool)
        for back in range(1, cut + 1):
            held[ends - back] = True
        rows = np.flatnonzero(~held)
        in_time = rows[np.argsort(pos[rows], kind="stable")]
        train = TrainSet(
            user_ids, item_ids, Events(u_grp[in_time], i_grp[in_time], ts_grp[in_time])
        )
        lengths = np.bincount(u_grp[rows], minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return Fold(train, i_grp[ends - cut], indptr, i_grp[rows])

    return LeaveLastOut(user_ids, item_ids, len(u_grp), fold(1), fold(2))


@dataclass(frozen=True)
class Basket:
    """One invoice: its user, time (its first line's), coded lines and distinct items."""

    code: int
    user: int
    time: float
    lines: Events
    items: np.ndarray


@dataclass(frozen=True)
class TestBasket:
    """A basket to score, with the state a method may use for it.

    ``candidates`` marks the items sold by anyone before the basket; ``earlier``
    holds the items its user bought before (the ``new`` variant excludes them).
    """

    basket: Basket
    candidates: np.ndarray
    earlier: np.ndarray

    @property
    def new_items(self) -> np.ndarray:
        """The basket's items the user never bought before (``new`` relevant set)."""
        return np.setdiff1d(self.basket.items, self.earlier)


@dataclass(frozen=True)
class Step:
    """One timestamp of the replay: score ``tests`` first, then feed ``events``.

    ``item_users``/``n_users`` are distinct users per item and users seen so far,
    before this step (the novelty reference at scoring time).
    """

    time: float
    tests: list[TestBasket]
    baskets: list[Basket]
    events: Events
    item_users: np.ndarray
    n_users: int


class PrequentialReplay:
    """P2 of EVALUATION.md: invoices in time order, scored before they are seen.

    Iterating yields one :class:`Step` per invoice timestamp. Baskets sharing a
    timestamp are all scored before any is added: the caller scores
    ``step.tests``, then calls ``method.update(step.events)``; the replay's own
    state (what was sold, who bought what) advances when the next step is asked
    for. Test baskets are dated ``start`` or later and their customer bought
    at least once before.

    >>> from types import SimpleNamespace as NS
    >>> data = NS(user_id=["a", "a", "b", "a"], item_id=["x", "y", "x", "z"],
    ...           ts=np.array([0.0, 0.0, 5.0, 9.0]), basket=["1", "1", "2", "3"])
    >>> replay = PrequentialReplay(data, start=1.0)
    >>> [(s.time, [t.basket.code for t in s.tests]) for s in replay]
    [(0.0, []), (5.0, []), (9.0, [2])]
    """

    def __init__(self, interactions: Interactions, start: str | float = "2011-11-01") -> None:
        if any(b is None for b in interactions.basket):
            raise ProtocolError(
                "prequential replay needs a basket (invoice) on every interaction; "
                "only online-retail has them: use leave_last_out for other data"
            )
        if isinstance(start, str):
            start = datetime.fromisoformat(start).replace(tzinfo=timezone.utc).timestamp()
        self.start = float(start)
        users, self.user_ids = _codes(interactions.user_id)
        items, self.item_ids = _codes(interactions.item_id, by_id=True)
        baskets, _ = _codes(interactions.basket)
        ts = np.asarray(interactions.ts, dtype=np.float64)
        lines = Events(users, items, ts, baskets)
        # Events are time-ordered, so a basket's first line is its earliest one and
        # a stable sort by basket code keeps the invoices in order of their time.
        by_basket = np.argsort(baskets, kind="stable")
        bounds = np.flatnonzero(np.diff(baskets[by_basket])) + 1
        self.baskets: list[Basket] = []
        for code, rows in enumerate(np.split(by_basket, bounds)):
            first = rows[0]
            self.baskets.append(
                Basket(
                    code,
                    int(users[first]),
                    float(ts[first]),
                    lines.take(rows),
                    items[rows][np.sort(np.unique(items[rows], return_index=True)[1])],
                )
            )
        self._first_time = np.full(len(self.user_ids), np.inf)
        for b in self.baskets:
            self._first_time[b.user] = min(self._first_time[b.user], b.time)

    def train_set(self) -> TrainSet:
        """The empty starting point every method is fitted on before the replay."""
        return TrainSet(self.user_ids, self.item_ids, Events.empty())

    def is_test(self, basket: Basket) -> bool:
        return basket.time >= self.start and self._first_time[basket.user] < basket.time

    @property
    def n_tests(self) -> int:
        return sum(self.is_test(b) for b in self.baskets)

    def __iter__(self) -> Iterator[Step]:
        n_items = len(self.item_ids)
        sold = np.zeros(n_items, dtype=bool)
        bought: list[set[int]] = [set() for _ in self.user_ids]
        item_users = np.zeros(n_items, dtype=np.int64)
        n_users = 0
        times = np.array([b.time for b in self.baskets])
        bounds = np.flatnonzero(np.diff(times)) + 1
        for group in np.split(np.arange(len(self.baskets)), bounds):
            baskets = [self.baskets[g] for g in group]
            tests = [
                TestBasket(b, sold.copy(), np.array(sorted(bought[b.user]), dtype=np.int64))
                for b in baskets
                if self.is_test(b)
            ]
            events = _concat([b.lines for b in baskets])
            yield Step(baskets[0].time, tests, baskets, events, item_users.copy(), n_users)
            sold[events.items] = True
            for b in baskets:
                mine = bought[b.user]
                n_users += not mine
                new = [i for i in b.items.tolist() if i not in mine]
                item_users[new] += 1
                mine.update(new)


def _concat(parts: list[Events]) -> Events:
    if len(parts) == 1:
        return parts[0]
    baskets = [p.baskets for p in parts]
    return Events(
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.items for p in parts]),
        np.concatenate([p.ts for p in parts]),
        None if any(b is None for b in baskets) else np.concatenate(baskets),
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Codes of the ``k`` highest finite scores, best first; ties go to the lower code.

    >>> top_k(np.array([0.5, 2.0, 0.5, -np.inf, 1.0]), 3)
    array([1, 4, 0])
    """
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > k:
        kth = np.partition(scores[finite], len(finite) - k)[len(finite) - k]
        above = finite[scores[finite] > kth]
        ties = finite[scores[finite] == kth][: k - len(above)]
        finite = np.concatenate([above, ties])
    return finite[np.lexsort((finite, -scores[finite]))][:k]


class Recommender:
    """Base class: ``fit``/``update`` feed events, ``scores``/``recommend`` rank items.

    Hooks for subclasses: ``_reset()`` (empty state for ``self.user_ids`` and
    ``self.item_ids``), ``update(events)`` and ``scores(users, now)``.
    """

    def fit(self, train: TrainSet) -> Recommender:
        """Forget everything, then learn from ``train.events``."""
        self.user_ids, self.item_ids = train.user_ids, train.item_ids
        self.n_items = len(train.item_ids)
        self._reset()
        self.update(train.events)
        return self

    def _reset(self) -> None:
        raise NotImplementedError

    def update(self, events: Events) -> None:
        """Learn from new events (time-ordered, all later than anything seen)."""
        raise NotImplementedError

    def scores(self, users: np.ndarray, now: float | None = None) -> np.ndarray:
        """``(len(users), n_items)`` scores; higher is better. ``now`` = the query time."""
        raise NotImplementedError

    def recommend(
        self,
        user: int,
        k: int = 10,
        candidates: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        now: float | None = None,
    ) -> np.ndarray:
        """The top ``k`` item codes for ``user`` among ``candidates`` (a bool mask over
        items; None = all), never one of ``exclude`` (item codes)."""
        users = np.array([user])
        excludes = None if exclude is None else [exclude]
        return self.recommend_many(users, k, candidates, excludes, now)[0]

    def recommend_many(
        self,
        users: np.ndarray,
        k: int = 10,
        candidates: np.ndarray | None = None,
        exclude: Sequence[np.ndarray] | None = None,
        now: float | None = None,
    ) -> list[np.ndarray]:
        """:meth:`recommend` for a batch; ``exclude`` holds one code array per user.

        One ``scores`` call per batch lets a method use matrix products.
        """
        s = np.array(self.scores(users, now), dtype=np.float64)
        if candidates is not None:
            s[:, ~candidates] = -np.inf
        if exclude is not None:
            for row, codes in enumerate(exclude):
                s[row, codes] = -np.inf
        return [top_k(row, k) for row in s]
