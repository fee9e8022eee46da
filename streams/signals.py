"""Streaming item signals: co-visitation neighbours and trend counts (pure: no Bytewax).

Per applied event the ``user-state`` step emits :func:`records`: a
:class:`CoVisit` from each of the user's ``covis_window`` previous distinct
items to the event's item (weight ``1 / distance``, distance 1 = the item
just before), and one :class:`Hit` of the event's item. The ``item-signals``
step (:class:`SignalsStep`, keyed by ``record.key``: the co-visit's source,
the hit's item) keeps per item an :class:`ItemSignals`:

- ``neighbours``: decayed co-visit weights to the items visited after it
  (half-life ``covis_half_life_s``), the heaviest ``covis_n`` published; the
  state keeps the heaviest ``_BUFFER * covis_n``, pruned back to that once
  there are twice as many;
- ``short`` and ``long``: decayed event counts (half-lives
  ``trend_half_life_s`` and ``trend_long_half_life_s``).

Decay runs on event time and is exact whatever the arrival order: a value is
``sum(w_i * 0.5 ** ((t - t_i) / half_life))``, kept scaled to a reference
time so an update costs O(1) (the reference moves forward now and then so the
scale stays small). Each update emits the item's :class:`SignalRow`, its
values decayed to the item's latest event time, to the ``item-signals`` topic
(key = item_id, compacted; the record is :class:`streams.contracts.SignalRow`)::

    {"item_id": "i9", "neighbours": [["i7", 2.5], ["i3", 1.0]],
     "short": 3.2, "long": 41.0, "ts": 1732560000.25, "records": 57}

(``records``: the signal records the item's state has applied; one row may
stand for all of an item's records of a Bytewax batch.)

Readers keep the latest row per item in a :class:`SignalsTable`, which
decays rows to the request's time and turns them into ``covis`` and
``trending`` candidates and features (``covis``, ``trend``, ``popularity``).
:class:`SignalsFeed` runs the same step in-process (evaluation) and fills a
table with what the dataflow would have published. Every ordering ties on
the item id, so results are deterministic.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from streams.contracts import SignalRow
from streams.retrieval import Candidate
from streams.settings import Settings

__all__ = [
    "TREND_PRIOR",
    "CoVisit",
    "Hit",
    "SignalsConfig",
    "ItemSignals",
    "SignalRow",
    "SignalsStep",
    "SignalsTable",
    "SignalsFeed",
    "records",
]

#: Added to the long count in the trend ratio, so an item seen twice is not "trending".
TREND_PRIOR = 5.0

# Depth of the neighbour buffer, in multiples of the published ``covis_n``. Any
# bounded top-N depends on arrival order once it prunes, and Bytewax makes no
# promise about the order of one key's records within an epoch (nor across the
# partitions of ``events``), so the dataflow and an in-process replay of the same
# events may prune differently. A buffer well deeper than what is published
# keeps the published neighbours those of an unbounded count unless an item
# falls this far and then climbs back: with a buffer of 2 x covis_n, 4 of 100
# lists after 20,000 online-retail events differed in their tail between the
# pipeline and the replay (through-kafka check).
_BUFFER = 4

# Catalogs whose row -> item index map a table keeps (a reloaded model brings a
# new catalog; the worker's experiment variants may serve others).
_CATALOGS_KEPT = 4

# Move an item's reference time forward once an update lies this many (shortest)
# half-lives past it: scale factors stay below 2 ** 64.
_REBASE_HALF_LIVES = 64.0


@dataclass(frozen=True, slots=True)
class CoVisit:
    """``dst`` was visited after ``src`` by the same user, ``1 / weight`` items later."""

    src: str
    dst: str
    weight: float
    ts: float

    @property
    def key(self) -> str:
        return self.src


@dataclass(frozen=True, slots=True)
class Hit:
    """One event on ``item_id`` (trend counts)."""

    item_id: str
    ts: float

    @property
    def key(self) -> str:
        return self.item_id


def records(
    sequence: Sequence[tuple[str, float]], item_id: str, ts: float, window: int
) -> list[CoVisit | Hit]:
    """The signal records of one event on ``item_id`` at ``ts``.

    ``sequence`` is the user's (item, ts) sequence, oldest first; entries of
    ``item_id`` itself are skipped, so it may already hold the event.

    >>> for r in records([("a", 1.0), ("b", 2.0), ("a", 3.0)], "c", 4.0, window=5):
    ...     print(r)
    CoVisit(src='a', dst='c', weight=1.0, ts=4.0)
    CoVisit(src='b', dst='c', weight=0.5, ts=4.0)
    Hit(item_id='c', ts=4.0)
    """
    out: list[CoVisit | Hit] = []
    previous: set[str] = {item_id}
    for src, _ in reversed(sequence):
        if len(previous) > window:
            break
        if src not in previous:
            previous.add(src)
            out.append(CoVisit(src, item_id, 1.0 / (len(previous) - 1), ts))
    out.append(Hit(item_id, ts))
    return out


@dataclass(frozen=True)
class SignalsConfig:
    """The knobs of the signals (a slice of ``Settings``)."""

    covis_n: int = 50
    covis_half_life_s: float = 30 * 24 * 3600.0
    trend_half_life_s: float = 24 * 3600.0
    trend_long_half_life_s: float = 30 * 24 * 3600.0

    @cached_property
    def rebase_after_s(self) -> float:
        """How far an update may lie past an item's reference time before it moves."""
        shortest = min(self.covis_half_life_s, self.trend_half_life_s, self.trend_long_half_life_s)
        return _REBASE_HALF_LIVES * shortest

    @classmethod
    def from_settings(cls, s: Settings) -> SignalsConfig:
        return cls(
            covis_n=s.covis_n,
            covis_half_life_s=s.covis_half_life_s,
            trend_half_life_s=s.trend_half_life_s,
            trend_long_half_life_s=s.trend_long_half_life_s,
        )


