"""``streamrec ui``: one local web page to watch and drive a running pipeline.

The page (``streamrec/ui_static/``: HTML, vanilla JS and CSS that ship in the
package; no build step, nothing from the internet) is served by this process,
which

1. follows the public topics from their beginning without a consumer group
   (``events``, ``events.dlq``, ``recommendations``, ``outcomes``,
   ``outcomes.unattributed``) into :class:`LiveState`;
2. scrapes the dataflow's and the worker's ``/metrics`` once a second;
3. produces the shopper's clicks, carts and purchases on ``events`` as any
   storefront does: an :class:`~streams.contracts.Event` with the list's
   ``rec_id``;
4. pushes to the browser over server-sent events: each new list of the
   shopper on the page as it arrives, the tiles every second, the A/B report
   (:func:`experiments.report.experiment_report`, the figures of ``streamrec
   experiment report``) when it changes.

It is a reader and a storefront, never a step of the pipeline: nothing waits
for it, and stopping it changes nothing downstream. A record it cannot read
is counted and skipped. It binds to 127.0.0.1 unless told otherwise: it
produces events, so keep it local.

The page's events carry the store's clock, not the wall clock: the user's
newest event time seen on ``events`` plus the wall seconds since it was seen
(a user without one: the newest event time of anyone, the same way). Against
a live store that is now; during a replay of old data it is the replay's
time, so the attribution window of the list the shopper clicks (measured
from its trigger's event time) and the decay of the user's state treat the
page's events like the replayed ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from pydantic import ValidationError

from pipeline.processes import scrape_metrics
from streams.contracts import Event, Recommendation, Topics, parse
from streams.kafka import KafkaUnavailable, TopicFollower, produce_checked, producer

__all__ = ["ItemBook", "LiveState", "UiServer", "reason_text", "serve_until_interrupted"]

_log = logging.getLogger(__name__)

#: Seconds of records behind the events/s and lists/s tiles (by Kafka timestamp).
_RATE_WINDOW_S = 5.0
#: Seconds of lists behind the p50/p99 tiles.
_LATENCY_WINDOW_S = 60.0
#: Recent items kept per user for the page; users kept (the least recently active go).
_RECENT_ITEMS = 10
_MAX_USERS = 100_000
#: How long producing one event may wait for the broker's acknowledgement.
_PRODUCE_TIMEOUT_S = 5.0
#: The A/B report is recomputed at most this often, and only when records arrived.
_REPORT_EVERY_S = 2.0
#: The page's own events: what a shopper can do to an item.
_ACTIONS = ("view", "click", "add_to_cart", "favorite", "purchase")

# How each candidate source reads beside a listed item (model/reasons.py): with the
# user's item behind it, and without one. The demo's report prints the same words.
_BECAUSE_TEXT = {"covis": "bought with {}", "seq": "next after {}", "retrieval": "like {}"}
_SOURCE_TEXT = {
    "repeat": "you bought it before",
    "covis": "bought with your items",
    "seq": "what comes next",
    "retrieval": "matches your taste",
    "popular": "popular",
    "trending": "trending",
}


def reason_text(reason: dict | None, title: Callable[[str], str], width: int = 28) -> str:
    """A list item's ``reason`` as a few words: its source, the user's item behind
    it (``title`` names it, cut to ``width``), and the two features that added most.

    >>> reason_text({"source": "covis", "because": "i1", "top": {"covis": 1.2, "seq": 0.3}},
    ...             lambda item: "RED MUG")
    'bought with RED MUG (covis, seq)'
    >>> reason_text(None, str)
    ''
    """
    if not reason:
        return ""
    source, because = str(reason.get("source")), reason.get("because")
    if because and source in _BECAUSE_TEXT:
        name = title(str(because))
        name = name if len(name) <= width else name[: width - 1] + "…"
        text = _BECAUSE_TEXT[source].format(name)
    else:
        text = _SOURCE_TEXT.get(source, source)
    top = reason.get("top")
    names = [str(name) for name in list(top)[:2]] if isinstance(top, dict) else []
    return f"{text} ({', '.join(names)})" if names else text


class ItemBook:
    """Item titles for the page, and item vectors for each list's ILD.

    From a catalog folder (:meth:`from_catalog`); without one, items are shown
    by id, searched among the ids seen on ``events``, and lists have no ILD.
    """

    def __init__(
        self,
        item_ids: list[str] | None = None,
        titles: list[str] | None = None,
        vectors: np.ndarray | None = None,
        popularity: np.ndarray | None = None,
    ) -> None:
        self.item_ids = list(item_ids or [])
        self.titles = list(titles or self.item_ids)
        self.vectors = vectors
        self._row = {item: i for i, item in enumerate(self.item_ids)}
        order = np.argsort(-popularity, kind="stable") if popularity is not None else None
        self._popular = [self.item_ids[i] for i in order] if order is not None else self.item_ids
        self._lower = [t.lower() for t in self.titles]

    @classmethod
    def from_catalog(cls, path: Path) -> ItemBook:
        from streams.catalog import Catalog

        c = Catalog.load(path)
        return cls(c.item_ids, c.titles, c.vectors, c.popularity)

    def title(self, item_id: str) -> str:
        row = self._row.get(item_id)
        return self.titles[row] if row is not None else item_id

    def search(self, query: str, n: int, seen: list[str]) -> list[dict[str, str]]:
        """Up to ``n`` items whose title or id contains ``query`` (any case), the most
        popular first; an empty query gives the most popular. ``seen``: item ids
        read on ``events``, searched when there is no catalog."""
        q = query.strip().lower()
        if not self.item_ids:
            hits = [i for i in seen if q in i.lower()][:n]
            return [{"item_id": i, "title": i} for i in hits]
        out = []
        for item in self._popular:
            row = self._row[item]
            if not q or q in self._lower[row] or q in item.lower():
                out.append({"item_id": item, "title": self.titles[row]})
                if len(out) >= n:
                    break
        return out

    def ild(self, item_ids: list[str]) -> float | None:
        """The list's intra-list diversity, as the worker computes it (mean pairwise
        1 - cos of the item vectors); None without vectors."""
        if self.vectors is None:
            return None
        from model.rerank import intra_list_diversity  # numpy only

        rows = [self._row[i] for i in item_ids if i in self._row]
        return intra_list_diversity(self.vectors[rows])


@dataclass
class _User:
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_RECENT_ITEMS))
    last_ts: float | None = None  # the newest event time seen (store clock)
    last_seen: float = 0.0  # time.monotonic() when it was seen
    list: dict[str, Any] | None = None


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None: the page's JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _samples(text: str | None, name: str) -> list[tuple[dict[str, str], float]] | None:
    """Every sample called ``name`` with its labels; None when the text is None or
    has no such sample (a process without that metric, or not answering)."""
    if text is None:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        found = [
            (dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]
    except ValueError:  # not a Prometheus exposition
        return None
    return found or None


def _total(text: str | None, name: str) -> float | None:
    found = _samples(text, name)
    return None if found is None else sum(v for _, v in found)


class LiveState:
    """What the page shows, built from the topics' records; safe across threads.

    :meth:`apply` takes one record of a followed topic and never raises: a
    record that breaks its contract is counted (``bad_records``) and skipped,
    and for the A/B report kept as it is, so the report counts it as
    ``streamrec experiment report`` does. Lists and outcomes are kept for the
    report (a list without its items, a few hundred bytes), users up to
    ``_MAX_USERS``, the least recently active dropped first.
    """

    def __init__(self, topics: Topics, book: ItemBook) -> None:
        self.topics, self.book = topics, book
        self._lock = threading.Lock()
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._event_times: deque[float] = deque()
        self._lists: deque[tuple[float, float]] = deque()  # (Kafka ts, latency_ms)
        self._latest: deque[dict[str, Any]] = deque(maxlen=8)
        self._prices: dict[str, float] = {}
        self._seen_items: OrderedDict[str, None] = OrderedDict()
        self._clock: tuple[float, float] | None = None  # (newest event ts, monotonic then)
        self._report_records: dict[str, list[bytes]] = {
            topics.recommendations: [],
            topics.outcomes: [],
            topics.unattributed: [],
        }
        self._report_changed = False
        self.counts = {"events": 0, "lists": 0, "dlq": 0, "bad_records": 0}

    # --- reading the topics ------------------------------------------------------

    def apply(self, topic: str, value: bytes | None, kafka_ts: float) -> dict[str, Any] | None:
        """Take one record; returns the list's page view for a ``recommendations`` one."""
        try:
            with self._lock:
                return self._apply(topic, value, kafka_ts)
        except Exception:  # noqa: BLE001 - a record must never stop the page
            _log.exception("skipped a %s record the page could not read", topic)
            self.counts["bad_records"] += 1
            return None

    def _apply(self, topic: str, value: bytes | None, kafka_ts: float) -> dict[str, Any] | None:
        t = self.topics
        if topic == t.events:
            self._event_times.append(kafka_ts)
            event = parse(Event, value)
            if isinstance(event, Event):
                self.counts["events"] += 1
                self._on_event(event)
            else:
                self.counts["bad_records"] += 1  # the dataflow dead-letters it
        elif topic == t.events_dlq:
            self.counts["dlq"] += 1
        elif topic == t.recommendations:
            rec = parse(Recommendation, value)
            if not isinstance(rec, Recommendation):
                self.counts["bad_records"] += 1
                self._keep(topic, value or b"")
                return None
            self.counts["lists"] += 1
            if math.isfinite(rec.latency_ms):
                self._lists.append((kafka_ts, rec.latency_ms))
            view = self._view(rec)
            self._user(rec.user_id).list = view
            self._latest.appendleft({k: view[k] for k in ("user_id", "latency_ms", "arm")})
            # Without its items for the report, unless that changes how it parses
            # (pydantic writes a non-finite float as null).
            finite = math.isfinite(rec.latency_ms) and math.isfinite(rec.created_ts)
            slim = rec.model_copy(update={"items": []}).to_bytes() if finite else value
            self._keep(topic, slim or b"")
            return view
        elif topic in self._report_records:
            self._keep(topic, value or b"")
        return None

    def _keep(self, topic: str, value: bytes) -> None:
        self._report_records[topic].append(value)
        self._report_changed = True

    def _user(self, user_id: str) -> _User:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User()
            if len(self._users) > _MAX_USERS:
                self._users.popitem(last=False)
        self._users.move_to_end(user_id)
        return user

    def _on_event(self, event: Event) -> None:
        now = time.monotonic()
        user = self._user(event.user_id)
        if not any(r["event_id"] == event.event_id for r in user.recent):
            user.recent.appendleft(
                {
                    "event_id": event.event_id,
                    "item_id": event.item_id,
                    "title": self.book.title(event.item_id),
                    "type": event.type,
                    "ts": event.ts,
                }
            )
        if user.last_ts is None or event.ts >= user.last_ts:
            user.last_ts, user.last_seen = event.ts, now
        if self._clock is None or event.ts >= self._clock[0]:
            self._clock = (event.ts, now)
        if event.price is not None:
            self._prices[event.item_id] = event.price
        self._seen_items[event.item_id] = None
        self._seen_items.move_to_end(event.item_id)
        if len(self._seen_items) > 10_000:
            self._seen_items.popitem(last=False)

    def _view(self, rec: Recommendation) -> dict[str, Any]:
        """A list as the page shows it: titles, reasons in words, the list's ILD."""
        ids = [x.item_id for x in rec.items]
        return _finite(
            {
                "rec_id": rec.rec_id,
                "request_id": rec.request_id,
                "user_id": rec.user_id,
                "trigger_event_id": rec.trigger_event_id,
                "latency_ms": rec.latency_ms,
                "created_ts": rec.created_ts,
                "model_version": rec.model_version,
                "experiment": rec.experiment.model_dump(),
                "arm": rec.policy.arm,
                "policy": rec.policy.model_dump(),
                "ild": self.book.ild(ids),
                "items": [
                    {
                        "item_id": x.item_id,
                        "title": self.book.title(x.item_id),
                        "rank": x.rank,
                        "score": x.score,
                        "reason": reason_text(x.reason, self.book.title) or None,
                        "source": (x.reason or {}).get("source"),
                    }
                    for x in rec.items
                ],
            }
        )

    # --- what the page asks ------------------------------------------------------

    def user(self, user_id: str) -> dict[str, Any]:
        """A user's recent items and current list; an unknown user has neither."""
        with self._lock:
            user = self._users.get(user_id)
            return {
                "user_id": user_id,
                "known": user is not None,
                "recent": list(user.recent) if user else [],
                "list": user.list if user else None,
            }

    def users(self, query: str = "", n: int = 30) -> list[str]:
        """The most recently active users whose id contains ``query``."""
        q = query.strip().lower()
        with self._lock:
            found = []
            for user_id in reversed(self._users):
                if q in user_id.lower():
                    found.append(user_id)
                    if len(found) >= n:
                        break
            return found

    def search(self, query: str, n: int = 20) -> list[dict[str, str]]:
        with self._lock:
            seen = list(reversed(self._seen_items))
        return self.book.search(query, n, seen)

    def event_time(self, user_id: str) -> float:
        """The store's clock for ``user_id``'s next event (see the module's docstring)."""
        with self._lock:
            user = self._users.get(user_id)
            anchor = (user.last_ts, user.last_seen) if user and user.last_ts else self._clock
        if anchor is None:
            return time.time()
        return anchor[0] + (time.monotonic() - anchor[1])

    def price(self, item_id: str) -> float | None:
        """The item's price on its newest event that had one."""
        with self._lock:
            return self._prices.get(item_id)

    def produced(self, event: Event) -> None:
        """The page produced ``event``: the user's clock moves now, not when it is read back."""
        with self._lock:
            self._on_event(event)

    def tiles(self, dataflow: str | None, worker: str | None) -> dict[str, Any]:
        """The tiles: rates and latency from the topics, the rest from ``/metrics`` texts
        (None: that process did not answer, and its tiles say so)."""
        now = time.time()
        with self._lock:
            while self._event_times and self._event_times[0] < now - _RATE_WINDOW_S:
                self._event_times.popleft()
            while self._lists and self._lists[0][0] < now - _LATENCY_WINDOW_S:
                self._lists.popleft()
            events_s = sum(1 for ts in self._event_times if ts >= now - _RATE_WINDOW_S)
            lists_s = sum(1 for ts, _ in self._lists if ts >= now - _RATE_WINDOW_S)
            latencies = [lat for _, lat in self._lists]
            counts = dict(self.counts)
            latest = list(self._latest)
        pct = np.percentile(latencies, [50, 99]).tolist() if latencies else [None, None]
        return _finite(
            {
                "events_per_s": events_s / _RATE_WINDOW_S,
                "lists_per_s": lists_s / _RATE_WINDOW_S,
                "latency_p50_ms": pct[0],
                "latency_p99_ms": pct[1],
                "latency_lists": len(latencies),
                **counts,
                "worker_lag": _total(worker, "streamrec_worker_consumer_lag"),
                "dataflow_lag": _total(dataflow, "bytewax_kafka_consumer_lag"),
                "worker_ild": _total(worker, "streamrec_list_ild"),
                "metrics": {"dataflow": dataflow is not None, "worker": worker is not None},
                "bandit": _bandit_rows(dataflow, worker),
                "latest": latest,
            }
        )

    def report(self) -> dict[str, Any] | None:
        """The A/B report over every list and outcome read, as ``streamrec experiment
        report --format json`` gives it; None when nothing arrived since the last call."""
        from experiments.report import experiment_report

        with self._lock:
            if not self._report_changed:
                return None
            self._report_changed = False
            recs, outcomes, lost = (list(v) for v in self._report_records.values())
        return json.loads(experiment_report(recs, outcomes, unattributed=lost).to_json())


