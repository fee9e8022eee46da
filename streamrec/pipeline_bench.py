"""``streamrec bench pipeline``: what each stage of the streaming path costs on this machine.

Every throughput is set against one reference, ``raw``: a bare consumer in
this process that reads the same preloaded events, ``json.loads`` each one
and updates a dict per user. A stage at 0.2x raw runs at a fifth of the
speed at which this machine merely reads and decodes the same records. Each
section runs on its own topic
prefix (``bench-<run>-<section>-``), so none sees another's records:

``raw``               the reference loop on N preloaded events
``dataflow-trigger``  the dataflow alone on N preloaded events, one rank request per
                      event: events/s between the first and the last rank request's
                      Kafka timestamp, and the time from start to the first one
``dataflow-state``    the same with ``STREAMREC_TRIGGER_ON_EVENTS=false`` (state
                      updates only), counted on the dataflow's ``streamrec_events_total``
``worker-<ranker>``   the worker alone on N_w rank requests the dataflow left on
                      ``rank-requests``: two-tower, and fusion with a sequence model
``latency``           dataflow + worker at a steady rate: event -> list percentiles and
                      where the time goes (dataflow, hop, batch wait, compute)
``burst``             the same pipeline at 10x the rate for a while: the lag and when it
                      drains, p99 per 5 s window after the burst, RSS, explicit
                      requests answered, children that died
``state``             in this process, no Kafka: pickled bytes per user state (what
                      Bytewax recovery snapshots store) and RSS per user

The report is a dict (written as JSON by the command): ``header`` (date,
commit, machine, device, broker, the settings that matter) and ``sections``,
each with its figures, its wall time and the load average at its start and
end. A section that fails carries ``error`` instead of figures; the others
still run.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import random
import re
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corpus.datasets import Dataset, load_dataset
from pipeline.broker import EmbeddedBroker, free_port
from pipeline.processes import (
    ChildFailed,
    ProcessGroup,
    metric_sum,
    scrape_metrics,
    streamrec_cmd,
)
from pipeline.replay import ReplayStats, replay
from streamrec.demo import _wait_for_warmup
from streams.contracts import (
    EVENT_TYPES,
    TIMING_HEADER,
    Event,
    RecommendationRequest,
    Topics,
    parse,
)
from streams.kafka import (
    RELAXED_FETCH_WAIT_MS,
    TopicFollower,
    consumer,
    create_topics,
    producer,
    wait_until_ready,
)
from streams.settings import Settings

__all__ = [
    "SECTIONS",
    "PipelineBenchOptions",
    "bench_pipeline",
    "render_table",
    "parse_skip",
    "metric_label",
    "percentiles",
    "latency_breakdown",
    "rate_from_polls",
    "drain_time",
    "window_p99",
    "first_window_below",
]

SECTIONS: tuple[str, ...] = (
    "raw",
    "dataflow-trigger",
    "dataflow-state",
    "worker-two-tower",
    "worker-fusion",
    "latency",
    "burst",
    "state",
)
#: ``--skip worker`` skips both worker sections.
_ALIASES = {"worker": ("worker-two-tower", "worker-fusion")}
_SKIPPED_METRIC = "streamrec_worker_skipped_requests_total"
_SUPERSEDED_METRIC = "streamrec_superseded_triggers_total"
# The worker section's retrieval size and list length (fixed so runs compare).
_WORKER_CANDIDATES = 200
_WORKER_K = 10
# A lag at or under this many rank requests counts as drained.
_DRAINED_LAG = 10
# p99 under this after the burst counts as recovered.
_RECOVERED_P99_MS = 50.0
_WINDOW_S = 5.0
# A rank request can be large (the user's sequence and seen items); its id is all
# the throughput sections need, and this finds it without parsing the rest,
# so following a topic at full speed costs this process (which shares the
# CPUs with what it measures) little. ``"explicit_request_id"`` does not
# match: a quote must come right before ``request_id``.
_REQUEST_ID = re.compile(rb'"request_id":\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class PipelineBenchOptions:
    """How big each section is and which to skip; the defaults are the command's.

    ``burst_factor``, ``burst_lead_s``, ``burst_tail_s`` and ``explicit_grace_s``
    have no flag: tests shorten them.
    """

    events: int = 20_000
    worker_events: int = 5_000
    rate: float = 100.0
    seconds: float = 30.0
    burst_seconds: float = 60.0
    burst_factor: float = 10.0
    burst_lead_s: float = 10.0
    burst_tail_s: float = 60.0
    explicit_grace_s: float = 30.0
    state_users: int = 200_000
    state_events: int = 20
    skip: frozenset[str] = frozenset()
    log_dir: Path | None = None
    progress: bool = True

    def runs(self, section: str) -> bool:
        return section not in self.skip

    def latency_events(self) -> int:
        return round(self.rate * self.seconds)

    def burst_phases(self) -> list[tuple[float, float]]:
        """(events/s, seconds): the base rate, the burst, the base rate again."""
        return [
            (self.rate, self.burst_lead_s),
            (self.rate * self.burst_factor, self.burst_seconds),
            (self.rate, self.burst_tail_s),
        ]

    def burst_events(self) -> int:
        return sum(round(rate * seconds) for rate, seconds in self.burst_phases())

    def events_needed(self) -> int:
        """Dataset events the chosen sections replay (latency and burst share a prefix)."""
        needs = [0]
        if self.runs("raw") or self.runs("dataflow-trigger") or self.runs("dataflow-state"):
            needs.append(self.events)
        if self.runs("worker-two-tower") or self.runs("worker-fusion"):
            needs.append(self.worker_events)
        pipeline = self.latency_events() if self.runs("latency") else 0
        needs.append(pipeline + (self.burst_events() if self.runs("burst") else 0))
        return max(needs)


def parse_skip(text: str) -> frozenset[str]:
    """``"raw,worker"`` -> the section names to skip; ValueError names an unknown one."""
    out: set[str] = set()
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name in _ALIASES:
            out.update(_ALIASES[name])
        elif name in SECTIONS:
            out.add(name)
        else:
            known = ", ".join([*SECTIONS, *_ALIASES])
            raise ValueError(f"unknown section {name!r}; known: {known}")
    return frozenset(out)


# --- pure helpers (unit-tested with hand-made inputs) ---------------------------


def metric_label(text: str, sample: str, label: str) -> str | None:
    """The value of ``label`` on the first sample named ``sample``, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and label in s.labels:
                return s.labels[label]
    return None


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict:
    """``{"p50": ..., ...}`` of ``values`` (linear interpolation); None when empty."""
    if len(values) == 0:
        return {f"p{q}": None for q in qs}
    got = np.percentile(np.asarray(values, dtype=np.float64), list(qs))
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, got, strict=True)}


