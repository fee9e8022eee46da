"""``streamrec demo``: the whole product on one machine, then a report.

1. start the embedded broker and create the topics;
2. build (or load from cache) the catalog: item vectors + FAISS index;
3. start the dataflow and the worker as child processes;
4. wait until a warm-up request comes back as a list (everything is up);
5. replay a slice of the dataset onto ``events`` while following
   ``rank-requests``, ``recommendations`` and ``events.dlq`` live;
6. print the report: counts, latency percentiles, throughput, two example lists.

With ``ui``, the live page (:mod:`streamrec.ui`) is served from step 4 on, during
the replay, and after the report the pipeline keeps running for it until Ctrl-C.

Every child is stopped on the way out, also on Ctrl-C or an error.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corpus.datasets import Dataset, load_dataset
from pipeline.broker import EmbeddedBroker
from pipeline.processes import ProcessGroup, metric_sum, scrape_metrics, start_pipeline
from pipeline.replay import ReplayStats, replay
from streams.contracts import RecommendationRequest, Topics
from streams.kafka import TopicFollower, producer
from streams.settings import Settings, worker_metrics_port

__all__ = ["run_demo", "DemoReport"]


# Seconds without a new list, once every rank request is out, that end the replay.
_SETTLE_S = 3.0


@dataclass
class DemoReport:
    """What the demo measured; also returned for tests and `bench`."""

    startup_s: float = 0.0
    catalog_built: bool = False
    events_in: int = 0
    bad_in: int = 0
    dlq: int = 0
    rank_requests: int = 0
    # Events that asked for no list: a newer event of the same user came in the
    # same dataflow input batch (latest wins; streamrec_superseded_triggers_total).
    superseded: int = 0
    recommendations: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    replay_s: float = 0.0
    dataflow_eps: float = 0.0
    worker_rps: float = 0.0
    lists: dict[str, dict] = field(default_factory=dict)
    ranker: str = ""  # "fusion" or "two-tower", from the lists' model version
    model_versions: set[str] = field(default_factory=set)
    # The worker's rolling ILD@k of the lists it served and of the relevance order
    # of the same candidates (None when its metrics port is off).
    ild: float | None = None
    ild_relevance: float | None = None

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def _wait_for_warmup(
    brokers: str, topics: Topics, follower: TopicFollower, procs: ProcessGroup, timeout_s: float
) -> None:
    """Send one explicit request until its list comes back: the pipeline is up."""
    request_id = f"warmup-{uuid.uuid4().hex[:8]}"
    prod = producer(brokers)
    req = RecommendationRequest(request_id=request_id, user_id="__warmup__", k=3)
    prod.produce(topics.recommendation_requests, key=b"__warmup__", value=req.to_bytes())
    prod.flush(10)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check()
        for m in follower.poll(100, 0.5):
            if m.topic() == topics.recommendations and m.key() == b"__warmup__":
                return
    raise TimeoutError(f"no warm-up list within {timeout_s}s; see logs in {procs.log_dir}")


def run_demo(
    settings: Settings,
    events: int = 1500,
    rate: float = 30.0,
    console: Console | None = None,
    log_dir: Path | None = None,
    idle_timeout_s: float = 60.0,
    ui: tuple[str, int] | None = None,
) -> DemoReport:
    """Run the embedded stack on a slice of ``settings.data`` and print a report.

    ``ui`` = (host, port): also serve the live page, and after the report keep
    the pipeline running for it until Ctrl-C (or SIGTERM).
    """
    from model.encoder import Encoder
    from model.index import build_catalog

    console = console or Console()
    report = DemoReport()
    started = time.perf_counter()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="streamrec-demo-"))
    topics = Topics(settings.topic_prefix)

    with console.status("loading data and the catalog"):
        dataset = load_dataset(settings.data)
        path, report.catalog_built = build_catalog(
            dataset,
            Encoder(settings.artifact, device=settings.device),
            settings.cache_dir,
            progress=False,
        )
    console.print(
        f"[bold]catalog[/] {'built' if report.catalog_built else 'loaded from cache'}: "
        f"{path} ({len(dataset.items)} items)"
    )
    with (
        EmbeddedBroker(partitions=settings.partitions, topics=topics) as broker,
        ProcessGroup(log_dir) as procs,
        ExitStack() as page,
    ):
        console.print(f"[bold]broker[/] 127.0.0.1 embedded Tansu at {broker.bootstrap}")
        s = settings.model_copy(update={"brokers": broker.bootstrap, "catalog": path})
        worker_port = worker_metrics_port(s.metrics_port)
        start_pipeline(procs, s, worker_port=worker_port)
        follower = TopicFollower(
            broker.bootstrap, [topics.rank_requests, topics.recommendations, topics.events_dlq]
        )
        with console.status("starting the dataflow and the worker"):
            _wait_for_warmup(broker.bootstrap, topics, follower, procs, timeout_s=180)
        report.startup_s = time.perf_counter() - started
        console.print(
            f"[bold]up[/] in {report.startup_s:.1f}s (metrics: dataflow :{s.metrics_port}, "
            f"worker :{worker_port}; logs: {log_dir})"
        )
        if ui is not None:
            from streamrec.ui import ItemBook, UiServer

            server = UiServer(
                broker.bootstrap,
                topics,
                ItemBook.from_catalog(path),
                host=ui[0],
                port=ui[1],
                dataflow_metrics_port=s.metrics_port,
                worker_metrics_port=worker_port,
            )
            page.enter_context(server)
            console.print(f"[bold]live page[/] {server.url}")
        _replay_and_follow(
            s, dataset, events, rate, topics, follower, procs, report, console, idle_timeout_s
        )
        follower.close()
        if worker_port:
            report.ild, report.ild_relevance = _worker_ild(worker_port)
        report.ranker = (
            "fusion" if any("+seq:" in v for v in report.model_versions) else "two-tower"
        )
        if ui is not None:
            from streamrec.ui import serve_until_interrupted

            _print_report(report, dataset, console)
            console.print(
                f"[bold]live page[/] {server.url}: the pipeline keeps running for it; "
                "Ctrl-C to stop"
            )
            serve_until_interrupted(procs.check)
    if ui is None:
        _print_report(report, dataset, console)
    return report


def _replay_and_follow(
    s: Settings,
    dataset: Dataset,
    events: int,
    rate: float,
    topics: Topics,
    follower: TopicFollower,
    procs: ProcessGroup,
    report: DemoReport,
    console: Console,
    idle_timeout_s: float,
) -> None:
    stats: list[ReplayStats] = []
    errors: list[BaseException] = []
    n = min(events, len(dataset.interactions))
    t0 = time.time()

    def produce() -> None:
        try:
            stats.append(
                replay(
                    dataset, producer(s.brokers), topics.events, rate=rate, limit=n, progress=False
                )
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    thread = threading.Thread(target=produce, name="replay", daemon=True)
    thread.start()
    seen_recs: set[str] = set()
    rr_last = rec_first = rec_last = 0.0
    last_progress = time.monotonic()
    next_scrape = 0.0
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        t_rr = bar.add_task("rank requests", total=n)
        t_rec = bar.add_task("recommendations", total=n)
        t_dlq = bar.add_task("dead letters", total=None)
        while True:
            procs.check()
            if errors:
                raise errors[0]
            for m in follower.poll(1000, 0.2):
                last_progress = time.monotonic()
                ts = m.timestamp()[1] / 1000.0
                if m.topic() == topics.events_dlq:
                    report.dlq += 1
                    bar.update(t_dlq, advance=1)
                elif m.topic() == topics.rank_requests:
                    if m.key() == b"__warmup__":
                        continue
                    report.rank_requests += 1
                    rr_last = max(rr_last, ts)
                    bar.update(t_rr, advance=1)
                else:
                    rec = json.loads(m.value())
                    if rec["user_id"] == "__warmup__":
                        continue
                    if rec["rec_id"] in seen_recs:
                        report.duplicates += 1
                        continue
                    seen_recs.add(rec["rec_id"])
                    report.recommendations += 1
                    report.latencies_ms.append(rec["latency_ms"])
                    report.lists[rec["user_id"]] = rec
                    report.model_versions.add(rec["model_version"])
                    rec_first = rec_first or ts
                    rec_last = max(rec_last, ts)
                    bar.update(t_rec, advance=1)
            behind = stats and report.rank_requests + report.superseded < stats[0].events
            if behind and time.monotonic() >= next_scrape:  # what the dataflow left out
                report.superseded = _superseded(s.metrics_port)
                next_scrape = time.monotonic() + 1.0
            asked = report.rank_requests + report.superseded
            done = (
                stats
                and asked >= stats[0].events
                and report.recommendations >= report.rank_requests
            )
            # Every request is out but some lists never come: the worker skipped a
            # user's older requests for a newer one (latest wins). A short quiet
            # spell then ends the run instead of the whole idle timeout.
            requested = stats and asked >= stats[0].events
            idle = time.monotonic() - last_progress
            if done or idle > idle_timeout_s or (requested and idle > _SETTLE_S):
                break
    thread.join()
    if stats:
        report.events_in, report.bad_in = stats[0].events, stats[0].bad_records
        report.replay_s = stats[0].seconds
    # Both rates are over the replay window (from its start to the last record).
    if rr_last > t0:
        report.dataflow_eps = report.events_in / (rr_last - t0)
    if rec_last > rec_first:
        report.worker_rps = report.recommendations / (rec_last - t0)


def _superseded(port: int) -> int:
    """The dataflow's ``streamrec_superseded_triggers_total`` (0 without metrics)."""
    text = scrape_metrics(port, timeout_s=1) if port else None
    return round(metric_sum(text, "streamrec_superseded_triggers_total")) if text else 0


