"""The per-user state update: weights, decay, idempotence and bounds, on a hand-made catalog."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from streams.catalog import Catalog
from streams.contracts import Event
from streams.settings import DEFAULT_EVENT_WEIGHTS
from streams.state import StateConfig, UserState, event_hash, restore, update_state

HALF_LIFE = 1000.0
ITEMS = ["a", "b", "c", "d"]


@pytest.fixture
def catalog() -> Catalog:
    """Four items with orthonormal vectors, so each item's share is one coordinate."""
    return Catalog(
        item_ids=ITEMS,
        titles=[f"title {i}" for i in ITEMS],
        categories=["x", "x", "y", None],
        vectors=np.eye(4, dtype=np.float32),
        popularity=np.ones(4),
    )


@pytest.fixture
def cfg() -> StateConfig:
    return StateConfig(half_life_s=HALF_LIFE, event_weights=dict(DEFAULT_EVENT_WEIGHTS))


def _event(event_id: str, item: str, ts: float, kind: str = "click") -> Event:
    return Event(event_id=event_id, type=kind, user_id="u1", item_id=item, ts=ts)


def _apply(state: UserState, catalog: Catalog, cfg: StateConfig, *events: Event) -> UserState:
    for event in events:
        assert update_state(state, event, catalog, cfg)
    return state


def _decay(dt: float) -> float:
    """The module docstring's factor: 0.5 ** ((t - t_prev) / half_life)."""
    return 0.5 ** (dt / HALF_LIFE)


def _fields(state: UserState) -> dict:
    """Comparable snapshot (the dataclass's own == trips over the numpy array)."""
    return {
        "embedding": None if state.embedding is None else state.embedding.tolist(),
        "last_ts": state.last_ts,
        "recent": list(state.recent),
        "recent_events": list(state.recent_events),
        "sessions": state.sessions,
        "seen": list(state.seen),
        "categories": dict(state.categories),
        "event_ids": list(state.event_ids),
        "events": state.events,
        "sequence": list(state.sequence),
        "counts": list(state.counts.items()),
    }


def test_cold_state() -> None:
    state = UserState()
    assert state.unit_embedding() is None
    assert state.recent_items() == []


def test_purchase_weighs_more_than_click_more_than_view(catalog, cfg) -> None:
    state = _apply(
        UserState(),
        catalog,
        cfg,
        _event("e1", "a", 100.0, "view"),
        _event("e2", "b", 100.0, "click"),
        _event("e3", "c", 100.0, "purchase"),
    )
    w = cfg.event_weights
    np.testing.assert_allclose(state.embedding, [w["view"], w["click"], w["purchase"], 0.0])
    unit = state.unit_embedding()
    norm = np.sqrt(w["view"] ** 2 + w["click"] ** 2 + w["purchase"] ** 2)
    affinity = catalog.vectors @ unit
    np.testing.assert_allclose(
        affinity, [w["view"] / norm, w["click"] / norm, w["purchase"] / norm, 0.0], rtol=1e-6
    )
    assert affinity[2] > affinity[1] > affinity[0]
    assert ITEMS[int(np.argmax(affinity))] == "c"


@pytest.mark.parametrize("dt", [HALF_LIFE, 2 * HALF_LIFE, 0.3 * HALF_LIFE])
def test_old_contribution_decays_by_the_formula(catalog, cfg, dt: float) -> None:
    t0 = 5_000.0
    state = _apply(
        UserState(),
        catalog,
        cfg,
        _event("e1", "a", t0, "purchase"),
        _event("e2", "b", t0 + dt, "click"),
    )
    w = cfg.event_weights
    np.testing.assert_allclose(
        state.embedding, [w["purchase"] * _decay(dt), w["click"], 0.0, 0.0], rtol=1e-6
    )
    assert state.last_ts == t0 + dt


def test_one_half_life_halves_exactly(catalog, cfg) -> None:
    state = _apply(UserState(), catalog, cfg, _event("e1", "a", 0.0), _event("e2", "b", HALF_LIFE))
    assert state.embedding[0] == pytest.approx(0.5 * cfg.event_weights["click"])


def test_out_of_order_event_does_not_move_the_clock_back(catalog, cfg) -> None:
    w = cfg.event_weights["click"]
    state = _apply(UserState(), catalog, cfg, _event("e1", "a", 2_000.0))
    _apply(state, catalog, cfg, _event("e2", "b", 1_000.0))
    assert state.last_ts == 2_000.0
    # A late event is added without decaying what is there (the clock never runs back).
    np.testing.assert_allclose(state.embedding, [w, w, 0.0, 0.0])
    # The next in-order event decays from 2000, not from 1000.
    _apply(state, catalog, cfg, _event("e3", "c", 2_000.0 + HALF_LIFE))
    np.testing.assert_allclose(state.embedding, [w / 2, w / 2, w, 0.0], rtol=1e-6)
    assert state.last_ts == 2_000.0 + HALF_LIFE


