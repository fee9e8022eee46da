"""Does the in-process harness measure the deployed system? Replay and compare.

1. In-process: feed the first ``n`` events of the dataset, in order, through
   the dataflow's :class:`~streams.dataflow.UserStep` (the rank request each
   event triggers is kept) and their co-visit and hit records through its
   ``item-signals`` step (:class:`~streams.signals.SignalsFeed`); then ask for
   one explicit list for each of the slice's first ``explicit_users`` users,
   as a ``recommendation-requests`` record does. Rank all of them with the
   worker's ranker (``model.ranker.build_ranker``), ``batch_size`` per call,
   its ``signals`` the table the rows fill.
2. Deployed: replay the same events onto the real (embedded) broker, run the
   real dataflow and worker as child processes, and collect the
   event-triggered lists from ``recommendations``; wait until the worker has
   applied every ``item-signals`` row of those events; then send the explicit
   requests and collect their lists.
3. Compare per trigger (event id, or explicit request id): are the item ids
   identical, in order, and what is the largest absolute score difference?

Waiting for the signals. The worker applies ``item-signals`` rows on a
follower thread, apart from ranking. The embedded broker's high watermarks
are not reliable, so the wait counts records instead: step 1 knows how many
signal records the events make (one per co-visit or hit), every row carries
how many records its item has applied (the dataflow coalesces one item's
records of a batch into one row), and the runner reads the worker's
``streamrec_worker_signal_records`` (the sum over its latest rows) on its
``/metrics`` until it reaches that number. Only then do the explicit
requests go out, so their lists see exactly the in-process table.

Event-triggered lists are ranked whenever the worker gets to them, with the
rows its follower has applied by then (usually nearly all: applying a row is
far cheaper than ranking a list); in-process they are ranked with the final
table. A scorer that reads the signals (it holds them as ``scorer.signals``,
like the fusion scorer) may therefore rank an event-triggered list
differently; for it those lists (and their score differences) are reported,
and only the explicit ones must be identical and within tolerance. Other
scorers must match on both.

Bounded co-visitation prunes in arrival order, which Bytewax does not fix
within an epoch; its buffer is kept deep enough that the published
neighbours do not depend on it (``streams.signals._BUFFER``): 100 of 100
explicit lists after 20,000 online-retail events were identical with it.

The two sides batch the LM differently (the worker's micro-batches against
fixed batches here) and the published scores are rounded to 6 decimals, so
scores agree to about 1e-6; :data:`SCORE_TOLERANCE` is the bound checked.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from streams.catalog import Catalog
from streams.contracts import RankRequest, Recommendation, RecommendationRequest, Topics
from streams.dataflow import Trigger, UserStep
from streams.signals import CoVisit, Hit, SignalsConfig, SignalsFeed
from streams.state import UserState

if TYPE_CHECKING:
    from corpus.datasets import Dataset
    from model.ranker import Ranker
    from pipeline.processes import ProcessGroup
    from streams.settings import Settings

__all__ = [
    "SCORE_TOLERANCE",
    "ConsistencyReport",
    "PipelineStalled",
    "check_consistency",
    "in_process_lists",
    "pipeline_lists",
    "write_consistency",
]

#: Largest absolute score difference accepted between the two sides.
SCORE_TOLERANCE = 1e-5

#: A list: (item_id, score) pairs in list order.
Ranked = list[tuple[str, float]]


class PipelineStalled(TimeoutError):
    """The deployed pipeline stopped making progress before every list was in."""


@dataclass(frozen=True)
class ConsistencyReport:
    """The comparison of in-process and deployed lists: one per trigger event,
    one per explicit request sent after the worker applied the item signals."""

    events: int
    pipeline_lists: int
    in_process_lists: int
    compared: int
    identical: int
    max_score_diff: float
    tolerance: float
    seconds: float
    mismatches: list[dict] = field(default_factory=list)
    explicit: int = 0
    explicit_compared: int = 0
    explicit_identical: int = 0
    signal_rows: int = 0
    signals_read: bool = False
    event_score_diff: float = 0.0

    @property
    def ok(self) -> bool:
        """Every trigger has a list on both sides, all identical and with scores
        within tolerance (event-triggered ones only when the ranker reads no
        signals: ``max_score_diff`` then covers the explicit lists alone)."""
        return (
            self.compared == self.events
            and (self.signals_read or self.identical == self.compared)
            and self.explicit_compared == self.explicit
            and self.explicit_identical == self.explicit_compared
            and self.max_score_diff <= self.tolerance
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines of the report, for the terminal and Markdown."""
        lag = " (signals may lag in the worker: not checked)" if self.signals_read else ""
        return [
            ("events replayed", f"{self.events:,}"),
            ("lists through Kafka (dataflow + worker)", f"{self.pipeline_lists:,}"),
            ("lists in-process (UserStep + Ranker)", f"{self.in_process_lists:,}"),
            ("compared (same trigger event)", f"{self.compared:,}"),
            ("identical item ids, in order" + lag, f"{self.identical:,}"),
            ("signal records behind the rows the worker applied first", f"{self.signal_rows:,}"),
            ("explicit requests, then compared", f"{self.explicit:,} / {self.explicit_compared:,}"),
            ("explicit lists identical", f"{self.explicit_identical:,}"),
            ("max absolute score difference (checked lists)", f"{self.max_score_diff:.2e}"),
            ("... over identical event-triggered lists" + lag, f"{self.event_score_diff:.2e}"),
            ("tolerance", f"{self.tolerance:.0e}"),
            ("verdict", "consistent" if self.ok else "DIFFERENT"),
            ("run time", f"{self.seconds:.0f} s"),
        ]

    def to_markdown(self, title: str) -> str:
        lines = [f"# {title}", "", "| | |", "|---|---|"]
        return "\n".join(lines + [f"| {a} | {b} |" for a, b in self.rows()]) + "\n"


