"""The attribution clock on the real broker: a returning shopper's first click counts.

A closed loop in small (issue 19): users whose events are weeks old ask for a
list explicitly, click an item of it with its ``rec_id`` and ``ts`` = now;
every such click inside the window is attributed, and clicks that name a list
they cannot be credited to are counted by reason on ``outcomes.unattributed``.
"""

from __future__ import annotations

import json
import time

import pytest

from streams.contracts import Event, RecommendationRequest, rec_id_for
from tests.helpers import collect, pipeline, produce_all, values

pytestmark = pytest.mark.integration

WEEKS_AGO = time.time() - 21 * 86400.0
USERS = [f"old-{i}" for i in range(6)]


def _event(event_id: str, user: str, item: str, ts: float, rec_id: str | None = None) -> bytes:
    kind = "click" if rec_id else "purchase"
    event = Event(event_id=event_id, type=kind, user_id=user, item_id=item, ts=ts, rec_id=rec_id)
    return event.to_bytes()


def test_a_returning_shoppers_first_click_is_attributed_and_the_rest_counted_by_reason(
    tmp_path, broker, topics, catalog_path, generic_data
) -> None:
    items = [line.split(",")[0] for line in (generic_data / "items.csv").read_text().split()[1:]]
    # Warm-up: old events (three weeks ago), far outside a 30-minute window.
    warm = [
        (u.encode(), _event(f"w-{u}-{j}", u, items[(i * 3 + j) % len(items)], WEEKS_AGO + j))
        for i, u in enumerate(USERS)
        for j in range(3)
    ]
    asks = [
        (u.encode(), RecommendationRequest(request_id=f"ask-{u}", user_id=u, k=5).to_bytes())
        for u in USERS
    ]
    with pipeline(tmp_path, broker, topics, catalog_path) as procs:
        produce_all(broker.bootstrap, topics.events, warm)
        produce_all(broker.bootstrap, topics.recommendation_requests, asks)
        got = collect(
            broker.bootstrap,
            [topics.recommendations],
            until=lambda ms: (
                {json.loads(m.value())["request_id"] for m in ms} >= {f"ask-{u}" for u in USERS}
            ),
            procs=procs,
        )
        lists = {r["request_id"]: r for r in values(got, topics.recommendations) if r["request_id"]}
        now = time.time()
        clicks = []
        for u in USERS:  # one click per shopper on the first item of their first list
            rec = lists[f"ask-{u}"]
            clicks.append((u, rec["rec_id"], rec["items"][0]["item_id"]))
        first, second = USERS[0], USERS[1]
        bad = [
            # A list id never shown to anyone (our shape, this user's tag): unknown.
            (first, rec_id_for("ask-never-sent", first), items[0], now),
            # The first user's list, clicked by the second user: other_user.
            (second, lists[f"ask-{first}"]["rec_id"], items[1], now),
            # The user's own list, but two hours after it was asked for: expired.
            (first, lists[f"ask-{first}"]["rec_id"], items[2], now + 7200.0),
        ]
        records = [
            (u.encode(), _event(f"c-{u}", u, item, now, rec_id)) for u, rec_id, item in clicks
        ]
        records += [
            (u.encode(), _event(f"bad-{n}", u, item, ts, rec_id))
            for n, (u, rec_id, item, ts) in enumerate(bad)
        ]
        produce_all(broker.bootstrap, topics.events, records)
        # The unknown one waits for its list until a later event ends the window.
        later = _event("later", first, items[3], now + 2 * 7200.0)
        produce_all(broker.bootstrap, topics.events, [(first.encode(), later)])
        got = collect(
            broker.bootstrap,
            [topics.outcomes, topics.unattributed],
            until=lambda ms: (
                len(values(ms, topics.outcomes)) >= len(USERS)
                and len(values(ms, topics.unattributed)) >= len(bad)
            ),
            procs=procs,
        )
    outcomes = values(got, topics.outcomes)
    attributed = {(o["user_id"], o["rec_id"]) for o in outcomes if o["attributed_by"] == "rec_id"}
    assert attributed == {(u, rec_id) for u, rec_id, _ in clicks}
    reasons = {o["event_id"]: o["reason"] for o in values(got, topics.unattributed)}
    assert reasons == {"bad-0": "unknown", "bad-1": "other_user", "bad-2": "expired"}