def test_duplicate_event_id_is_ignored(catalog, cfg) -> None:
    state = _apply(UserState(), catalog, cfg, _event("e1", "a", 10.0), _event("e2", "b", 20.0))
    before = copy.deepcopy(_fields(state))
    assert update_state(state, _event("e1", "a", 10.0), catalog, cfg) is False
    # Even a different payload under a seen id is a replay, not news.
    assert update_state(state, _event("e2", "c", 500.0, "purchase"), catalog, cfg) is False
    assert _fields(state) == before


def test_dedup_window_is_bounded(catalog) -> None:
    cfg = StateConfig(half_life_s=HALF_LIFE, event_weights={}, dedup_window=3)
    state = UserState()
    _apply(state, catalog, cfg, *(_event(f"e{i}", "a", float(i)) for i in range(4)))
    assert list(state.event_ids) == [event_hash(f"e{i}") for i in (1, 2, 3)]
    assert update_state(state, _event("e3", "a", 9.0), catalog, cfg) is False
    assert update_state(state, _event("e0", "a", 9.0), catalog, cfg) is True


def test_unknown_item_enters_recent_and_seen_but_not_the_embedding(catalog, cfg) -> None:
    state = _apply(UserState(), catalog, cfg, _event("e1", "zzz", 10.0))
    assert state.embedding is None and state.unit_embedding() is None
    assert list(state.recent) == ["zzz"] and list(state.seen) == ["zzz"]
    assert state.categories == {} and state.events == 1

    _apply(state, catalog, cfg, _event("e2", "a", 10.0), _event("e3", "qqq", 10.0 + HALF_LIFE))
    # Only the decay clock moved: "a" halves, nothing points at the unknown item.
    np.testing.assert_allclose(state.embedding, [cfg.event_weights["click"] / 2, 0, 0, 0])
    assert state.recent_items() == ["qqq", "a", "zzz"]
    assert state.last_ts == 10.0 + HALF_LIFE


def test_recent_and_seen_are_bounded(catalog) -> None:
    cfg = StateConfig(half_life_s=HALF_LIFE, event_weights={}, recent_n=3, seen_max=4)
    state = UserState()
    _apply(state, catalog, cfg, *(_event(f"e{i}", f"i{i}", float(i)) for i in range(10)))
    assert list(state.recent) == ["i7", "i8", "i9"]
    assert list(state.seen) == ["i6", "i7", "i8", "i9"]
    # Seeing an old item again makes it the newest, so it survives the next eviction.
    _apply(state, catalog, cfg, _event("e10", "i6", 10.0), _event("e11", "i10", 11.0))
    assert list(state.seen) == ["i8", "i9", "i6", "i10"]
    assert state.events == 12


def test_recent_items_most_recent_first_and_distinct(catalog, cfg) -> None:
    state = _apply(
        UserState(),
        catalog,
        cfg,
        *(_event(f"e{i}", item, float(i)) for i, item in enumerate("abacbd")),
    )
    assert list(state.recent) == list("abacbd")
    assert state.recent_items() == ["d", "b", "c", "a"]


def test_category_mix_decays(catalog, cfg) -> None:
    w = cfg.event_weights
    state = _apply(
        UserState(),
        catalog,
        cfg,
        _event("e1", "a", 0.0, "purchase"),  # x
        _event("e2", "c", HALF_LIFE, "view"),  # y
        _event("e3", "b", 2 * HALF_LIFE, "click"),  # x
    )
    assert state.categories == pytest.approx(
        {"x": w["purchase"] / 4 + w["click"], "y": w["view"] / 2}
    )


@pytest.mark.parametrize("item", ["zzz", "d"], ids=["unknown-item", "item-without-category"])
def test_category_mix_decays_on_the_embedding_clock(catalog, cfg, item: str) -> None:
    """Time that passes during events with no category still decays the mix."""
    state = _apply(
        UserState(),
        catalog,
        cfg,
        _event("e1", "a", 0.0),
        _event("e2", item, HALF_LIFE),
        _event("e3", "c", 2 * HALF_LIFE),
    )
    w = cfg.event_weights["click"]
    assert state.embedding[0] == pytest.approx(w / 4)
    assert state.categories == pytest.approx({"x": w / 4, "y": w})


def test_unconfigured_event_type_weighs_one(catalog) -> None:
    cfg = StateConfig(half_life_s=HALF_LIFE, event_weights={"purchase": 3.0})
    state = _apply(UserState(), catalog, cfg, _event("e1", "a", 0.0, "favorite"))
    np.testing.assert_allclose(state.embedding, [1.0, 0, 0, 0])