def _bandit_rows(dataflow: str | None, worker: str | None) -> list[dict[str, Any]]:
    """Per (segment, arm): the dataflow's closed lists (pulls) and mean reward, the
    worker's picks; the label sets with something in them."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for text, name, column in (
        (dataflow, "streamrec_bandit_pulls_total", "pulls"),
        (dataflow, "streamrec_bandit_mean_reward", "mean_reward"),
        (worker, "streamrec_bandit_arm_picks_total", "picks"),
    ):
        for labels, value in _samples(text, name) or []:
            key = (labels.get("segment", ""), labels.get("arm", ""))
            rows.setdefault(key, {"segment": key[0], "arm": key[1]})[column] = value
    return [r for _, r in sorted(rows.items()) if r.get("pulls") or r.get("picks")]


class _Hub:
    """Server-sent-event streams, one queue each; a slow page drops messages rather
    than holding up the reader of the topics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[queue.Queue[bytes | None], str | None] = {}

    def subscribe(self, user_id: str | None) -> queue.Queue[bytes | None]:
        q: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        with self._lock:
            self._subs[q] = user_id
        return q

    def unsubscribe(self, q: queue.Queue[bytes | None]) -> None:
        with self._lock:
            self._subs.pop(q, None)

    def publish(self, kind: str, data: Any, user_id: str | None = None) -> None:
        """To every stream, or with ``user_id`` to the streams that follow that user."""
        message = f"event: {kind}\ndata: {json.dumps(data, allow_nan=False)}\n\n".encode()
        with self._lock:
            targets = [q for q, u in self._subs.items() if user_id is None or u == user_id]
        for q in targets:
            with contextlib.suppress(queue.Full):
                q.put_nowait(message)

    def close(self) -> None:
        with self._lock:
            targets = list(self._subs)
        for q in targets:  # a full queue ends anyway: its stream sees the stop flag
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)