def latency_breakdown(
    rank_requests: dict[str, tuple[float, float]],
    lists: dict[str, tuple[float, dict | None]],
) -> dict:
    """Event -> list latency and where it goes, in milliseconds.

    ``rank_requests``: request_id -> (arrival_ts, created_ts) of each event
    trigger's rank request. ``lists``: the trigger's request_id (``evt:<event
    id>``) -> (latency_ms, timing) of its list, ``timing`` the worker's
    ``streamrec-timing`` header (or None). ``hop`` (rank
    request created -> consumed by the worker), ``batch_wait`` and ``compute``
    are None when no list carried the header.
    """
    hop, wait, compute = [], [], []
    for request_id, (_, timing) in lists.items():
        created = rank_requests.get(request_id, (None, None))[1]
        if timing is None or created is None:
            continue
        hop.append((timing["consumed_ts"] - created) * 1000.0)
        wait.append((timing["batch_start_ts"] - timing["consumed_ts"]) * 1000.0)
        compute.append((timing["done_ts"] - timing["batch_start_ts"]) * 1000.0)

    def p50_p99(values: list[float]) -> dict | None:
        return percentiles(values, (50, 99)) if values else None

    dataflow = [(created - arrival) * 1000.0 for arrival, created in rank_requests.values()]
    return {
        "latency_ms": percentiles([latency for latency, _ in lists.values()]),
        "breakdown_ms": {
            "event_to_rank_request": p50_p99(dataflow),
            "hop": p50_p99(hop),
            "batch_wait": p50_p99(wait),
            "compute": p50_p99(compute),
        },
    }


def rate_from_polls(polls: Sequence[tuple[float, float]], target: float) -> float | None:
    """Events/s from (time, count) polls of a counter: (target - the count at the first
    nonzero poll) / (time from that poll to the first poll at or over ``target``).

    None when the counter never reached ``target`` or reached it on the first poll
    (everything happened between two polls: no rate can be read).
    """
    nonzero = [(t, c) for t, c in polls if c > 0]
    if not nonzero:
        return None
    t0, c0 = nonzero[0]
    t1 = next((t for t, c in nonzero if c >= target), None)
    if t1 is None or t1 <= t0:
        return None
    return (target - c0) / (t1 - t0)


def drain_time(
    samples: Sequence[tuple[float, float]], burst_end: float, threshold: float = _DRAINED_LAG
) -> float | None:
    """Seconds after ``burst_end`` of the first (time, lag) sample at or under ``threshold``
    (None: it never drained while sampled)."""
    for t, lag in samples:
        if t >= burst_end and lag <= threshold:
            return t - burst_end
    return None


def window_p99(
    points: Sequence[tuple[float, float]], start: float, stop: float, width: float = _WINDOW_S
) -> list[float | None]:
    """p99 of the (time, latency) points in consecutive windows [start + i*width, + width)
    up to ``stop``; None for a window without points."""
    out: list[float | None] = []
    lo = start
    while lo < stop - 1e-9:
        inside = [v for t, v in points if lo <= t < lo + width]
        out.append(percentiles(inside, (99,))["p99"])
        lo += width
    return out


def first_window_below(
    windows: Sequence[float | None], limit: float = _RECOVERED_P99_MS, width: float = _WINDOW_S
) -> float | None:
    """The end (seconds from the windows' start) of the first window whose p99 < ``limit``."""
    for i, p99 in enumerate(windows):
        if p99 is not None and p99 < limit:
            return (i + 1) * width
    return None


# --- small helpers around processes and Kafka ----------------------------------


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _kafka_ts(m: Message) -> float:
    return m.timestamp()[1] / 1000.0


def _request_id(raw: bytes) -> str | None:
    found = _REQUEST_ID.search(raw)
    return found.group(1).decode("utf-8") if found else None


def _timing(m: Message) -> dict | None:
    """The worker's ``streamrec-timing`` header of a list record, or None."""
    for name, value in m.headers() or []:
        if name == TIMING_HEADER and value is not None:
            try:
                timing = json.loads(value)
            except ValueError:
                return None
            keys = ("consumed_ts", "batch_start_ts", "done_ts")
            return timing if isinstance(timing, dict) and all(k in timing for k in keys) else None
    return None


def _counter(port: int, metric: str = _SKIPPED_METRIC) -> float:
    """A counter of a child's ``/metrics`` (the worker's skipped requests by default)."""
    text = scrape_metrics(port)
    return metric_sum(text, metric) if text is not None else 0.0


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:  # the task ended while we looked
                continue
    return out