def _explicit_id(user_id: str) -> str:
    return f"consistency:{user_id}"


@dataclass
class _Fed:
    """The in-process side after feeding: states, event-triggered requests, signals."""

    step: UserStep
    states: dict[str, UserState] = field(default_factory=dict)  # users in first-seen order
    requests: list[RankRequest] = field(default_factory=list)
    signals: SignalsFeed | None = None


def _feed(dataset: Dataset, catalog: Catalog, settings: Settings, n_events: int) -> _Fed:
    """Feed the first ``n_events`` through UserStep and the item-signals step."""
    fed = _Fed(UserStep(catalog=catalog, settings=settings))
    signals = fed.signals = SignalsFeed(SignalsConfig.from_settings(settings))
    for event in dataset.interactions.events(0, n_events):
        trigger = Trigger(message=event, arrival_ts=event.ts)
        fed.states[event.user_id], outputs = fed.step.apply(fed.states.get(event.user_id), trigger)
        fed.requests += [o for o in outputs if isinstance(o, RankRequest)]
        signals.add(o for o in outputs if isinstance(o, (CoVisit, Hit)))
    signals.flush()
    return fed


def _rank_fed(
    fed: _Fed, ranker: Ranker, users: Sequence[str], k: int, batch_size: int
) -> dict[str, Ranked]:
    """Trigger (event id or explicit request id) -> list: the fed events' requests,
    then one explicit request per user, ranked with the fed signals."""
    requests = list(fed.requests)
    for user in users:
        ask = RecommendationRequest(request_id=_explicit_id(user), user_id=user, k=k)
        fed.states[user], outputs = fed.step.apply(fed.states.get(user), Trigger(ask, 0.0))
        requests += [o for o in outputs if isinstance(o, RankRequest)]
    assert fed.signals is not None
    ranker.signals = fed.signals.table
    lists: dict[str, Ranked] = {}
    for start in tqdm(range(0, len(requests), batch_size), desc="in-process", unit="batch"):
        batch = requests[start : start + batch_size]
        for request, ranked in zip(batch, ranker.rank(batch), strict=True):
            lists[str(request.explicit_request_id or request.trigger_event_id)] = ranked
    return lists


def in_process_lists(
    dataset: Dataset,
    catalog: Catalog,
    settings: Settings,
    n_events: int,
    ranker: Ranker | None = None,
    batch_size: int = 64,
    explicit_users: Sequence[str] = (),
) -> dict[str, Ranked]:
    """Trigger -> list, for the first ``n_events`` events (keyed by event id) and
    an explicit request of each of ``explicit_users`` after them, computed in-process."""
    if ranker is None:
        from model.ranker import build_ranker

        ranker = build_ranker(settings, catalog)
    fed = _feed(dataset, catalog, settings, n_events)
    return _rank_fed(fed, ranker, explicit_users, settings.k, batch_size)


