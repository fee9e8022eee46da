"""Reward attribution: which interactions a shown list earned (pure logic).

The dataflow reads its own output topic ``recommendations`` back, keyed by
user, so each user's state knows the lists that were shown (``show``). An
interaction is credited to a list (``attribute``) when

* it carries the list's ``rec_id`` and the list is still open, or
* it hits an item of the user's last shown list,

in both cases within ``window_s`` of the list's clock: when the list was
asked for, in event time (an event-triggered list: its trigger's ``ts``; an
explicit request: its ``ts``, else its Kafka timestamp), so replays of old
data attribute exactly like live traffic and a returning shopper's first
list is not measured from their last visit. Each (rec_id, item, type) is
credited once, which makes attribution idempotent under replayed duplicates.

An interaction that names a list it cannot be credited to becomes an
:class:`~streams.contracts.Unattributed` record with the reason, never a
silent drop: ``expired`` (the user's list, outside the window), ``other_user``
(the rec_id's user tag is someone else's, see ``rec_id_for``) or ``unknown``
(no such list reached the user within the window: it waited in ``early`` and
expired or was pushed out).

A list closes when it falls out of the window or when more than
``max_open_lists`` newer lists exist; its reward, min(1, sum of the credited
events' weights), is then final and becomes a ``ListReward`` for the bandit.
The reward also carries the list's fusion examples: each shown item that
came with features (``RankedItem.features``), labelled 1 when an interaction
on it was credited, else 0 (the dataflow's ``fusion`` step learns from them).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from streams.contracts import (
    Event,
    ExperimentStamp,
    Outcome,
    Recommendation,
    ServedPolicy,
    Unattributed,
    user_tag,
)
from streams.experiments import AttributionConfig

__all__ = [
    "ShownList",
    "ListReward",
    "show",
    "attribute",
    "claim_early",
    "close_expired",
]

# The shape of the ids rec_id_for makes: rec-<6 hex user tag>-<hash>.
_REC_ID = re.compile(r"rec-[0-9a-f]{6}-")


@dataclass
class ShownList:
    """A list the user saw, while rewards can still reach it."""

    rec_id: str
    items: frozenset[str]
    policy: ServedPolicy
    experiment: ExperimentStamp
    shown_ts: float
    context: list[float] | None = None
    credited: set[tuple[str, str]] = field(default_factory=set)
    reward: float = 0.0
    # item -> the features the ranker scored it with (items shown with features only)
    features: dict[str, dict[str, float]] = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:
        # A recovery snapshot from before the stamps were typed holds them as dicts.
        if isinstance(state.get("policy"), dict):
            state["policy"] = ServedPolicy.model_validate(state["policy"])
        if isinstance(state.get("experiment"), dict):
            state["experiment"] = ExperimentStamp.model_validate(state["experiment"])
        self.__dict__.update(state)


@dataclass(frozen=True)
class ListReward:
    """A closed list's final reward, for the bandit of ``policy.segment``."""

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
        arm=lst.policy.arm,
        segment=lst.policy.segment,
        mode=lst.policy.mode,
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
            policy=rec.policy,
            experiment=rec.experiment,
            shown_ts=shown_ts,
            context=context,
            features={x.item_id: dict(x.features) for x in rec.items if x.features is not None},
        )
    )
    while len(open_lists) > cfg.max_open_lists:
        closed.append(_close(open_lists.popleft()))
    return closed


def _about(event: Event, rec_id: str) -> dict:
    """The fields an outcome record copies from its event."""
    return {
        "rec_id": rec_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": event.type,
        "event_id": event.event_id,
        "ts": event.ts,
    }


def _unattributed(event: Event, reason: str) -> Unattributed:
    assert event.rec_id is not None
    return Unattributed(**_about(event, event.rec_id), reason=reason)


def _foreign(event: Event) -> bool:
    """True when the rec_id is one of ours (``rec-<tag>-...``) made for another user."""
    rec_id = event.rec_id or ""
    return bool(_REC_ID.match(rec_id)) and rec_id[4:10] != user_tag(event.user_id)


def attribute(
    open_lists: deque[ShownList],
    event: Event,
    cfg: AttributionConfig,
    early: deque[Event] | None = None,
    closed_ids: Collection[str] = (),
) -> tuple[list[Outcome], list[ListReward], list[Unattributed]]:
    """Credit ``event`` to the list it came from -> (outcomes, rewards of closed
    lists, interactions that named a list and could not be credited).

    An event whose ``rec_id`` names no list the user has (open, or among
    ``closed_ids``, the recently closed) and is not another user's is parked
    in ``early`` (when given): the dataflow reads ``events`` and
    ``recommendations`` as two topics, so a fast click can arrive before its
    list; ``claim_early`` credits it once the list is shown, and a parked
    event whose list never came within the window is ``unknown``.
    """
    closed = close_expired(open_lists, event.ts, cfg)
    lost = _expire_early(early, event.ts, cfg)
    if event.type == "view":
        return [], closed, lost
    if event.rec_id is not None:
        # Lists can come back out of order, so an open list may be past its
        # window even when the oldest one is not: check each match.
        match = next((lst for lst in open_lists if lst.rec_id == event.rec_id), None)
        if match is not None and event.ts - match.shown_ts <= cfg.window_s:
            outcome = _credit(match, event, cfg, "rec_id")
        elif match is not None or event.rec_id in closed_ids or event.rec_id in _ids(closed):
            return [], closed, [*lost, _unattributed(event, "expired")]
        elif _foreign(event):
            return [], closed, [*lost, _unattributed(event, "other_user")]
        else:
            if early is not None:
                early.append(event)
                while len(early) > cfg.max_early_events:
                    lost.append(_unattributed(early.popleft(), "unknown"))
            else:
                lost.append(_unattributed(event, "unknown"))
            return [], closed, lost
    elif open_lists and event.item_id in open_lists[-1].items:
        outcome = _credit(open_lists[-1], event, cfg, "window")
    else:
        outcome = None
    return ([outcome] if outcome else []), closed, lost


def _ids(rewards: list[ListReward]) -> set[str]:
    return {r.rec_id for r in rewards}


def _expire_early(
    early: deque[Event] | None, now_ts: float, cfg: AttributionConfig
) -> list[Unattributed]:
    """Parked events whose list could no longer credit them by ``now_ts``: unknown."""
    if not early:
        return []
    stale = [e for e in early if now_ts - e.ts > cfg.window_s]
    for e in stale:
        early.remove(e)
    return [_unattributed(e, "unknown") for e in stale]


def claim_early(
    open_lists: deque[ShownList], early: deque[Event], cfg: AttributionConfig
) -> tuple[list[Outcome], list[Unattributed]]:
    """Credit parked events whose list is now open (see ``attribute``); those
    outside its window are ``expired``."""
    if not early or not open_lists:
        return [], []
    newest = open_lists[-1]
    outcomes, lost = [], []
    for event in [e for e in early if e.rec_id == newest.rec_id]:
        early.remove(event)
        if abs(event.ts - newest.shown_ts) <= cfg.window_s:
            outcome = _credit(newest, event, cfg, "rec_id")
            if outcome is not None:
                outcomes.append(outcome)
        else:
            lost.append(_unattributed(event, "expired"))
    return outcomes, lost


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
        **_about(event, target.rec_id),
        experiment=target.experiment,
        policy=target.policy,
        revenue=revenue,
        attributed_by=how,
    )
