"""Reward attribution: which interactions a shown list earned (pure logic).

The dataflow reads its own output topic ``recommendations`` back, keyed by
user, so each user's state knows the lists that were shown (``show``). An
interaction is credited to a list (``attribute``) when

* it carries the list's ``rec_id`` and the list is still open, or
* it hits an item of the user's last shown list,

in both cases within ``window_s`` of the list being shown, on the user's
event-time clock (the trigger's ``ts``), so replays of old data attribute
exactly like live traffic. Each (rec_id, item, type) is credited once, which
makes attribution idempotent under replayed duplicates.

A list closes when it falls out of the window or when more than
``max_open_lists`` newer lists exist; its reward, min(1, sum of the credited
events' weights), is then final and becomes a ``ListReward`` for the bandit.
The reward also carries the list's fusion examples: each shown item that
came with features (``RankedItem.features``), labelled 1 when an interaction
on it was credited, else 0 (the dataflow's ``fusion`` step learns from them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from streams.contracts import Event, Outcome, Recommendation
from streams.experiments import AttributionConfig

__all__ = ["ShownList", "ListReward", "show", "attribute", "claim_early", "close_expired"]


@dataclass
class ShownList:
    """A list the user saw, while rewards can still reach it."""

    rec_id: str
    items: frozenset[str]
    policy: dict
    experiment: dict
    shown_ts: float
    context: list[float] | None = None
    credited: set[tuple[str, str]] = field(default_factory=set)
    reward: float = 0.0
    # item -> the features the ranker scored it with (items shown with features only)
    features: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ListReward:
    """A closed list's final reward, for the bandit of ``policy['segment']``."""

    rec_id: str
    arm: str
    segment: str
    mode: str
    reward: float
    context: list[float] | None
    # (features, label) per shown item that had features, in list order
    examples: tuple[tuple[dict[str, float], int], ...] = ()


def _close(lst: ShownList) -> ListReward:
    hit = {item for item, _ in lst.credited}
    return ListReward(
        rec_id=lst.rec_id,
        arm=str(lst.policy.get("arm", "")),
        segment=str(lst.policy.get("segment", "all")),
        mode=str(lst.policy.get("mode", "fixed")),
        reward=min(1.0, lst.reward),
        context=lst.context,
        examples=tuple((f, int(item in hit)) for item, f in lst.features.items()),
    )


def close_expired(
    open_lists: deque[ShownList], now_ts: float, cfg: AttributionConfig
) -> list[ListReward]:
    """Close lists older than the window (oldest first)."""
    closed = []
    while open_lists and now_ts - open_lists[0].shown_ts > cfg.window_s:
        closed.append(_close(open_lists.popleft()))
    return closed


def show(
    open_lists: deque[ShownList],
    rec: Recommendation,
    shown_ts: float,
    context: list[float] | None,
    cfg: AttributionConfig,
) -> list[ListReward]:
    """Record a shown list; returns the rewards of the lists this closes."""
    if any(lst.rec_id == rec.rec_id for lst in open_lists):
        return []  # the same list read twice (at-least-once delivery)
    closed = close_expired(open_lists, shown_ts, cfg)
    open_lists.append(
        ShownList(
            rec_id=rec.rec_id,
            items=frozenset(x.item_id for x in rec.items),
            policy=dict(rec.policy),
            experiment=dict(rec.experiment),
            shown_ts=shown_ts,
            context=context,
            features={x.item_id: dict(x.features) for x in rec.items if x.features is not None},
        )
    )
    while len(open_lists) > cfg.max_open_lists:
        closed.append(_close(open_lists.popleft()))
    return closed


def attribute(
    open_lists: deque[ShownList],
    event: Event,
    cfg: AttributionConfig,
    early: deque[Event] | None = None,
) -> tuple[list[Outcome], list[ListReward]]:
    """Credit ``event`` to the list it came from -> (outcomes, rewards of closed lists).

    An event whose ``rec_id`` names no open list is parked in ``early`` (when
    given): the dataflow reads ``events`` and ``recommendations`` as two
    topics, so a fast click can arrive before its list; ``claim_early``
    credits it once the list is shown.
    """
    closed = close_expired(open_lists, event.ts, cfg)
    if event.type == "view":
        return [], closed
    if event.rec_id is not None:
        # Lists can come back out of order, so an open list may be past its
        # window even when the oldest one is not: check each match.
        target = next(
            (
                lst
                for lst in open_lists
                if lst.rec_id == event.rec_id and event.ts - lst.shown_ts <= cfg.window_s
            ),
            None,
        )
        if target is None:
            if early is not None:
                early.append(event)
                while len(early) > cfg.max_early_events:
                    early.popleft()
            return [], closed
        outcome = _credit(target, event, cfg, "rec_id")
    elif open_lists and event.item_id in open_lists[-1].items:
        outcome = _credit(open_lists[-1], event, cfg, "window")
    else:
        outcome = None
    return ([outcome] if outcome else []), closed


def claim_early(
    open_lists: deque[ShownList], early: deque[Event], cfg: AttributionConfig
) -> list[Outcome]:
    """Credit parked events whose list is now open (see ``attribute``)."""
    if not early or not open_lists:
        return []
    newest = open_lists[-1]
    outcomes = []
    for event in [e for e in early if e.rec_id == newest.rec_id]:
        early.remove(event)
        if abs(event.ts - newest.shown_ts) <= cfg.window_s:
            outcome = _credit(newest, event, cfg, "rec_id")
            if outcome is not None:
                outcomes.append(outcome)
    return outcomes


def _credit(target: ShownList, event: Event, cfg: AttributionConfig, how: str) -> Outcome | None:
    """Credit once per (rec_id, item, type); None when already credited."""
    if (event.item_id, event.type) in target.credited:
        return None
    target.credited.add((event.item_id, event.type))
    target.reward += cfg.reward_weights.get(event.type, 0.0)
    revenue = None
    if event.type == "purchase" and event.price is not None and event.quantity is not None:
        revenue = round(event.price * event.quantity, 6)
    return Outcome(
        rec_id=target.rec_id,
        user_id=event.user_id,
        item_id=event.item_id,
        type=event.type,
        event_id=event.event_id,
        ts=event.ts,
        experiment=target.experiment,
        policy=target.policy,
        revenue=revenue,
        attributed_by=how,
    )