def _worker_ild(port: int) -> tuple[float | None, float | None]:
    """The worker's ``streamrec_list_ild`` and ``streamrec_list_ild_relevance`` gauges."""
    text = scrape_metrics(port, timeout_s=3)
    if text is None:
        return None, None
    return metric_sum(text, "streamrec_list_ild"), metric_sum(text, "streamrec_list_ild_relevance")


def _titles(dataset: Dataset, items: list[str]) -> list[str]:
    return [dataset.items[i].title if i in dataset.items else i for i in items]


def _reason_text(dataset: Dataset, reason: dict | None) -> str:
    """A list item's ``reason`` in the page's words (:func:`streamrec.ui.reason_text`)."""
    from streamrec.ui import reason_text

    text = reason_text(reason, lambda item: _titles(dataset, [item])[0])
    return escape(text)  # a title may hold [brackets] rich would read as markup


def _print_report(report: DemoReport, dataset: Dataset, console: Console) -> None:
    table = Table(title="streamrec demo report", show_header=False)
    start = "cold: catalog built" if report.catalog_built else "warm: catalog cached"
    pct = [report.percentile(q) for q in (50, 95, 99)]
    rows = [
        (
            "startup (broker + catalog + dataflow + worker)",
            f"{report.startup_s:.1f} s ({start})",
        ),
        ("events in", f"{report.events_in} (+{report.bad_in} bad records)"),
        ("dead letters", str(report.dlq)),
        (
            "rank requests",
            f"{report.rank_requests}"
            + (
                f" ({report.superseded} events superseded by a newer one of the user)"
                if report.superseded
                else ""
            ),
        ),
        (
            "recommendations out",
            f"{report.recommendations} (duplicates dropped: {report.duplicates})",
        ),
        (
            "latency p50 / p95 / p99",
            " / ".join(f"{p:.1f}" for p in pct) + " ms",
        ),
        ("replay", f"{report.replay_s:.1f} s"),
        ("dataflow throughput", f"{report.dataflow_eps:.0f} events/s"),
        ("worker throughput", f"{report.worker_rps:.0f} recommendations/s"),
        ("ranker (model version)", f"{report.ranker} ({', '.join(sorted(report.model_versions))})"),
    ]
    if report.ild is not None and report.ild_relevance:
        gain = 100.0 * (report.ild / report.ild_relevance - 1.0)
        rows.append(
            (
                "ILD@k, last 1000 lists",
                f"{report.ild:.4f} (relevance order of the same candidates "
                f"{report.ild_relevance:.4f}: {gain:+.1f}%)",
            )
        )
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    # Two example lists: the users with the longest histories in the slice.
    history: dict[str, list[str]] = defaultdict(list)
    inter = dataset.interactions
    for i in range(min(report.events_in, len(inter))):
        history[inter.user_id[i]].append(inter.item_id[i])
    users = sorted((u for u in report.lists if u in history), key=lambda u: -len(history[u]))[:2]
    for user in users:
        rec = report.lists[user]
        recent = list(dict.fromkeys(reversed(history[user])))[:5]
        t = Table(title=f"user {user}: arm {rec['policy']['arm']} ({rec['policy']['mode']})")
        t.add_column("recently bought")
        t.add_column("recommended")
        recommended = _titles(dataset, [x["item_id"] for x in rec["items"]])
        # Each item's reason beside it (RankedItem.reason; off: STREAMREC_REASONS=false).
        why = [_reason_text(dataset, x.get("reason")) for x in rec["items"]]
        if any(why):
            t.add_column("why")
        bought = _titles(dataset, recent)
        for i in range(max(len(bought), len(recommended))):
            cells = [
                bought[i] if i < len(bought) else "",
                recommended[i] if i < len(recommended) else "",
            ]
            if any(why):
                cells.append(why[i] if i < len(why) else "")
            t.add_row(*cells)
        console.print(t)