def _signal_rows_applied(port: int) -> float:
    """The worker's ``streamrec_worker_signal_records``: the signal records behind
    the rows it applied (0 until /metrics answers)."""
    from pipeline.processes import metric_sum, scrape_metrics

    text = scrape_metrics(port)
    return 0.0 if text is None else metric_sum(text, "streamrec_worker_signal_records")


def pipeline_lists(
    dataset: Dataset,
    settings: Settings,
    n_events: int,
    *,
    log_dir: Path,
    idle_timeout_s: float = 120.0,
    explicit_users: Sequence[str] = (),
    signal_rows: int = 0,
) -> dict[str, Ranked]:
    """Trigger -> list through Kafka: the first ``n_events`` events' lists (keyed by
    event id), then, once the worker has applied ``signal_rows`` item-signals rows,
    one explicit request of each of ``explicit_users`` (keyed by request id).

    ``settings.brokers`` must point at a broker holding ``settings.topic_prefix``'s
    topics; the dataflow and the worker run as children for the duration.
    Raises :class:`PipelineStalled` when nothing moves for ``idle_timeout_s``.
    """
    from pipeline.broker import free_port
    from pipeline.processes import ProcessGroup, start_pipeline
    from pipeline.replay import replay
    from streams.kafka import TopicFollower, producer

    topics = Topics(settings.topic_prefix)
    # Every event's list is compared, so none may be skipped for a newer one.
    port = free_port()
    lists: dict[str, Ranked] = {}
    with ProcessGroup(log_dir) as procs:
        start_pipeline(procs, settings.model_copy(update={"latest_wins": False}), worker_port=port)
        # The dataflow reads `events` from the beginning: producing before it is up is fine.
        replay(
            dataset,
            producer(settings.brokers),
            topics.events,
            limit=n_events,
            include_bad=False,
            progress=False,
        )
        follower = TopicFollower(settings.brokers, [topics.recommendations])

        def collect(want: int, desc: str) -> None:
            last = time.monotonic()
            with tqdm(total=want, initial=len(lists), desc=desc, unit="list") as bar:
                while len(lists) < want:
                    procs.check()
                    for m in follower.poll(500, 0.2):
                        rec = Recommendation.model_validate_json(m.value())
                        key = rec.request_id or rec.trigger_event_id
                        if key is None or key in lists:
                            continue
                        lists[key] = [(x.item_id, x.score) for x in rec.items]
                        last = time.monotonic()
                        bar.update()
                    if time.monotonic() - last > idle_timeout_s:
                        raise PipelineStalled(
                            f"{len(lists)} of {want} lists after {idle_timeout_s:g} s "
                            f"without a new one; see the logs in {log_dir}"
                        )

        try:
            collect(n_events, "through kafka")
            if explicit_users:
                _wait_signal_rows(port, signal_rows, procs, idle_timeout_s, log_dir)
                p = producer(settings.brokers)
                for user in explicit_users:
                    ask = RecommendationRequest(
                        request_id=_explicit_id(user), user_id=user, k=settings.k
                    )
                    p.produce(
                        topics.recommendation_requests, key=user.encode(), value=ask.to_bytes()
                    )
                p.flush(30)
                collect(n_events + len(explicit_users), "explicit requests")
        finally:
            follower.close()
    return lists


def _wait_signal_rows(
    port: int, rows: int, procs: ProcessGroup, idle_timeout_s: float, log_dir: Path
) -> None:
    """Until the rows the worker applied account for ``rows`` signal records (the
    dataflow coalesces a batch's records of one item into one row)."""
    applied, last = -1.0, time.monotonic()
    while True:
        procs.check()
        now_applied = _signal_rows_applied(port)
        if now_applied >= rows:
            return
        if now_applied > applied:
            applied, last = now_applied, time.monotonic()
        elif time.monotonic() - last > idle_timeout_s:
            raise PipelineStalled(
                f"the worker applied {applied:.0f} of {rows} item-signals rows, none in "
                f"{idle_timeout_s:g} s; see the logs in {log_dir}"
            )
        time.sleep(0.1)