def _rss_bytes(pid: int) -> int | None:
    """VmRSS of one process, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _tree_rss_mib(pid: int) -> float | None:
    """The largest RSS among ``pid`` and its descendants (the dataflow command may
    be a wrapper around the Bytewax process), in MiB."""
    sizes = [s for s in (_rss_bytes(p) for p in _process_tree(pid)) if s is not None]
    return round(max(sizes) / 2**20, 1) if sizes else None


@contextmanager
def _environ_without(name: str) -> Iterator[None]:
    """Hide ``name`` from children started inside (ProcessGroup merges os.environ)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


class _Sender:
    """A producer that waits for room when its queue is full and keeps delivery failures."""

    def __init__(self, brokers: str) -> None:
        self.producer = producer(brokers)
        self.failures: list[str] = []

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures.append(str(err))

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self, what: str) -> None:
        """Wait for every delivery; raise unless each record arrived."""
        remaining = self.producer.flush(60)
        if self.failures or remaining:
            raise RuntimeError(
                f"{what}: {len(self.failures)} records failed, {remaining} undelivered"
                + (f"; first error: {self.failures[0]}" if self.failures else "")
            )


def _produce_all(brokers: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Produce every record, flush, and raise unless each one was delivered."""
    sender = _Sender(brokers)
    for key, value in records:
        sender.send(topic, key, value)
    sender.flush(f"preloading {topic}")


class _PacedProducer(threading.Thread):
    """Produces records on a schedule of (events/s, seconds) phases, in a thread.

    Like ``pipeline.replay.replay`` (record i of a phase is due i / rate after the
    phase starts; behind schedule it catches up at full speed), but the rate
    changes between phases. ``produced`` counts what was handed to the producer.
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        records: Iterator[tuple[bytes, bytes]],
        phases: list[tuple[float, float]],
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.brokers, self.topic, self.records, self.phases = brokers, topic, records, phases
        self.produced = 0
        self.error: BaseException | None = None
        self.start_monotonic = 0.0
        self._stop_now = threading.Event()

    def stop(self) -> None:
        self._stop_now.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # re-raised by the main thread
            self.error = exc

    def _run(self) -> None:
        sender = _Sender(self.brokers)
        phase_start = self.start_monotonic
        for rate, seconds in self.phases:
            for i in range(round(rate * seconds)):
                ahead = phase_start + i / rate - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
                if self._stop_now.is_set():
                    return
                key, value = next(self.records)
                sender.send(self.topic, key, value)
                self.produced += 1
                if sender.failures:
                    raise RuntimeError(f"delivery to {self.topic} failed: {sender.failures[0]}")
            phase_start += seconds
        sender.flush(f"the burst on {self.topic}")


@dataclass
class _Span:
    """Distinct records seen on a topic and the Kafka timestamps of the first and last."""

    count: int = 0
    duplicates: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    at_first: int = 0  # records stamped with first_ts
    ids: set[str] = field(default_factory=set)

    def add(self, record_id: str | None, ts: float) -> None:
        if record_id in self.ids:
            self.duplicates += 1
            return
        self.ids.add(record_id)
        self.count += 1
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts, self.at_first = ts, 1
        elif ts == self.first_ts:
            self.at_first += 1
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def rate(self, n: float) -> float | None:
        """``n`` per second between the first and the last record, counting only the
        share of ``n`` made after the first timestamp: the records stamped with it
        (a whole input batch, written together) were made before the span began,
        and counting them would overstate the rate by a batch."""
        if self.first_ts is None or self.last_ts is None or self.last_ts <= self.first_ts:
            return None
        after_first = n * (self.count - self.at_first) / self.count
        return after_first / (self.last_ts - self.first_ts)


@dataclass
class _BurstTally:
    """What the burst has seen on ``rank-requests`` and ``recommendations``.

    Times are seconds from ``t0``, the start of the schedule; ``points`` are
    (seconds after the burst ended, latency_ms) of each event-triggered list.
    ``rank_after`` and ``lists_after`` are :func:`latency_breakdown`'s inputs for
    the rank requests written and the lists made after the burst (only those
    rank requests are parsed: the burst's are left to a regular expression, so
    that this process takes little CPU from the pipeline at 10x).
    """

    topics: Topics
    t0: float
    burst_end: float
    rank_ids: set[str] = field(default_factory=set)
    list_ids: set[str] = field(default_factory=set)
    points: list[tuple[float, float]] = field(default_factory=list)
    sent: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    rank_after: dict[str, tuple[float, float]] = field(default_factory=dict)
    lists_after: dict[str, tuple[float, dict | None]] = field(default_factory=dict)

    def take(self, m: Message) -> None:
        if m.topic() == self.topics.rank_requests:
            rid = _request_id(m.value())
            if rid is not None and rid.startswith("evt:"):  # an event trigger's id
                self.rank_ids.add(rid)
                if _kafka_ts(m) - self.t0 >= self.burst_end:
                    value = json.loads(m.value())
                    self.rank_after[rid] = (value["arrival_ts"], value["created_ts"])
            return
        rec = json.loads(m.value())
        if rec["trigger_event_id"] is not None:
            if rec["rec_id"] not in self.list_ids:
                self.list_ids.add(rec["rec_id"])
                at = rec["created_ts"] - self.t0 - self.burst_end
                self.points.append((at, rec["latency_ms"]))
                if at >= 0:
                    trigger = "evt:" + rec["trigger_event_id"]
                    self.lists_after[trigger] = (rec["latency_ms"], _timing(m))
        elif rec["request_id"] in self.sent:
            self.answered.setdefault(rec["request_id"], time.time() - self.t0)

    def lag(self, skipped: float) -> int:
        """Event rank requests seen and neither answered nor skipped yet. The worker
        may count a skip before this follower sees the request: exact to within one
        poll, so never below 0."""
        return max(0, len(self.rank_ids) - len(self.list_ids) - round(skipped))


@dataclass
class _Pipeline:
    """The dataflow and the worker running on one prefix (latency, then burst)."""

    topics: Topics
    procs: ProcessGroup
    follower: TopicFollower
    worker_port: int
    dataflow_port: int
    startup_s: float
    next_event: int = 0  # the first dataset event not yet replayed onto it


# --- the sections ---------------------------------------------------------------


class _Bench:
    """One run: the brokers, the data, the catalog, and a method per section."""

    def __init__(
        self,
        settings: Settings,
        options: PipelineBenchOptions,
        dataset: Dataset,
        log_dir: Path,
        console: Console,
    ) -> None:
        self.settings = settings
        self.brokers = settings.brokers
        self.options = options
        self.dataset = dataset
        self.log_dir = log_dir
        self.console = console
        self.run_id = uuid.uuid4().hex[:8]
        self._stack = ExitStack()
        self._pipe: _Pipeline | BaseException | None = None

    def run(self) -> dict[str, dict]:
        """Every section not skipped, in order -> {section: figures}."""
        o = self.options
        seq = self.settings.sequence_model
        plan: list[tuple[str, Callable[[], dict]]] = [
            ("raw", self._raw),
            ("dataflow-trigger", self._dataflow_trigger),
            ("dataflow-state", self._dataflow_state),
            ("worker-two-tower", lambda: self._worker("worker-two-tower", None)),
            ("worker-fusion", lambda: self._worker("worker-fusion", seq)),
            ("latency", self._latency),
            ("burst", self._burst),
            ("state", self._state),
        ]
        sections: dict[str, dict] = {}
        with self._stack:
            for name, fn in plan:
                if not o.runs(name):
                    continue
                if name == "worker-fusion" and seq is None:
                    sections[name] = {"measured": False, "reason": "no --sequence-model"}
                    continue
                if name == "state":  # no child outlives the Kafka sections
                    self._stack.close()
                sections[name] = self._section(name, fn)
        return sections

    def _section(self, name: str, fn: Callable[[], dict]) -> dict:
        """Run one section: its figures, wall time and load, or the error that stopped it."""
        self.console.print(f"[bold]{name}[/] ...")
        load_start, started = _load(), time.perf_counter()
        try:
            figures = fn()
        except Exception as exc:  # the report says which section failed; the rest still run
            figures = {"error": f"{type(exc).__name__}: {exc}"}
            self.console.print(f"[red]{name} failed[/]: {figures['error'].splitlines()[0]}")
        figures["wall_s"] = round(time.perf_counter() - started, 1)
        figures["load_avg_start"], figures["load_avg_end"] = load_start, _load()
        return figures

    # -- plumbing --

    def _topics(self, section: str) -> Topics:
        """A fresh prefix for ``section`` with every topic created."""
        topics = Topics(f"{self.settings.topic_prefix}bench-{self.run_id}-{section}-")
        create_topics(self.brokers, topics.all(), self.settings.partitions, topics.compacted())
        return topics

    def _env(
        self, topics: Topics, metrics_port: int, trigger: bool = True, **update: object
    ) -> dict[str, str]:
        """A child's STREAMREC_* environment, as ``streamrec demo`` builds it; the
        dataflow or the worker it starts serves its metrics on ``metrics_port``."""

        s = self.settings.model_copy(
            update={"topic_prefix": topics.prefix, "metrics_port": metrics_port, **update}
        )
        return {
            **s.to_env(),
            "STREAMREC_TRIGGER_ON_EVENTS": str(trigger).lower(),
            "STREAMREC_WORKER_METRICS_PORT": str(metrics_port),
        }

    def _events(self, start: int, stop: int) -> Iterator[tuple[bytes, bytes]]:
        for event in self.dataset.interactions.events(start, stop):
            yield event.user_id.encode("utf-8"), event.to_bytes()

    def _preloaded(self, section: str, n: int) -> Topics:
        topics = self._topics(section)
        _produce_all(self.brokers, topics.events, self._events(0, n))
        return topics

    def _await_rank_requests(self, topics: Topics, n: int, procs: ProcessGroup) -> _Span:
        """Follow ``rank-requests`` until ``n`` distinct request_ids arrived."""
        timeout_s = max(120.0, n / 200)
        deadline = time.monotonic() + timeout_s
        span = _Span()
        follower = TopicFollower(
            self.brokers, [topics.rank_requests], fetch_wait_ms=RELAXED_FETCH_WAIT_MS
        )
        try:
            while span.count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{span.count} of {n} rank requests within {timeout_s:.0f} s; "
                        f"logs in {procs.log_dir}"
                    )
                procs.check()
                for m in follower.poll(1000, 0.2):
                    span.add(_request_id(m.value()), _kafka_ts(m))
        finally:
            follower.close()
        return span

    # -- 1. raw --

    def _raw(self) -> dict:
        """The reference: consume + json.loads + a dict update per user, in this process."""
        n = self.options.events
        topics = self._preloaded("raw", n)
        cons = consumer(
            self.brokers,
            f"bench-raw-{self.run_id}",
            **{"fetch.wait.max.ms": 10, "enable.partition.eof": False},
        )
        users: dict[str, tuple[int, str]] = {}
        got, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + max(60.0, n / 500)
        try:
            parts = cons.list_topics(topics.events, timeout=10).topics[topics.events].partitions
            cons.assign([TopicPartition(topics.events, p, OFFSET_BEGINNING) for p in parts])
            while got < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{got} of {n} events read back")
                batch = cons.consume(1000, timeout=0.5)
                received = time.perf_counter()
                for m in batch:
                    if m.error() is not None:
                        continue
                    event = json.loads(m.value())
                    user = event["user_id"]
                    users[user] = (users.get(user, (0, ""))[0] + 1, event["item_id"])
                    got += 1
                if got and not first:
                    first = received
                last = time.perf_counter()
        finally:
            cons.close()
        seconds = last - first
        return {
            "events": got,
            "users": len(users),
            "seconds": round(seconds, 3),
            "events_per_s": _round(got / seconds if seconds > 0 else None),
        }

    # -- 2, 3. the dataflow alone --

    def _dataflow_trigger(self) -> dict:
        """Every event -> one rank request; events/s from their Kafka timestamps."""
        n = self.options.events
        topics = self._preloaded("dataflow-trigger", n)
        with ProcessGroup(self.log_dir / "dataflow-trigger") as procs:
            started = time.time()
            # Every event asks for a list: no latest-wins coalescing of a user's
            # events within an input batch (the section measures the full path).
            env = self._env(topics, free_port(), latest_wins=False)
            procs.start("dataflow", streamrec_cmd("dataflow"), env)
            span = self._await_rank_requests(topics, n, procs)
        return {
            "events": n,
            "rank_requests": span.count,
            "duplicates": span.duplicates,
            "startup_s": _round(span.first_ts - started if span.first_ts else None),
            "events_per_s": _round(span.rate(n)),
        }

    def _dataflow_state(self) -> dict:
        """State updates only; events/s from polling ``streamrec_events_total``."""
        n = self.options.events
        topics = self._preloaded("dataflow-state", n)
        port = free_port()
        polls: list[tuple[float, float]] = []
        timeout_s = max(120.0, n / 200)
        with ProcessGroup(self.log_dir / "dataflow-state") as procs:
            started = time.time()
            env = self._env(topics, port, trigger=False)
            procs.start("dataflow", streamrec_cmd("dataflow"), env)
            deadline = time.monotonic() + timeout_s
            while True:
                procs.check()
                text = scrape_metrics(port)
                now = time.time()
                count = metric_sum(text, "streamrec_events_total") if text is not None else 0.0
                if count > 0:
                    polls.append((now, count))
                if count >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count:.0f} of {n} events applied in {timeout_s:.0f} s")
                time.sleep(0.02)
        return {
            "events": n,
            "polls": len(polls),
            # With the trigger off this is 0; a dataflow without the setting sends n.
            "rank_requests_sent": round(metric_sum(text, "streamrec_rank_requests_total")),
            "startup_s": _round(polls[0][0] - started),
            "events_per_s": _round(rate_from_polls(polls, n)),
        }

    # -- 4. the worker alone --

    def _worker(self, section: str, sequence_model: Path | None) -> dict:
        """Preload rank requests with the dataflow, stop it, then time the worker."""
        n = self.options.worker_events
        topics = self._preloaded(section, n)
        # Every request ranked: latest-wins would measure how many a user's basket
        # lines collapse into, not how fast the worker ranks.
        update = {"candidates": _WORKER_CANDIDATES, "k": _WORKER_K, "latest_wins": False}
        with ProcessGroup(self.log_dir / section) as procs:
            env = self._env(topics, free_port(), **update)
            procs.start("dataflow", streamrec_cmd("dataflow"), env)
            self._await_rank_requests(topics, n, procs)
            procs.stop("dataflow")
            port = free_port()
            env = self._env(topics, port, sequence_model=sequence_model, **update)
            two_tower = sequence_model is None
            with _environ_without("STREAMREC_SEQUENCE_MODEL") if two_tower else nullcontext():
                started = time.time()
                procs.start("worker", streamrec_cmd("worker"), env)
            span, skipped = self._await_lists(topics, n, procs, port)
            text = scrape_metrics(port) or ""
        handled = span.count + skipped
        return {
            "rank_requests": n,
            "lists": span.count,
            "duplicates": span.duplicates,
            "skipped": round(skipped),
            "candidates": _WORKER_CANDIDATES,
            "device": metric_label(text, "streamrec_model_info", "device"),
            "startup_s": _round(span.first_ts - started if span.first_ts else None),
            "requests_per_s": _round(span.rate(handled)),
            "lists_per_s": _round(span.rate(span.count)),
        }

    def _await_lists(
        self, topics: Topics, n: int, procs: ProcessGroup, port: int, idle_s: float = 300.0
    ) -> tuple[_Span, float]:
        """Follow ``recommendations`` until lists + the worker's skipped requests >= n."""
        span, skipped = _Span(), 0.0
        follower = TopicFollower(
            self.brokers, [topics.recommendations], fetch_wait_ms=RELAXED_FETCH_WAIT_MS
        )
        last_progress = next_scrape = time.monotonic()
        try:
            while span.count + skipped < n:
                procs.check()
                if time.monotonic() - last_progress > idle_s:
                    raise TimeoutError(
                        f"{span.count} lists + {skipped:.0f} skipped of {n} requests; "
                        f"nothing new for {idle_s:.0f} s; logs in {procs.log_dir}"
                    )
                for m in follower.poll(1000, 0.2):
                    span.add(json.loads(m.value())["rec_id"], _kafka_ts(m))
                    last_progress = time.monotonic()
                if time.monotonic() >= next_scrape:
                    skipped, next_scrape = _counter(port), time.monotonic() + 1.0
        finally:
            follower.close()
        return span, _counter(port)

    # -- 5, 6. the whole pipeline --

    def _pipeline(self) -> tuple[_Pipeline, bool]:
        """The running pipeline (started on first use) and whether this call started it."""
        if isinstance(self._pipe, BaseException):
            raise RuntimeError(f"the pipeline did not start: {self._pipe}")
        if self._pipe is not None:
            return self._pipe, False
        try:
            self._pipe = self._start_pipeline()
        except Exception as exc:
            self._pipe = exc
            raise
        return self._pipe, True

    def _start_pipeline(self) -> _Pipeline:
        started = time.perf_counter()
        topics = self._topics("pipeline")
        procs = self._stack.enter_context(ProcessGroup(self.log_dir / "pipeline"))
        dataflow_port, worker_port = free_port(), free_port()
        procs.start("dataflow", streamrec_cmd("dataflow"), self._env(topics, dataflow_port))
        procs.start("worker", streamrec_cmd("worker"), self._env(topics, worker_port))
        follower = TopicFollower(
            self.brokers,
            [topics.rank_requests, topics.recommendations],
            fetch_wait_ms=RELAXED_FETCH_WAIT_MS,
        )
        self._stack.callback(follower.close)
        _wait_for_warmup(self.brokers, topics, follower, procs, timeout_s=300)
        return _Pipeline(
            topics, procs, follower, worker_port, dataflow_port, time.perf_counter() - started
        )

    def _latency(self) -> dict:
        """A steady replay at --rate: event -> list percentiles and the breakdown."""
        pipe, fresh = self._pipeline()
        o, topics = self.options, pipe.topics
        n = o.latency_events()
        stats: list[ReplayStats] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                stats.append(
                    replay(
                        self.dataset,
                        producer(self.brokers),
                        topics.events,
                        rate=o.rate,
                        limit=n,
                        include_bad=False,
                        progress=False,
                    )
                )
            except BaseException as exc:  # re-raised in the main thread
                errors.append(exc)

        thread = threading.Thread(target=produce, name="replay", daemon=True)
        pipe.next_event = n
        thread.start()
        rank: dict[str, tuple[float, float]] = {}
        lists: dict[str, tuple[float, dict | None]] = {}
        skipped, superseded, next_scrape, last_progress = 0.0, 0.0, 0.0, time.monotonic()
        # Latest wins: an event whose user's newer event came in the same dataflow
        # input batch asks for no list (superseded), one the worker skipped gets none.
        while not (
            stats and len(rank) + superseded >= n and len(lists) + skipped >= n - superseded
        ):
            pipe.procs.check()
            if errors:
                raise errors[0]
            if time.monotonic() - last_progress > 120:
                raise TimeoutError(
                    f"{len(rank)} rank requests, {len(lists)} lists of {n} events; "
                    f"nothing new for 120 s; logs in {pipe.procs.log_dir}"
                )
            for m in pipe.follower.poll(1000, 0.2):
                last_progress = time.monotonic()
                value = json.loads(m.value())
                if value["trigger_event_id"] is None:  # the warm-up's explicit request
                    continue
                if m.topic() == topics.rank_requests:
                    rank[value["request_id"]] = (value["arrival_ts"], value["created_ts"])
                else:
                    trigger = "evt:" + value["trigger_event_id"]
                    lists.setdefault(trigger, (value["latency_ms"], _timing(m)))
            if time.monotonic() >= next_scrape:
                skipped = _counter(pipe.worker_port)
                superseded = _counter(pipe.dataflow_port, _SUPERSEDED_METRIC)
                next_scrape = time.monotonic() + 1.0
        thread.join()
        figures: dict = {"pipeline_startup_s": _round(pipe.startup_s)} if fresh else {}
        figures.update(
            events=stats[0].events,
            rate=o.rate,
            achieved_rate=_round(stats[0].rate),
            rank_requests=len(rank),
            superseded=round(superseded),
            lists=len(lists),
            skipped=round(skipped),
            with_timing_header=sum(1 for _, timing in lists.values() if timing is not None),
            **latency_breakdown(rank, lists),
        )
        return figures

    def _burst(self) -> dict:
        """Base rate, --burst-seconds at 10x, base rate: lag, drain, p99, RSS, explicit asks."""
        pipe, fresh = self._pipeline()
        o, topics = self.options, pipe.topics
        start, n = pipe.next_event, o.burst_events()
        pipe.next_event += n
        users = list(dict.fromkeys(self.dataset.interactions.user_id[start : start + n]))
        sender = _PacedProducer(
            self.brokers, topics.events, self._events(start, start + n), o.burst_phases()
        )
        asks = _Sender(self.brokers)
        pids = {name: proc.pid for name, proc in pipe.procs.children.items()}
        tally = _BurstTally(topics, time.time(), o.burst_lead_s + o.burst_seconds)
        samples: list[dict] = []
        child_exited: str | None = None
        sender.start_monotonic = time.monotonic()
        sender.start()
        next_sample = next_ask = 0.0
        finished_at: float | None = None
        while True:
            now = time.time() - tally.t0
            if sender.error is not None:
                raise sender.error
            try:
                pipe.procs.check()
            except ChildFailed as exc:
                child_exited = str(exc)
                break
            for m in pipe.follower.poll(1000, 0.1):
                tally.take(m)
            if now >= next_sample:
                samples.append(
                    {
                        "t_s": round(now, 2),
                        "lag": tally.lag(_counter(pipe.worker_port)),
                        "dataflow_lag": max(
                            0,
                            sender.produced
                            - len(tally.rank_ids)
                            - round(_counter(pipe.dataflow_port, _SUPERSEDED_METRIC)),
                        ),
                        **{f"rss_{k}_mib": _tree_rss_mib(pid) for k, pid in pids.items()},
                    }
                )
                next_sample = now + 0.5
            if sender.is_alive():
                if now >= next_ask:
                    request_id = f"bench-ask-{self.run_id}-{len(tally.sent)}"
                    user = users[len(tally.sent) % len(users)]
                    ask = RecommendationRequest(request_id=request_id, user_id=user, k=_WORKER_K)
                    asks.send(topics.recommendation_requests, user.encode(), ask.to_bytes())
                    tally.sent[request_id] = now
                    next_ask += 1.0
            else:
                finished_at = finished_at if finished_at is not None else now
                if len(tally.answered) == len(tally.sent) or now - finished_at > o.explicit_grace_s:
                    break
        sender.stop()
        sender.join(10)
        asks.flush("the explicit requests")
        return _burst_figures(o, fresh, pipe, sender, tally, samples, child_exited)

    # -- 7. state size --

    def _state(self) -> dict:
        """Synthetic users through ``update_state``: pickled bytes and RSS per user."""
        from streams.catalog import Catalog
        from streams.experiments import load_config
        from streams.state import StateConfig, UserState, update_state

        o, s = self.options, self.settings
        catalog = Catalog.load(s.catalog)
        cfg = StateConfig(  # as streams.dataflow.UserStep builds it
            half_life_s=s.half_life_s,
            event_weights=s.event_weights,
            recent_n=s.recent_n,
            seen_max=s.seen_max,
            sequence_n=s.sequence_n,
            session_gap_s=load_config(s.experiments).bandit.session_gap_s,
        )
        rng = random.Random(13)
        items = [json.dumps(i) for i in catalog.item_ids]
        types = list(EVENT_TYPES)
        states: list[UserState] = []
        sizes = np.empty(o.state_users, dtype=np.int64)
        gc.collect()
        rss_before = _rss_bytes(os.getpid()) or 0
        started = time.perf_counter()
        warned = False
        columns = (TextColumn("state"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, disable=not o.progress) as bar:
            task = bar.add_task("users", total=o.state_users)
            for u in range(o.state_users):
                state, ts = UserState(), 1.6e9 + rng.random() * 86_400
                for j in range(o.state_events):
                    ts += rng.expovariate(1 / 1800)  # 30 min apart on average: some sessions
                    # Through the dataflow's own parser: fresh strings, as from Kafka.
                    event = parse(
                        Event,
                        f'{{"event_id":"bench-{u}-{j}","type":"{rng.choice(types)}",'
                        f'"user_id":"u{u}","item_id":{rng.choice(items)},"ts":{ts}}}'.encode(),
                    )
                    update_state(state, event, catalog, cfg)
                sizes[u] = len(pickle.dumps(state))
                states.append(state)
                if (u + 1) % 1000 == 0:
                    bar.update(task, completed=u + 1)
                    elapsed = time.perf_counter() - started
                    if not warned and elapsed > 5:
                        warned = True
                        total = elapsed * o.state_users / (u + 1)
                        if total > 180:
                            self.console.print(
                                f"state: about {total:.0f} s for {o.state_users:,} users; "
                                "--state-users makes it shorter"
                            )
            bar.update(task, completed=o.state_users)
        seconds = time.perf_counter() - started
        gc.collect()
        rss_per_user = ((_rss_bytes(os.getpid()) or 0) - rss_before) / o.state_users
        updates = o.state_users * o.state_events
        del states
        per_million = 1e6 / 2**30
        return {
            "users": o.state_users,
            "events_per_user": o.state_events,
            "items": len(catalog),
            "seconds": round(seconds, 1),
            "updates_per_s": _round(updates / seconds),
            "pickled_bytes_mean": round(float(sizes.mean())),
            "pickled_bytes_p90": round(float(np.percentile(sizes, 90))),
            "pickled_gib_per_million_users": round(float(sizes.mean()) * per_million, 2),
            "rss_bytes_per_user": round(rss_per_user),
            "rss_gib_per_million_users": round(rss_per_user * per_million, 2),
        }


def _burst_figures(
    o: PipelineBenchOptions,
    fresh: bool,
    pipe: _Pipeline,
    sender: _PacedProducer,
    tally: _BurstTally,
    samples: list[dict],
    child_exited: str | None,
) -> dict:
    """The burst section's figures from what its loop collected (times: seconds from
    the start of the schedule; ``peak_lag_at_s`` from the start of the burst)."""
    lead_end, burst_end = o.burst_lead_s, tally.burst_end
    phases = {
        "before": lambda t: t < lead_end,
        "during": lambda t: lead_end <= t < burst_end,
        "after": lambda t: t >= burst_end,
    }

    def rss(name: str) -> dict:
        key = f"rss_{name}_mib"
        out = {}
        for phase, inside in phases.items():
            values = [s[key] for s in samples if inside(s["t_s"]) and s.get(key) is not None]
            out[phase] = max(values) if values else None
        return out

    windows = window_p99(tally.points, 0.0, o.burst_tail_s)
    peak = max(samples, key=lambda s: s["lag"], default=None)
    waits = [tally.answered[r] - tally.sent[r] for r in tally.answered]
    figures: dict = {"pipeline_startup_s": _round(pipe.startup_s)} if fresh else {}
    figures.update(
        events=sender.produced,
        rate=o.rate,
        burst_rate=o.rate * o.burst_factor,
        peak_lag=peak["lag"] if peak else None,
        peak_lag_at_s=_round(peak["t_s"] - lead_end) if peak else None,
        peak_dataflow_lag=max((s["dataflow_lag"] for s in samples), default=None),
        drain_s=_round(drain_time([(s["t_s"], s["lag"]) for s in samples], burst_end)),
        p99_windows_ms=[_round(w) for w in windows],
        p99_under_50ms_at_s=first_window_below(windows),
        # Where the latency of the lists made after the burst goes.
        after_burst=latency_breakdown(tally.rank_after, tally.lists_after),
        rss_mib={name: rss(name) for name in pipe.procs.children},
        explicit_sent=len(tally.sent),
        explicit_answered=len(tally.answered),
        explicit_wait_p99_s=percentiles(waits, (99,))["p99"],
        child_exited=child_exited,
        phases_s=[lead_end, burst_end, burst_end + o.burst_tail_s],
        samples=samples,
    )
    return figures


# --- the run and its table ------------------------------------------------------


def _git() -> dict:
    """The checkout's commit and whether tracked files differ from it (None: no git)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _device(requested: str) -> str:
    """The device the worker will use: ``auto`` is cuda when torch sees a GPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _catalog(settings: Settings, dataset: Dataset) -> Path:
    """``settings.catalog``, else the cached (or newly built) catalog of the dataset."""
    if settings.catalog is not None:
        return settings.catalog
    from model.encoder import Encoder
    from model.index import build_catalog

    encoder = Encoder(settings.artifact, device=settings.device)
    path, _ = build_catalog(dataset, encoder, settings.cache_dir, progress=False)
    return path


def _add_ratios(sections: dict[str, dict]) -> None:
    """Every ``*_per_s`` figure gets ``*_per_s_x_raw``: its ratio to raw events/s."""
    raw = sections.get("raw", {}).get("events_per_s")
    for figures in sections.values():
        for key in [k for k in figures if k.endswith("_per_s")]:
            value = figures[key]
            figures[f"{key}_x_raw"] = round(value / raw, 3) if raw and value is not None else None


#: The settings the header records: what sizes and paces the path under test.
_HEADER_SETTINGS = (
    "candidates",
    "k",
    "batch_size",
    "max_wait_ms",
    "latest_wins",
    "fetch_wait_ms",
    "linger_ms",
    "partitions",
    "sequence_model",
    "artifact",
)


def bench_pipeline(
    settings: Settings, options: PipelineBenchOptions, console: Console | None = None
) -> dict:
    """Run every section not in ``options.skip`` -> the report (``header``, ``sections``).

    On ``settings.brokers`` when set (every topic gets a fresh random prefix),
    else on an embedded broker of its own. The whole dataset is loaded (its
    fingerprint finds the cached catalog); raises ValueError when it has fewer
    events than the sections replay.
    """
    console = console or Console(stderr=True, quiet=not options.progress)
    dataset = load_dataset(settings.data)
    needed = options.events_needed()
    if needed > len(dataset.interactions):
        raise ValueError(
            f"the sections replay {needed:,} events, the dataset {settings.data} has "
            f"{len(dataset.interactions):,}: lower --events, --rate, --seconds or --burst-seconds"
        )
    catalog = _catalog(settings, dataset)
    log_dir = Path(options.log_dir or tempfile.mkdtemp(prefix="streamrec-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    options_json = asdict(options) | {"skip": sorted(options.skip), "log_dir": str(log_dir)}
    dumped = settings.model_dump(mode="json")
    header = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **_git(),
        "machine": " ".join(os.uname()[i] for i in (0, 2, 4)),
        "cpus": os.cpu_count(),
        "load_avg_start": _load(),
        "device": _device(settings.device),
        "broker": f"given: {settings.brokers}" if settings.brokers else "embedded Tansu",
        "data": dataset.name,
        "catalog": str(catalog),
        "settings": {k: v for k, v in dumped.items() if k in _HEADER_SETTINGS},
        "options": options_json,
    }
    with ExitStack() as stack:
        brokers = settings.brokers
        if brokers:
            wait_until_ready(brokers)
        else:
            brokers = stack.enter_context(EmbeddedBroker(partitions=settings.partitions)).bootstrap
        s = settings.model_copy(update={"brokers": brokers, "catalog": catalog})
        console.print(f"bench pipeline on {brokers} ({header['broker']}); logs in {log_dir}")
        sections = _Bench(s, options, dataset, log_dir, console).run()
    header["load_avg_end"] = _load()
    _add_ratios(sections)
    return {"header": header, "sections": sections}


# Figures that stay in the JSON only.
_NOT_IN_TABLE = {"samples", "load_avg_start", "load_avg_end", "phases_s"}


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if isinstance(value, dict):
        return " / ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value).splitlines()[0] if str(value) else ""


def render_table(report: dict) -> Table:
    """One row per figure of :func:`bench_pipeline`'s report, with its ratio to raw."""
    h = report["header"]
    s = h["settings"]
    commit = f"{h['commit']}{' (dirty)' if h['dirty'] else ''}" if h["commit"] else "no git"
    table = Table(
        title=f"streamrec bench pipeline, {h['date']}, {commit}: {h['machine']}, "
        f"{h['cpus']} CPUs, device {h['device']}, broker {h['broker']}, data {h['data']}",
        caption=f"candidates {s['candidates']}, batch {s['batch_size']}, max wait "
        f"{s['max_wait_ms']} ms; x raw = the figure / raw events/s",
    )
    for name, justify in (("section", "left"), ("figure", "left"), ("value", "right")):
        table.add_column(name, justify=justify)
    table.add_column("x raw", justify="right")
    for name, figures in report["sections"].items():
        section = name  # shown on the section's first row only
        for key, value in figures.items():
            if key in _NOT_IN_TABLE or key.endswith("_x_raw"):
                continue
            nested = isinstance(value, dict) and any(isinstance(v, dict) for v in value.values())
            rows = value.items() if nested else [(None, value)]
            for sub, v in rows:
                ratio = figures.get(f"{key}_x_raw")
                label = key if sub is None else f"{key}.{sub}"
                table.add_row(section, label, _fmt(v), "-" if ratio is None else f"{ratio:.3f}")
                section = ""
        if "load_avg_start" in figures:
            start, end = figures["load_avg_start"][0], figures["load_avg_end"][0]
            table.add_row("", "load avg 1 min", f"{start:.2f} -> {end:.2f}", "")
        table.add_section()
    return table
