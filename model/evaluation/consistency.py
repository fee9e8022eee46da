"""Does the in-process harness measure the deployed system? Replay and compare.

1. In-process: feed the first ``n`` events of the dataset, in order, through
   the dataflow's :class:`~streams.dataflow.UserStep` (the rank request each
   event triggers is kept) and rank those requests with the worker's ranker
   (``model.worker.build_ranker``), ``batch_size`` per call.
2. Deployed: replay the same events onto the real (embedded) broker, run the
   real dataflow and worker as child processes, and collect the
   event-triggered lists from ``recommendations``.
3. Compare per trigger event: are the item ids identical, in order, and what
   is the largest absolute score difference between the two?

The two sides batch the LM differently (the worker's micro-batches against
fixed batches here) and the published scores are rounded to 6 decimals, so
scores agree to about 1e-6; :data:`SCORE_TOLERANCE` is the bound checked.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from streams.catalog import Catalog
from streams.contracts import Recommendation, Topics
from streams.dataflow import Trigger, UserStep

if TYPE_CHECKING:
    from model.ranker import Ranker
    from streams.datasets import Dataset
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
    """The deployed pipeline stopped publishing lists before every event had one."""


@dataclass(frozen=True)
class ConsistencyReport:
    """The comparison of in-process and deployed lists, one per trigger event."""

    events: int
    pipeline_lists: int
    in_process_lists: int
    compared: int
    identical: int
    max_score_diff: float
    tolerance: float
    seconds: float
    mismatches: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every event has a list on both sides, all identical, scores within tolerance."""
        return (
            self.compared == self.events
            and self.identical == self.compared
            and self.max_score_diff <= self.tolerance
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines of the report, for the terminal and Markdown."""
        return [
            ("events replayed", f"{self.events:,}"),
            ("lists through Kafka (dataflow + worker)", f"{self.pipeline_lists:,}"),
            ("lists in-process (UserStep + Ranker)", f"{self.in_process_lists:,}"),
            ("compared (same trigger event)", f"{self.compared:,}"),
            ("identical item ids, in order", f"{self.identical:,}"),
            ("max absolute score difference", f"{self.max_score_diff:.2e}"),
            ("tolerance", f"{self.tolerance:.0e}"),
            ("verdict", "consistent" if self.ok else "DIFFERENT"),
            ("run time", f"{self.seconds:.0f} s"),
        ]

    def to_markdown(self, title: str) -> str:
        lines = [f"# {title}", "", "| | |", "|---|---|"]
        return "\n".join(lines + [f"| {a} | {b} |" for a, b in self.rows()]) + "\n"


def in_process_lists(
    dataset: Dataset,
    catalog: Catalog,
    settings: Settings,
    n_events: int,
    ranker: Ranker | None = None,
    batch_size: int = 64,
) -> dict[str, Ranked]:
    """trigger event id -> list, for the first ``n_events`` events, computed in-process."""
    if ranker is None:
        from model.worker import build_ranker

        ranker = build_ranker(settings, catalog)
    step = UserStep(catalog=catalog, settings=settings)
    states: dict = {}
    requests = []
    for event in dataset.interactions.events(0, n_events):
        trigger = Trigger(message=event, arrival_ts=event.ts)
        states[event.user_id], request = step(states.get(event.user_id), trigger)
        if request is not None:
            requests.append(request)
    lists: dict[str, Ranked] = {}
    for start in tqdm(range(0, len(requests), batch_size), desc="in-process", unit="batch"):
        batch = requests[start : start + batch_size]
        for request, ranked in zip(batch, ranker.rank(batch), strict=True):
            lists[str(request.trigger_event_id)] = ranked
    return lists


def pipeline_lists(
    dataset: Dataset,
    settings: Settings,
    n_events: int,
    *,
    log_dir: Path,
    idle_timeout_s: float = 120.0,
) -> dict[str, Ranked]:
    """trigger event id -> list, for the first ``n_events`` events, through Kafka.

    ``settings.brokers`` must point at a broker holding ``settings.topic_prefix``'s
    topics; the dataflow and the worker run as children for the duration.
    Raises :class:`PipelineStalled` when no new list arrives for ``idle_timeout_s``.
    """
    from streamrec.cli import settings_env
    from streamrec.processes import ProcessGroup, streamrec_cmd
    from streams.kafka import TopicFollower, producer
    from streams.replay import replay

    topics = Topics(settings.topic_prefix)
    env = settings_env(settings)
    lists: dict[str, Ranked] = {}
    with ProcessGroup(log_dir) as procs:
        procs.start("dataflow", streamrec_cmd("dataflow"), env)
        procs.start("worker", streamrec_cmd("worker"), env)
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
        last = time.monotonic()
        try:
            with tqdm(total=n_events, desc="through kafka", unit="list") as bar:
                while len(lists) < n_events:
                    procs.check()
                    for m in follower.poll(500, 0.2):
                        rec = Recommendation.model_validate_json(m.value())
                        if rec.trigger_event_id is None or rec.trigger_event_id in lists:
                            continue
                        lists[rec.trigger_event_id] = [(x.item_id, x.score) for x in rec.items]
                        last = time.monotonic()
                        bar.update()
                    if time.monotonic() - last > idle_timeout_s:
                        raise PipelineStalled(
                            f"{len(lists)} of {n_events} lists after {idle_timeout_s:g} s "
                            f"without a new one; see the logs in {log_dir}"
                        )
        finally:
            follower.close()
    return lists


def _compare(
    events: list[str], pipeline: dict[str, Ranked], local: dict[str, Ranked]
) -> tuple[int, int, float, list[dict]]:
    """(compared, identical, max score difference over identical lists, first mismatches)."""
    compared = identical = 0
    worst = 0.0
    mismatches: list[dict] = []
    for event_id in events:
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
) -> ConsistencyReport:
    """Replay the first ``n_events`` through the real pipeline and in-process; compare.

    With ``settings.brokers`` empty an embedded broker is started (and stopped)
    for the run, with fresh topics; otherwise the topics of
    ``settings.topic_prefix`` must exist on that broker.
    """
    from streams.broker import EmbeddedBroker

    started = time.perf_counter()
    n_events = min(n_events, len(dataset.interactions))
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="streamrec-consistency-"))
    s = settings.model_copy(update={"catalog": Path(catalog_path), "metrics_port": 0})
    if s.brokers:
        pipeline = pipeline_lists(
            dataset, s, n_events, log_dir=log_dir, idle_timeout_s=idle_timeout_s
        )
    else:
        topics = Topics(f"consistency-{uuid.uuid4().hex[:8]}-")
        with EmbeddedBroker(partitions=s.partitions, topics=topics) as broker:
            s = s.model_copy(update={"brokers": broker.bootstrap, "topic_prefix": topics.prefix})
            pipeline = pipeline_lists(
                dataset, s, n_events, log_dir=log_dir, idle_timeout_s=idle_timeout_s
            )
    local = in_process_lists(dataset, Catalog.load(s.catalog), s, n_events)
    events = dataset.interactions.event_id[:n_events]
    compared, identical, worst, mismatches = _compare(events, pipeline, local)
    return ConsistencyReport(
        events=n_events,
        pipeline_lists=len(pipeline),
        in_process_lists=len(local),
        compared=compared,
        identical=identical,
        max_score_diff=worst,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        mismatches=mismatches,
    )


def write_consistency(out: Path, report: ConsistencyReport, title: str) -> list[Path]:
    """Write ``consistency.json`` and ``consistency.md`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "consistency.json", out / "consistency.md"]
    paths[0].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths[1].write_text(report.to_markdown(title))
    return paths