@dataclass
class ItemSignals:
    """One item's state in the ``item-signals`` step. Values are scaled to ``ref_ts``:
    the decayed value at time t is ``value * 0.5 ** ((t - ref_ts) / half_life)``."""

    ref_ts: float | None = None
    last_ts: float | None = None
    neighbours: dict[str, float] = field(default_factory=dict)
    short: float = 0.0
    long: float = 0.0
    records: int = 0

    def add(self, record: CoVisit | Hit, cfg: SignalsConfig) -> None:
        """Apply one record."""
        self.records += 1
        ts = record.ts
        if self.ref_ts is None:
            self.ref_ts = self.last_ts = ts
        elif ts - self.ref_ts > cfg.rebase_after_s:
            self._rebase(ts, cfg)
        if ts > self.last_ts:
            self.last_ts = ts
        age = ts - self.ref_ts
        if type(record) is Hit:
            self.short += 2.0 ** (age / cfg.trend_half_life_s)
            self.long += 2.0 ** (age / cfg.trend_long_half_life_s)
            return
        n = self.neighbours
        n[record.dst] = n.get(record.dst, 0.0) + record.weight * 2.0 ** (
            age / cfg.covis_half_life_s
        )
        if len(n) > 2 * _BUFFER * cfg.covis_n:
            self.neighbours = dict(_top(n.items(), _BUFFER * cfg.covis_n))

    def _rebase(self, ts: float, cfg: SignalsConfig) -> None:
        assert self.ref_ts is not None
        dt = ts - self.ref_ts
        covis = 0.5 ** (dt / cfg.covis_half_life_s)
        self.neighbours = {k: v * covis for k, v in self.neighbours.items()}
        self.short *= 0.5 ** (dt / cfg.trend_half_life_s)
        self.long *= 0.5 ** (dt / cfg.trend_long_half_life_s)
        self.ref_ts = ts

    def row(self, item_id: str, cfg: SignalsConfig) -> SignalRow:
        """The published row: the top ``covis_n`` neighbours and counts at ``last_ts``."""
        assert self.ref_ts is not None and self.last_ts is not None
        dt = self.last_ts - self.ref_ts
        covis = 0.5 ** (dt / cfg.covis_half_life_s)
        # Rounded before ranking: two weights equal but for float noise tie on the id.
        keys = list(self.neighbours)
        weights = np.round(np.fromiter(self.neighbours.values(), np.float64, len(keys)) * covis, 6)
        if len(keys) > cfg.covis_n:
            # Only weights at least the n-th largest can be published: rank just those.
            floor = np.partition(weights, len(keys) - cfg.covis_n)[len(keys) - cfg.covis_n]
            keep = np.flatnonzero(weights >= floor)
        else:
            keep = np.arange(len(keys))
        top = zip(keep.tolist(), weights[keep].tolist(), strict=True)
        pairs = [(keys[j], w) for j, w in top if w > 0]
        # Built unvalidated (as the dataflow's rank requests are): every field comes
        # from this state, and readers validate what they take (streams.contracts.parse).
        return SignalRow.model_construct(
            item_id=item_id,
            neighbours=tuple(_top(pairs, cfg.covis_n)),
            short=round(self.short * 0.5 ** (dt / cfg.trend_half_life_s), 6),
            long=round(self.long * 0.5 ** (dt / cfg.trend_long_half_life_s), 6),
            ts=self.last_ts,
            records=self.records,
        )