def _compare(
    triggers: Sequence[str], pipeline: dict[str, Ranked], local: dict[str, Ranked]
) -> tuple[int, int, float, list[dict]]:
    """(compared, identical, max score difference over identical lists, first mismatches)
    over ``triggers`` (event ids or explicit request ids)."""
    compared = identical = 0
    worst = 0.0
    mismatches: list[dict] = []
    for event_id in triggers:
        if event_id not in pipeline or event_id not in local:
            continue
        compared += 1
        a, b = pipeline[event_id], local[event_id]
        same = [i for i, _ in a] == [i for i, _ in b]
        identical += same
        if same:
            worst = max([worst, *(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))])
        elif len(mismatches) < 5:
            mismatches.append(
                {"event_id": event_id, "kafka": [i for i, _ in a], "in_process": [i for i, _ in b]}
            )
    return compared, identical, worst, mismatches


def check_consistency(
    dataset: Dataset,
    catalog_path: Path,
    settings: Settings,
    n_events: int,
    *,
    log_dir: Path | None = None,
    idle_timeout_s: float = 120.0,
    tolerance: float = SCORE_TOLERANCE,
    explicit_users: int = 100,
    batch_size: int = 64,
) -> ConsistencyReport:
    """Replay the first ``n_events`` through the real pipeline and in-process; compare
    their lists, then those of explicit requests for the slice's first ``explicit_users``.

    With ``settings.brokers`` empty an embedded broker is started (and stopped)
    for the run, with fresh topics; otherwise the topics of
    ``settings.topic_prefix`` must exist on that broker.
    """
    from model.ranker import build_ranker
    from pipeline.broker import EmbeddedBroker

    started = time.perf_counter()
    n_events = min(n_events, len(dataset.interactions))
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="streamrec-consistency-"))
    # The online fusion learner would move the worker's weights while the slice
    # plays, and the in-process side ranks with the warm start: the check is
    # about the ranking path, so the learner stays off here (tests/unit/test_fusion_learning.py
    # covers it on the real broker).
    s = settings.model_copy(
        update={"catalog": Path(catalog_path), "metrics_port": 0, "fusion_online": False}
    )
    catalog = Catalog.load(s.catalog)
    fed = _feed(dataset, catalog, s, n_events)
    assert fed.signals is not None
    users = list(fed.states)[:explicit_users]

    def run(s: Settings) -> dict[str, Ranked]:
        return pipeline_lists(
            dataset,
            s,
            n_events,
            log_dir=log_dir,
            idle_timeout_s=idle_timeout_s,
            explicit_users=users,
            signal_rows=fed.signals.rows,
        )

    if s.brokers:
        pipeline = run(s)
    else:
        topics = Topics(f"consistency-{uuid.uuid4().hex[:8]}-")
        with EmbeddedBroker(partitions=s.partitions, topics=topics) as broker:
            s = s.model_copy(update={"brokers": broker.bootstrap, "topic_prefix": topics.prefix})
            pipeline = run(s)
    ranker = build_ranker(s, catalog)
    local = _rank_fed(fed, ranker, users, s.k, batch_size)
    events = dataset.interactions.event_id[:n_events]
    compared, identical, worst, mismatches = _compare(events, pipeline, local)
    explicit = [_explicit_id(u) for u in users]
    x_compared, x_identical, x_worst, x_mismatches = _compare(explicit, pipeline, local)
    signals_read = getattr(ranker.scorer, "signals", None) is not None
    return ConsistencyReport(
        events=n_events,
        pipeline_lists=sum(1 for e in events if e in pipeline),
        in_process_lists=sum(1 for e in events if e in local),
        compared=compared,
        identical=identical,
        # A ranker that reads the item signals may rank an event-triggered list
        # before its follower applied every row: those scores are reported only.
        max_score_diff=x_worst if signals_read else max(worst, x_worst),
        event_score_diff=worst,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        mismatches=(x_mismatches + mismatches)[:5],
        explicit=len(explicit),
        explicit_compared=x_compared,
        explicit_identical=x_identical,
        signal_rows=fed.signals.rows,
        signals_read=signals_read,
    )


def write_consistency(out: Path, report: ConsistencyReport, title: str) -> list[Path]:
    """Write ``consistency.json`` and ``consistency.md`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "consistency.json", out / "consistency.md"]
    paths[0].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths[1].write_text(report.to_markdown(title))
    return paths