def _static(name: str) -> bytes:
    return resources.files("streamrec").joinpath("ui_static", name).read_bytes()


_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


class _BadRequest(ValueError):
    """What the page sent cannot be used; the message says why (HTTP 400)."""


class UiServer:
    """The page's HTTP server, the topic reader and the metrics ticker, as threads.

    ``start()`` binds (``port`` 0 = a free one; :attr:`url` then says which) and
    returns at once; ``close()`` (or leaving ``with``) stops everything.
    """

    def __init__(
        self,
        brokers: str,
        topics: Topics,
        book: ItemBook,
        host: str = "127.0.0.1",
        port: int = 0,
        dataflow_metrics_port: int = 0,
        worker_metrics_port: int = 0,
    ) -> None:
        self.brokers, self.topics = brokers, topics
        self.state = LiveState(topics, book)
        self.ports = {"dataflow": dataflow_metrics_port, "worker": worker_metrics_port}
        self._hub = _Hub()
        self._stop = threading.Event()
        self._producer = producer(brokers)
        self._tiles: dict[str, Any] = {}
        self._report: dict[str, Any] | None = None
        # The stdlib server: the page has one client or a few, a server-sent-event stream
        # needs only a thread per open page, and it adds no dependency to the package.
        self._http = ThreadingHTTPServer((host, port), self._handler())
        self._http.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self._follower: TopicFollower | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> UiServer:
        t = self.topics
        names = [t.events, t.events_dlq, t.recommendations, t.outcomes, t.unattributed]
        self._follower = TopicFollower(self.brokers, names)
        for name, target in (
            ("ui-http", self._http.serve_forever),
            ("ui-follow", self._follow),
            ("ui-tick", self._tick),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._stop.set()
        self._hub.close()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(10)
        if self._follower is not None:
            self._follower.close()
        self._producer.flush(2)

    def __enter__(self) -> UiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- threads -----------------------------------------------------------------

    def _follow(self) -> None:
        """Read the topics; push each new list to the pages that follow its user.

        One record is waited for (``poll`` returns as soon as it arrives: no batch
        wait on the way to the page), then whatever else is there is drained."""
        assert self._follower is not None
        while not self._stop.is_set():
            try:
                messages = self._follower.poll(1, 0.25)
                if messages:
                    messages += self._follower.poll(1000, 0)
            except Exception:  # noqa: BLE001 - the broker may come back
                _log.warning("reading the topics failed; trying again", exc_info=True)
                time.sleep(1.0)
                continue
            for m in messages:
                kind, ms = m.timestamp()
                ts = ms / 1000.0 if kind and ms > 0 else time.time()
                view = self.state.apply(m.topic(), m.value(), ts)
                if view is not None:
                    try:
                        self._hub.publish("list", view, view["user_id"])
                    except ValueError:  # not JSON after all: the page does without it
                        _log.warning("a list the page could not send: %s", view["rec_id"])

    def _tick(self) -> None:
        """Once a second: scrape the metrics, push the tiles; the report when it changed."""
        last_report = 0.0
        while not self._stop.wait(1.0):
            try:
                texts = {
                    name: scrape_metrics(port, timeout_s=0.5) if port else None
                    for name, port in self.ports.items()
                }
                self._tiles = self.state.tiles(texts["dataflow"], texts["worker"])
                self._hub.publish("tiles", self._tiles)
                if time.monotonic() - last_report >= _REPORT_EVERY_S:
                    report = self.state.report()
                    if report is not None:
                        last_report = time.monotonic()
                        self._report = report
                        self._hub.publish("report", report)
            except Exception:  # noqa: BLE001 - the tiles are not worth stopping for
                _log.exception("could not refresh the tiles")

    # --- what the page asks ------------------------------------------------------

    def produce_event(self, body: dict[str, Any]) -> dict[str, Any]:
        """The shopper's action -> an event on ``events``, once the broker acknowledged it."""
        user_id, item_id = body.get("user_id"), body.get("item_id")
        kind = body.get("type", "click")
        if kind not in _ACTIONS:
            raise _BadRequest(f"type must be one of {', '.join(_ACTIONS)}, got {kind!r}")
        if not isinstance(user_id, str) or not isinstance(item_id, str):
            raise _BadRequest("user_id and item_id are required strings")
        rec_id = body.get("rec_id") or None
        price = self.state.price(item_id) if kind == "purchase" else None
        try:
            event = Event(
                event_id=f"ui-{uuid.uuid4().hex[:16]}",
                type=kind,
                user_id=user_id,
                item_id=item_id,
                ts=self.state.event_time(user_id),
                rec_id=rec_id,
                price=price,
                quantity=1 if kind == "purchase" else None,
            )
        except ValidationError as exc:
            raise _BadRequest(f"not a valid event: {exc.errors()[0]['msg']}") from None
        failed: list = []
        value = event.to_bytes()
        record = (self.topics.events, value, user_id.encode(), None)
        produce_checked(self._producer, [record], failed)
        if self._producer.flush(_PRODUCE_TIMEOUT_S) > 0:
            raise KafkaUnavailable(
                f"the broker did not acknowledge the event within {_PRODUCE_TIMEOUT_S:g} s"
            )
        if failed:
            raise KafkaUnavailable(f"the broker refused the event: {failed[0][1]}")
        self.state.produced(event)
        return json.loads(value)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "streamrec-ui"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                _log.debug("%s " + format, self.address_string(), *args)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                url = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    if url.path in _STATIC:
                        name, ctype = _STATIC[url.path]
                        self._send(HTTPStatus.OK, _static(name), ctype)
                    elif url.path == "/api/stream":
                        self._stream(q.get("user") or None)
                    elif url.path == "/api/state":
                        self._json({"tiles": server._tiles, "report": server._report})
                    elif url.path == "/api/users":
                        self._json(server.state.users(q.get("q", "")))
                    elif url.path == "/api/user":
                        self._json(server.state.user(q.get("id", "")))
                    elif url.path == "/api/items":
                        self._json(server.state.search(q.get("q", ""), _int(q.get("n"), 20)))
                    else:
                        self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:  # noqa: N802
                if urlsplit(self.path).path != "/api/events":
                    self._json({"error": "POST /api/events only"}, HTTPStatus.NOT_FOUND)
                    return
                # Only JSON: a page of another site can send a "simple" cross-site
                # POST (form or text/plain) to 127.0.0.1 without asking first, but
                # not one with this content type (the browser's preflight finds no
                # CORS answer here), so no other site can shop in the user's name.
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype.lower() != "application/json":
                    self._json(
                        {"error": "Content-Type must be application/json"},
                        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    )
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    if not 0 < length <= 64 * 1024:
                        raise _BadRequest("a JSON body of at most 64 kB is required")
                    body = json.loads(self.rfile.read(length))
                    if not isinstance(body, dict):
                        raise _BadRequest("the body must be a JSON object")
                    self._json(server.produce_event(body))
                except (_BadRequest, ValueError) as exc:
                    self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
                except KafkaUnavailable as exc:
                    self._json({"error": str(exc)}, HTTPStatus.SERVICE_UNAVAILABLE)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
                body = json.dumps(data, allow_nan=False).encode()
                self._send(status, body, "application/json")

            def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, user_id: str | None) -> None:
                """Server-sent events until the page goes or the server stops."""
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                q = server._hub.subscribe(user_id)
                try:
                    self.wfile.write(b"retry: 1000\n\n")
                    self.wfile.flush()
                    for message in _messages(q, server._stop):
                        self.wfile.write(message)
                        self.wfile.flush()
                finally:
                    server._hub.unsubscribe(q)

        return Handler


def serve_until_interrupted(check: Callable[[], None] = lambda: None) -> None:
    """Block until Ctrl-C (or SIGTERM); ``check`` runs every second and may raise (a
    child of the demo that exited)."""
    import signal

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            check()
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _messages(q: queue.Queue[bytes | None], stop: threading.Event) -> Iterator[bytes]:
    """A stream's messages, with a comment line every 15 s so proxies keep it open."""
    while not stop.is_set():
        try:
            message = q.get(timeout=15)
        except queue.Empty:
            yield b": keep-alive\n\n"
            continue
        if message is None:
            return
        yield message


def _int(text: str | None, default: int) -> int:
    try:
        return max(1, min(200, int(text))) if text else default
    except ValueError:
        return default