def test_state_pickles(catalog, cfg) -> None:
    state = _apply(
        UserState(),
        catalog,
        cfg,
        _event("e1", "a", 0.0, "purchase"),
        _event("e2", "zzz", 50.0),
        _event("e3", "c", 100.0, "view"),
    )
    restored = restore(pickle.loads(pickle.dumps(state)), catalog, cfg)
    assert _fields(restored) == _fields(state)
    assert restored.embedding.dtype == np.float32
    # The restored state keeps deduplicating and updates exactly like the original.
    assert update_state(restored, _event("e2", "zzz", 50.0), catalog, cfg) is False
    nxt = _event("e4", "b", 900.0)
    update_state(state, nxt, catalog, cfg)
    update_state(restored, nxt, catalog, cfg)
    assert _fields(restored) == _fields(state)


@pytest.mark.parametrize("n_events", [3, 20, 21, 60], ids=["light", "full-log", "over", "heavy"])
def test_a_state_pickles_small_and_restores_bit_for_bit(catalog, n_events: int) -> None:
    """Light states (every event still in ``recent``) pickle as their events and are
    replayed on use; heavier ones pickle every field packed. Both restore exactly."""
    cfg = StateConfig(half_life_s=HALF_LIFE, event_weights=dict(DEFAULT_EVENT_WEIGHTS))
    kinds = ["view", "click", "purchase", "add_to_cart"]
    events = [
        _event(f"e{i}", ["a", "b", "c", "d", "zzz"][i % 5], 37.5 * i - 3.0 * (i % 3), kinds[i % 4])
        for i in range(n_events)
    ]
    state = _apply(UserState(), catalog, cfg, *events)
    raw = pickle.dumps(state)
    restored = restore(pickle.loads(raw), catalog, cfg)
    assert _fields(restored) == _fields(state)
    assert restored.unit_embedding().tobytes() == state.unit_embedding().tobytes()
    if n_events <= cfg.recent_n:
        assert len(raw) < 200 + 20 * n_events  # its events, no vector of floats
    # It goes on exactly like the original, duplicates included.
    assert update_state(restored, events[-1], catalog, cfg) is False
    nxt = _event("next", "b", 99_999.0)
    update_state(state, nxt, catalog, cfg)
    update_state(restored, nxt, catalog, cfg)
    assert _fields(restored) == _fields(state)


def test_sequence_collapses_consecutive_repeats_and_keeps_their_latest_time(catalog, cfg) -> None:
    state = _apply(
        UserState(),
        catalog,
        cfg,
        *(_event(f"e{i}", item, float(i)) for i, item in enumerate("aabbba")),
    )
    assert list(state.sequence) == [("a", 1.0), ("b", 4.0), ("a", 5.0)]


def test_sequence_is_bounded_oldest_dropped(catalog) -> None:
    cfg = StateConfig(half_life_s=HALF_LIFE, event_weights={}, sequence_n=3)
    state = _apply(
        UserState(), catalog, cfg, *(_event(f"e{i}", f"i{i}", float(i)) for i in range(5))
    )
    assert list(state.sequence) == [("i2", 2.0), ("i3", 3.0), ("i4", 4.0)]


def test_counts_are_events_and_last_time_per_item_lru_bounded(catalog) -> None:
    cfg = StateConfig(half_life_s=HALF_LIFE, event_weights={}, seen_max=3)
    state = _apply(
        UserState(),
        catalog,
        cfg,
        *(_event(f"e{i}", item, float(i)) for i, item in enumerate("abacd")),
    )
    # "b" was touched least recently and goes first; "a" counts both of its events.
    assert dict(state.counts) == {"a": (2.0, 2.0), "c": (1.0, 3.0), "d": (1.0, 4.0)}
    assert list(state.counts) == ["a", "c", "d"]
    _apply(state, catalog, cfg, _event("e5", "c", 5.0))
    assert list(state.counts) == ["a", "d", "c"] and state.counts["c"] == (2.0, 5.0)


def test_out_of_order_events_join_the_sequence_in_arrival_order(catalog, cfg) -> None:
    """Kept simple: no re-sorting; an item's last time is the latest seen."""
    state = _apply(
        UserState(),
        catalog,
        cfg,
        _event("e1", "a", 100.0),
        _event("e2", "b", 50.0),
        _event("e3", "a", 10.0),
    )
    assert list(state.sequence) == [("a", 100.0), ("b", 50.0), ("a", 10.0)]
    assert state.counts["a"] == (2.0, 100.0)


def test_a_duplicate_event_changes_neither_sequence_nor_counts(catalog, cfg) -> None:
    state = _apply(UserState(), catalog, cfg, _event("e1", "a", 1.0), _event("e2", "b", 2.0))
    assert update_state(state, _event("e1", "a", 1.0), catalog, cfg) is False
    assert list(state.sequence) == [("a", 1.0), ("b", 2.0)]
    assert dict(state.counts) == {"a": (1.0, 1.0), "b": (1.0, 2.0)}
