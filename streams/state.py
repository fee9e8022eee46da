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
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from streams.catalog import Catalog
from streams.contracts import Event

__all__ = ["UserState", "StateConfig", "update_state"]


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


@dataclass
class UserState:
    """What the dataflow remembers per user. Picklable for Bytewax recovery."""

    embedding: np.ndarray | None = None
    last_ts: float | None = None
    recent: deque[str] = field(default_factory=deque)
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # (item, event time), oldest first, consecutive repeats collapsed.
    sequence: deque[tuple[str, float]] = field(default_factory=deque)
    # item -> (events, last event time), least recently touched first.
    counts: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)
    categories: dict[str, float] = field(default_factory=dict)
    event_ids: deque[str] = field(default_factory=deque)
    events: int = 0
    sessions: int = 0
    # Lists shown and not yet closed (streams.attribution.ShownList), and the
    # (event time, context) of requests whose list has not come back yet.
    open_lists: deque = field(default_factory=deque)
    pending: OrderedDict = field(default_factory=OrderedDict)
    early: deque = field(default_factory=deque)  # events that beat their list (attribution)

    def unit_embedding(self) -> np.ndarray | None:
        """The embedding scaled to unit length, or None while the user is cold."""
        if self.embedding is None:
            return None
        norm = float(np.linalg.norm(self.embedding))
        return None if norm == 0.0 else (self.embedding / norm).astype(np.float32)

    def category_mix(self, top: int = 20) -> dict[str, float]:
        """The ``top`` heaviest categories with their decayed weights (bounded for the wire)."""
        heaviest = sorted(self.categories.items(), key=lambda kv: -kv[1])[:top]
        return {c: round(w, 6) for c, w in heaviest if w > 0}

    def recent_items(self) -> list[str]:
        """Recent distinct items, most recent first."""
        out: list[str] = []
        for item in reversed(self.recent):
            if item not in out:
                out.append(item)
        return out


def _decay(state: UserState, ts: float, half_life_s: float) -> float:
    if state.last_ts is None or ts <= state.last_ts:
        return 1.0
    return float(0.5 ** ((ts - state.last_ts) / half_life_s))


def update_state(state: UserState, event: Event, catalog: Catalog, cfg: StateConfig) -> bool:
    """Apply ``event`` to ``state`` in place. Returns False for a duplicate event_id.

    Items unknown to the catalog still enter the recent and seen sets (they
    are real interactions) but cannot move the embedding.
    """
    if event.event_id in state.event_ids:
        return False
    state.event_ids.append(event.event_id)
    if len(state.event_ids) > cfg.dedup_window:
        state.event_ids.popleft()

    if state.last_ts is None or event.ts - state.last_ts > cfg.session_gap_s:
        state.sessions += 1
    decay = _decay(state, event.ts, cfg.half_life_s)
    weight = cfg.event_weights.get(event.type, 1.0)
    # The category mix decays on the same clock as the embedding, whatever the item.
    state.categories = {c: w * decay for c, w in state.categories.items()}
    row = catalog.row.get(event.item_id)
    if row is not None:
        vec = catalog.vectors[row]
        if state.embedding is None:
            state.embedding = np.zeros_like(vec)
        state.embedding = (state.embedding * decay + weight * vec).astype(np.float32)
        category = catalog.categories[row]
        if category is not None:
            state.categories[category] = state.categories.get(category, 0.0) + weight
    elif state.embedding is not None:
        state.embedding = (state.embedding * decay).astype(np.float32)
    if state.last_ts is None or event.ts > state.last_ts:
        state.last_ts = event.ts

    state.recent.append(event.item_id)
    while len(state.recent) > cfg.recent_n:
        state.recent.popleft()
    state.seen.pop(event.item_id, None)
    state.seen[event.item_id] = None
    while len(state.seen) > cfg.seen_max:
        state.seen.popitem(last=False)
    _count(state, event, cfg)
    state.events += 1
    return True


def _count(state: UserState, event: Event, cfg: StateConfig) -> None:
    """Extend the sequence (collapsing a repeat of its last item) and the counts."""
    item, ts = event.item_id, event.ts
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