def _top(pairs: Iterable[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """The ``n`` largest (key, value) pairs, heaviest first, ties by key.

    A numpy partition finds the ``n``-th largest value first, so only the pairs
    at or above it are sorted (with their ties, so the key still breaks them):
    a user's co-visitation scores run to hundreds of items for 50 candidates."""
    pairs = list(pairs)
    if n <= 0:
        return []
    if len(pairs) > 2 * n:
        values = np.fromiter((v for _, v in pairs), np.float64, len(pairs))
        threshold = np.partition(values, len(values) - n)[len(values) - n]
        pairs = [pairs[i] for i in np.flatnonzero(values >= threshold).tolist()]
    return heapq.nsmallest(n, pairs, key=lambda kv: (-kv[1], kv[0]))


class SignalsStep:
    """The ``item-signals`` step, keyed by item: apply records, publish the item's row.

    ``step(state, records) -> (state, row)`` applies every record of one key
    and builds one row: the dataflow hands it all of a key's records of a
    Bytewax batch at once (``op.stateful_batch``), and publishes an item at
    most once per ``signals_interval_s`` (its latest row, at the end of the
    interval), so a popular item is not re-published for every event, while
    the last row is always the one publishing after every record gives.
    A plain callable class, so it is picklable and unit-tested without Bytewax.
    """

    def __init__(self, cfg: SignalsConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, state: ItemSignals | None, records: Sequence[CoVisit | Hit]
    ) -> tuple[ItemSignals, SignalRow]:
        state = self.apply(state, records)
        return state, state.row(records[-1].key, self.cfg)

    def apply(self, state: ItemSignals | None, records: Sequence[CoVisit | Hit]) -> ItemSignals:
        """Apply ``records`` (of one key) without building the row."""
        state = state if state is not None else ItemSignals()
        for record in records:
            state.add(record, self.cfg)
        return state


def _decay(dt: float, half_life_s: float) -> float:
    """0.5 ** (dt / half_life), never growing: a row newer than ``now`` is taken as is."""
    return 0.5 ** (max(0.0, dt) / half_life_s)


class SignalsTable:
    """The latest :class:`SignalRow` per item, and the candidates and features they give.

    Rows are decayed to the caller's ``now`` (event time: the request's
    clock, the user's last event). Safe to read while another thread applies
    rows (the worker's follower).

    >>> table = SignalsTable(SignalsConfig())
    >>> table.apply(SignalRow(item_id="a", neighbours=(("b", 2.0), ("c", 1.0)), short=1.0,
    ...                       long=1.0, ts=10.0))
    >>> [(c.item_id, c.source) for c in table.candidates(["a"], 10.0, covis_n=2, trending_n=1)]
    [('b', 'covis'), ('c', 'covis'), ('a', 'trending')]
    """

    def __init__(self, cfg: SignalsConfig) -> None:
        self.cfg = cfg
        self.rows: dict[str, SignalRow] = {}
        self.applied = 0  # rows applied
        self.records = 0  # signal records behind the latest rows (SignalRow.records)
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._counts = np.zeros((0, 3), dtype=np.float64)  # short, long, ts per item
        # Per catalog (its item -> row map): catalog row -> item index here, and
        # how many of the items it has mapped (see index_of_rows).
        self._row_maps: dict[int, tuple[Mapping[str, int], np.ndarray, int]] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_row_maps"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def apply(self, row: SignalRow) -> None:
        """Keep ``row`` as its item's latest."""
        with self._lock:
            old = self.rows.get(row.item_id)
            self.records += row.records - (old.records if old is not None else 0)
            self.rows[row.item_id] = row
            self.applied += 1
            i = self._index.get(row.item_id)
            if i is None:
                i = self._index[row.item_id] = len(self._ids)
                self._ids.append(row.item_id)
                if i == len(self._counts):
                    grown = np.zeros((max(64, 2 * i), 3), dtype=np.float64)
                    grown[:i] = self._counts
                    self._counts = grown
            self._counts[i] = (row.short, row.long, row.ts)

    def index_of_rows(self, catalog_row: Mapping[str, int]) -> np.ndarray:
        """Per row of the catalog whose item -> row map is ``catalog_row``: its item's
        index in this table (-1: no row yet), so a ranker reads trend and
        popularity by array indexing, not a dict lookup per candidate. Kept per
        catalog (the last :data:`_CATALOGS_KEPT`) and extended by the items that
        arrived since the last call; item indices are append-only, so an array
        handed out stays right (a later entry may point past a view's arrays:
        :meth:`SignalsView.arrays` checks)."""
        with self._lock:
            key = id(catalog_row)
            found = self._row_maps.get(key)
            if found is None or found[0] is not catalog_row:
                size = max(catalog_row.values(), default=-1) + 1
                found = (catalog_row, np.full(size, -1, dtype=np.int64), 0)
            _, index, done = found
            for i in range(done, len(self._ids)):
                row = catalog_row.get(self._ids[i])
                if row is not None:
                    index[row] = i
            self._row_maps.pop(key, None)
            self._row_maps[key] = (catalog_row, index, len(self._ids))
            while len(self._row_maps) > _CATALOGS_KEPT:
                del self._row_maps[next(iter(self._row_maps))]
            return index

    def view(self, recent_items: Sequence[str], now: float) -> SignalsView:
        """What the table says for one user at ``now``: the co-visitation scores of
        their recent items and every item's trend and popularity, computed once
        for both :meth:`SignalsView.candidates` and :meth:`SignalsView.features`."""
        with self._lock:
            trend, popularity = self._counts_at(now)
            return SignalsView(self, self._covis(recent_items, now), trend, popularity)

    def candidates(
        self,
        recent_items: Sequence[str],
        now: float,
        covis_n: int,
        trending_n: int,
        exclude: Collection[str] = (),
    ) -> list[Candidate]:
        """:meth:`SignalsView.candidates` of ``view(recent_items, now)``."""
        return self.view(recent_items, now).candidates(covis_n, trending_n, exclude)

    def features(
        self, item_ids: Sequence[str], recent_items: Sequence[str], now: float
    ) -> list[dict[str, float]]:
        """:meth:`SignalsView.features` of ``view(recent_items, now)``."""
        return self.view(recent_items, now).features(item_ids)

    def covis_because(
        self, items: Collection[str], recent_items: Sequence[str], now: float
    ) -> dict[str, str]:
        """For each of ``items`` that is a co-visitation neighbour of a recent item:
        the recent item whose weight adds the most to its ``covis`` score (weighed
        as the score is), ties to the most recent. The reason behind a ``covis``
        candidate; called for the few listed ones only."""
        wanted = set(items)
        best: dict[str, tuple[float, str]] = {}
        for src, row, factor in self._covis_sources(recent_items, now):
            for dst, w in row.neighbours:
                if dst in wanted:
                    score = w * factor
                    if dst not in best or score > best[dst][0]:
                        best[dst] = (score, src)
        return {item: src for item, (_, src) in best.items()}

    def _covis(self, recent_items: Sequence[str], now: float) -> dict[str, float]:
        scores: dict[str, float] = {}
        for _, row, factor in self._covis_sources(recent_items, now):
            for dst, w in row.neighbours:
                scores[dst] = scores.get(dst, 0.0) + w * factor
        return scores

    def _covis_sources(
        self, recent_items: Sequence[str], now: float
    ) -> Iterator[tuple[str, SignalRow, float]]:
        """(recent item, its row, the weight of its neighbours) for each recent item
        with a row: its row's decay to ``now`` over its recency rank (1 / (1 + pos)).
        The one weighing of ``covis`` scores and of the reasons behind them."""
        for pos, src in enumerate(recent_items):
            row = self.rows.get(src)
            if row is not None:
                yield src, row, _decay(now - row.ts, self.cfg.covis_half_life_s) / (1.0 + pos)

    def _counts_at(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(trend, popularity) per item index: the short count over the long count
        plus the prior, and the long count, decayed to ``now`` (never grown)."""
        short, long, ts = self._counts[: len(self._ids)].T
        dt = np.maximum(0.0, now - ts)
        popularity = long * np.exp2(-dt / self.cfg.trend_long_half_life_s)
        trend = short * np.exp2(-dt / self.cfg.trend_half_life_s) / (popularity + TREND_PRIOR)
        return trend, popularity


@dataclass(frozen=True)
class SignalsView:
    """One user's signals at one time (:meth:`SignalsTable.view`). Item indices
    are append-only in the table, so the arrays stay valid while rows arrive."""

    table: SignalsTable
    covis: dict[str, float]
    trend: np.ndarray
    popularity: np.ndarray

    def candidates(
        self, covis_n: int, trending_n: int, exclude: Collection[str] = ()
    ) -> list[Candidate]:
        """``covis_n`` co-visitation + ``trending_n`` trending candidates, merged.

        Co-visitation score: the sum over the user's recent items (most recent
        first) of their neighbour weight times ``1 / (1 + position)``; trend
        score: the short count over the long count plus :data:`TREND_PRIOR`,
        both decayed to the view's time. Covis candidates come first (score =
        covis score), then trending ones (score = trend); each carries every
        feature it has (see :meth:`features`). Items in ``exclude`` are left out.
        """
        items, sources, scores = self.proposals(covis_n, trending_n, exclude)
        return [
            Candidate(item_id=k, score=round(v, 6), source=src, features=self._features_of(k))
            for k, src, v in zip(items, sources, scores, strict=True)
        ]

    def proposals(
        self, covis_n: int, trending_n: int, exclude: Collection[str] = ()
    ) -> tuple[list[str], list[str], list[float]]:
        """:meth:`candidates` as three lists (item ids, sources, scores), without a
        :class:`~streams.retrieval.Candidate` and features dict per item: the
        fusion ranker reads the features as arrays (:meth:`arrays`), and building
        a dict per candidate was its largest cost (15% of a list). The order and
        the sources are :func:`~streams.retrieval.merge`'s: covis first, then the
        trending items not among them; an item both propose is ``covis+trending``."""
        ids = self.table._ids
        n = trending_n + len(exclude)
        trending = _top(((ids[i], float(self.trend[i])) for i in _largest(self.trend, n)), n)
        top_covis = _top(((k, v) for k, v in self.covis.items() if k not in exclude), covis_n)
        items = [k for k, _ in top_covis]
        scores = [v for _, v in top_covis]
        sources = ["covis"] * len(items)
        position = {k: j for j, k in enumerate(items)}
        for k, v in [(k, v) for k, v in trending if k not in exclude][:trending_n]:
            j = position.get(k)
            if j is not None:
                sources[j] = "covis+trending"
                continue
            items.append(k)
            scores.append(v)
            sources.append("trending")
        return items, sources, scores

    def features(self, item_ids: Sequence[str]) -> list[dict[str, float]]:
        """Per item, what the table knows of it, each only when > 0: what a ranker
        attaches to candidates of other sources. ``covis`` and ``trend`` as in
        :meth:`candidates`, ``popularity`` the long count decayed to the view's time."""
        return [self._features_of(i) for i in item_ids]

    def arrays(
        self, catalog_row: Mapping[str, int], rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(covis, trend, popularity) of the catalog ``rows`` (``catalog_row``: the
        catalog's item -> row map), as :meth:`features` gives them (rounded, 0
        when unknown): the fusion ranker's columns without a dict per candidate."""
        n = len(rows)
        covis = np.zeros(n)
        if self.covis:
            at_row = {r: j for j, r in enumerate(rows.tolist())}
            for item, v in self.covis.items():
                j = at_row.get(catalog_row.get(item, -1))
                if j is not None:
                    covis[j] = v
        at = self.table.index_of_rows(catalog_row)[rows]
        known = (at >= 0) & (at < len(self.trend))
        safe = np.where(known, at, 0)
        trend = np.zeros(n) if not len(self.trend) else np.where(known, self.trend[safe], 0.0)
        popularity = (
            np.zeros(n) if not len(self.popularity) else np.where(known, self.popularity[safe], 0.0)
        )
        return tuple(np.maximum(np.round(a, 6), 0.0) for a in (covis, trend, popularity))

    def _features_of(self, item: str) -> dict[str, float]:
        i = self.table._index.get(item)
        found = {
            "covis": self.covis.get(item, 0.0),
            "trend": 0.0 if i is None or i >= len(self.trend) else float(self.trend[i]),
            "popularity": 0.0
            if i is None or i >= len(self.popularity)
            else float(self.popularity[i]),
        }
        return {k: round(v, 6) for k, v in found.items() if v > 0}


def _largest(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of every positive value at least as large as the ``n``-th largest
    (ties at the boundary all kept, so the caller's tie-break decides)."""
    if n <= 0 or len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if n < len(values):
        threshold = np.partition(values, len(values) - n)[len(values) - n]
        return np.flatnonzero((values >= threshold) & (values > 0))
    return np.flatnonzero(values > 0)


class SignalsFeed:
    """The ``item-signals`` step in-process: records in, the rows it would have
    published into :attr:`table`.

    Only an item's latest row matters to a table, so :meth:`add` applies the
    records and :meth:`flush` builds one row per touched item: the table ends
    exactly as if every row had been applied, without building a row per record.
    """

    def __init__(self, cfg: SignalsConfig) -> None:
        self.step = SignalsStep(cfg)
        self.table = SignalsTable(cfg)
        self.states: dict[str, ItemSignals] = {}
        self.rows = 0  # signal records applied (SignalRow.records summed over items)
        self._dirty: dict[str, None] = {}

    def add(self, found: Iterable[CoVisit | Hit]) -> None:
        """Apply ``found`` (records in order, any items)."""
        states, dirty, cfg = self.states, self._dirty, self.step.cfg
        for record in found:
            key = record.key
            state = states.get(key)
            if state is None:
                state = states[key] = ItemSignals()
            state.add(record, cfg)  # SignalsStep.apply, one record at a time, any items
            dirty[key] = None
            self.rows += 1

    def flush(self) -> SignalsTable:
        """Apply the latest row of every item touched since the last flush; the table."""
        cfg = self.step.cfg
        for key in self._dirty:
            self.table.apply(self.states[key].row(key, cfg))
        self._dirty.clear()
        return self.table
