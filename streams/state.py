"""Per-user streaming state and its update rule (pure: no Bytewax, no Kafka).

The user embedding is a time-decayed, event-weighted sum of item vectors:

    e(t) = e(t_prev) * 0.5 ** ((t - t_prev) / half_life) + w(type) * v(item)

so a purchase (weight 3) pulls harder than a click (1) or a view (0.5), and
an interest fades with a configurable half-life. The sum is kept unnormalised
(its norm is the decayed evidence); readers normalise it. Events that arrive
out of time order are applied without growing the decay clock backwards.
Updates are idempotent per ``event_id`` (a bounded window of recent ids), so
a replay after recovery does not double-count.

Beside the embedding the state keeps what the sequence model, repeat
candidates and co-visitation read: ``sequence``, the user's items in the
order the dataflow applied them (oldest first, bounded, consecutive repeats
collapsed into one entry that carries the latest event time), and ``counts``,
events and last event time per item (LRU-bounded like the seen set).
Out-of-order events are not re-sorted: they join the sequence in arrival
order with their own time (so ``sequence`` times may step back), and an
item's last event time is the latest one seen, whatever the arrival order.
The seen set is the key set of ``counts`` (the same items, in the same
least-recently-touched order, under the same bound).

Size. Bytewax snapshots every touched user's state, and a store has millions
of users, most with a handful of events. A state pickles compactly (item ids
once, numbers as packed arrays, event ids as 64-bit hashes), and a user all
of whose events are still in ``recent`` (the last ``recent_n``) pickles as
those events alone: the embedding, category mix, sequence and counts are
rebuilt by replaying them through the same update rule (bit for bit the same
floats) when the state is next used with its catalog (:func:`restore`).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import KeysView
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from streams.catalog import Catalog
from streams.contracts import EVENT_TYPES, Event

__all__ = ["UserState", "StateConfig", "update_state", "restore", "event_hash"]

_TYPE_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}
_PICKLE_LIGHT, _PICKLE_FULL = 1, 2
_CLOSED_KEPT = 16
_weight = itemgetter(1)  # of a (category, weight) pair


@dataclass(frozen=True)
class StateConfig:
    """The knobs of the update rule (a slice of ``Settings``)."""

    half_life_s: float
    event_weights: dict[str, float]
    recent_n: int = 20
    seen_max: int = 2000
    sequence_n: int = 50
    dedup_window: int = 256
    session_gap_s: float = 1800.0


def event_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id: what the dedup window keeps.

    Stable across processes (unlike ``hash``), so a restored state still
    recognises the ids it had seen; 64 bits make a false duplicate in a
    window of 256 ids a one-in-10^16 event.
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass(eq=False)
class UserState:
    """What the dataflow remembers per user. Picklable for Bytewax recovery."""

    embedding: np.ndarray | None = None
    last_ts: float | None = None
    recent: deque[str] = field(default_factory=deque)
    # (event type, event time) of each entry of ``recent``: what a replay needs.
    recent_events: deque[tuple[str, float]] = field(default_factory=deque)
    # (item, event time), oldest first, consecutive repeats collapsed.
    sequence: deque[tuple[str, float]] = field(default_factory=deque)
    # item -> (events, last event time), least recently touched first: also the seen set.
    counts: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)
    categories: dict[str, float] = field(default_factory=dict)
    event_ids: array = field(default_factory=lambda: array("Q"))  # event_hash of recent ids
    events: int = 0
    sessions: int = 0
    # Lists shown and not yet closed (streams.attribution.ShownList), and the
    # (event time, context) of requests whose list has not come back yet.
    open_lists: deque = field(default_factory=deque)
    pending: OrderedDict = field(default_factory=OrderedDict)
    early: deque = field(default_factory=deque)  # events that beat their list (attribution)
    # rec_ids of the user's recently closed lists: a late click on one is "expired".
    closed: deque = field(default_factory=lambda: deque(maxlen=_CLOSED_KEPT))
    # True while a light pickle's derived fields wait for restore().
    replay: bool = False

    @property
    def seen(self) -> KeysView[str]:
        """The items the user interacted with (bounded like ``counts``, oldest first)."""
        return self.counts.keys()

    def unit_embedding(self) -> np.ndarray | None:
        """The embedding scaled to unit length, or None while the user is cold."""
        if self.embedding is None:
            return None
        norm = float(np.linalg.norm(self.embedding))
        return None if norm == 0.0 else (self.embedding / norm).astype(np.float32)

    def category_mix(self, top: int = 20) -> dict[str, float]:
        """The ``top`` heaviest categories with their decayed weights (bounded for the wire)."""
        # One stable sort of a few dozen weights: the order of heapq.nlargest (its
        # documented equivalent) at half the cost for the mixes users have.
        ordered = sorted(self.categories.items(), key=_weight, reverse=True)[:top]
        return {c: round(w, 6) for c, w in ordered if w > 0}

    def recent_items(self) -> list[str]:
        """Recent distinct items, most recent first."""
        return list(dict.fromkeys(reversed(self.recent)))

    # --- compact pickling (see the module docstring) ---------------------------

    def __getstate__(self) -> tuple:
        items: dict[str, int] = {}

        def idx(item: str) -> int:
            return items.setdefault(item, len(items))

        recent = array("I", (idx(i) for i in self.recent))
        types = bytes(_TYPE_CODE[t] for t, _ in self.recent_events)
        times = np.array([ts for _, ts in self.recent_events], dtype=np.float64).tobytes()
        tail = (
            self.event_ids.tobytes(),
            self.open_lists,
            self.pending,
            self.early,
            tuple(self.closed),
        )
        if self.replay or self.events == len(self.recent):
            return (_PICKLE_LIGHT, tuple(items), recent.tobytes(), types, times, *tail)
        seq = array("I", (idx(i) for i, _ in self.sequence)).tobytes()
        seq_ts = np.array([ts for _, ts in self.sequence], dtype=np.float64).tobytes()
        counted = array("I", (idx(i) for i in self.counts)).tobytes()
        nums = np.array(list(self.counts.values()), dtype=np.float64).reshape(-1, 2)
        embedding = None if self.embedding is None else self.embedding.astype("<f4").tobytes()
        return (
            _PICKLE_FULL,
            tuple(items),
            recent.tobytes(),
            types,
            times,
            *tail,
            embedding,
            self.last_ts,
            seq,
            seq_ts,
            counted,
            nums.tobytes(),
            self.categories,
            self.events,
            self.sessions,
        )

    def __setstate__(self, state: tuple) -> None:
        kind, items, recent, types, times, ids, open_lists, pending, early, closed = state[:10]
        self.__init__(open_lists=open_lists, pending=pending, early=early)  # type: ignore[misc]
        self.closed.extend(closed)
        self.event_ids = array("Q")
        self.event_ids.frombytes(ids)
        recent_items = [items[i] for i in array("I", recent)]
        recent_events = list(
            zip(
                (EVENT_TYPES[t] for t in types),
                np.frombuffer(times, dtype=np.float64).tolist(),
                strict=True,
            )
        )
        self.recent = deque(recent_items)
        self.recent_events = deque(recent_events)
        if kind == _PICKLE_LIGHT:
            self.replay = True
            return
        embedding, last_ts, seq, seq_ts, counted, nums, categories, events, sessions = state[10:]
        self.embedding = None if embedding is None else np.frombuffer(embedding, "<f4").copy()
        self.last_ts = last_ts
        self.sequence = deque(
            zip(
                (items[i] for i in array("I", seq)),
                np.frombuffer(seq_ts, dtype=np.float64).tolist(),
                strict=True,
            )
        )
        pairs = np.frombuffer(nums, dtype=np.float64).reshape(-1, 2).tolist()
        self.counts = OrderedDict(
            (items[i], (n, ts)) for i, (n, ts) in zip(array("I", counted), pairs, strict=True)
        )
        self.categories = categories
        self.events, self.sessions = events, sessions


def _decay(state: UserState, ts: float, half_life_s: float) -> float:
    if state.last_ts is None or ts <= state.last_ts:
        return 1.0
    return float(0.5 ** ((ts - state.last_ts) / half_life_s))


def restore(state: UserState, catalog: Catalog, cfg: StateConfig) -> UserState:
    """Rebuild what a light pickle left out, by replaying its events (a no-op otherwise)."""
    if state.replay:
        state.replay = False
        events = list(zip(state.recent, state.recent_events, strict=True))
        state.recent.clear()
        state.recent_events.clear()
        for item, (kind, ts) in events:
            _apply(state, item, kind, ts, catalog, cfg)
    return state


def update_state(state: UserState, event: Event, catalog: Catalog, cfg: StateConfig) -> bool:
    """Apply ``event`` to ``state`` in place. Returns False for a duplicate event_id.

    Items unknown to the catalog still enter the recent and seen sets (they
    are real interactions) but cannot move the embedding.
    """
    restore(state, catalog, cfg)
    h = event_hash(event.event_id)
    if h in state.event_ids:
        return False
    state.event_ids.append(h)
    if len(state.event_ids) > cfg.dedup_window:
        del state.event_ids[0]
    _apply(state, event.item_id, event.type, event.ts, catalog, cfg)
    return True


def _apply(
    state: UserState, item: str, kind: str, ts: float, catalog: Catalog, cfg: StateConfig
) -> None:
    """The update rule itself (also what a replay runs)."""
    if state.last_ts is None or ts - state.last_ts > cfg.session_gap_s:
        state.sessions += 1
    decay = _decay(state, ts, cfg.half_life_s)
    weight = cfg.event_weights.get(kind, 1.0)
    # The category mix decays on the same clock as the embedding, whatever the item
    # (not at all for the lines of one basket, which share a time).
    if decay != 1.0:
        state.categories = {c: w * decay for c, w in state.categories.items()}
    row = catalog.row.get(item)
    if row is not None:
        vec = catalog.vectors[row]
        if state.embedding is None:
            state.embedding = np.zeros_like(vec)
        state.embedding = (state.embedding * decay + weight * vec).astype(np.float32)
        category = catalog.categories[row]
        if category is not None:
            state.categories[category] = state.categories.get(category, 0.0) + weight
        # The catalog's own string: one copy of an id however many users hold it.
        item = catalog.item_ids[row]
    elif state.embedding is not None:
        state.embedding = (state.embedding * decay).astype(np.float32)
    if state.last_ts is None or ts > state.last_ts:
        state.last_ts = ts

    state.recent.append(item)
    state.recent_events.append((kind, ts))
    while len(state.recent) > cfg.recent_n:
        state.recent.popleft()
        state.recent_events.popleft()
    _count(state, item, ts, cfg)
    state.events += 1


def _count(state: UserState, item: str, ts: float, cfg: StateConfig) -> None:
    """Extend the sequence (collapsing a repeat of its last item) and the counts."""
    if state.sequence and state.sequence[-1][0] == item:
        state.sequence[-1] = (item, max(state.sequence[-1][1], ts))
    else:
        state.sequence.append((item, ts))
        while len(state.sequence) > cfg.sequence_n:
            state.sequence.popleft()
    n, last = state.counts.pop(item, (0.0, ts))
    state.counts[item] = (n + 1.0, max(last, ts))
    while len(state.counts) > cfg.seen_max:
        state.counts.popitem(last=False)
