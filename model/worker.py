"""The inference worker: ``rank-requests`` -> LM scoring + reranking -> ``recommendations``.

The loop, per consumed window:

1. wait for a request, then at most ``max_wait_ms`` for a batch; with a
   backlog, read up to four batches ahead;
2. parse them (``plan``); a ``forget`` control record drops the user's
   requests queued before it; records that are not valid rank requests go to
   ``rank-requests.dlq`` with the reason; request ids this process already
   answered are skipped (redelivery), and so are a user's older
   event-triggered requests when a newer one waits (latest wins);
3. rank each micro-batch (``rank``: retrieval, scoring, reranking) and
   produce its lists (key = user_id) at once;
4. wait until the broker acknowledged every record (``_deliver``), however
   long it stalls: a retriable failure is produced again, a record refused
   for good becomes a dead letter on ``rank-requests.dlq``;
5. only then commit the consumed offsets (asynchronously: the next window
   does not wait for it): at-least-once, and a duplicate
   after a crash or a lost assignment carries the same deterministic
   ``rec_id``. A failed commit (the group moved on during a stall) is
   logged and survived: the consumer rejoins by itself.

Nothing read from a topic stops the loop: a bad rank request is a dead
letter, a bad record on an internal topic a logged skip.

Several workers share ``rank-requests`` through one consumer group.

Followers: a background thread (one consumer) reads the dataflow's compacted
internal topics from the beginning, every worker all of them (no group): ``bandit-weights``
into the policy book, ``item-signals`` rows into a
:class:`~streams.signals.SignalsTable` (``ranker.signals``) and the newest
``fusion-weights`` onto ``ranker.fusion_weights``. Every ranker the worker
serves (swapped-in versions and experiment variants too) gets the same
table and weights. ``streamrec_worker_signal_records`` sums the signal
records behind the rows applied (``SignalRow.records``), so a caller that
knows how many records the dataflow produced can wait until the worker has
caught up (the embedded broker's high watermarks are not reliable).

Model reload: with ``--artifact`` (a version folder or the ``current`` link of
``streamrec finetune``), a background thread checks the version it points at
every ``reload_interval_s`` seconds and on SIGHUP; a new version's ranker
(encoder + the artifact's catalog) is loaded beside the serving one and swapped
in between two batches, so no batch mixes versions and nothing restarts. The
dataflow keeps the catalog it started with: its user vectors stay in the old
model's space until it is restarted on the new catalog (the fine-tuned models
share a base, so the spaces stay close; the LM query side is always current).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from threadpoolctl import threadpool_limits

from model import metrics
from model.artifact import artifact_version
from model.bandit_book import PolicyBook
from model.ranker import Ranker, load_ranker
from model.rerank import intra_list_diversity
from streams.contracts import (
    CONTROL_HEADER,
    TIMING_HEADER,
    BanditState,
    DeadLetter,
    ForgetControl,
    FusionWeights,
    RankRequest,
    Recommendation,
    SignalRow,
    Topics,
    parse,
)
from streams.experiments import load_config
from streams.exposure import RollingExposure
from streams.kafka import (
    RELAXED_FETCH_WAIT_MS,
    DeliveryFailed,
    Produced,
    TopicFollower,
    consumer,
    deliver,
    produce_checked,
    producer,
    read_recent,
)
from streams.settings import Settings
from streams.signals import SignalsConfig, SignalsTable

__all__ = [
    "Worker",
    "WORKER_GROUP",
    "DeliveryFailed",
]

log = logging.getLogger(__name__)

WORKER_GROUP = "streamrec-worker"

M = TypeVar("M", bound=BaseModel)

SIGNAL_ROWS = Counter(
    "streamrec_worker_signal_rows_total", "item-signals rows applied to the worker's table"
)
SIGNAL_RECORDS = Gauge(
    "streamrec_worker_signal_records",
    "Signal records behind the item-signals rows in the worker's table (each row counts "
    "the records its item has applied): equals the records the dataflow produced once "
    "the worker has caught up",
)


# With a backlog, the worker reads up to this many batches ahead (latest-wins, full batches).
_LOOKAHEAD = 4
# Request ids remembered as answered (redeliveries are skipped), and how many of the
# newest lists per partition a starting worker reads back into them, within how long.
_ANSWERED_KEPT = 100_000
_SEED_PER_PARTITION = 20_000
_SEED_BUDGET_S = 5.0
# The per-list gauges (ILD, coverage, exposure) cover this many of the latest lists.
_RECENT_LISTS = 1000
# How long an idle worker waits for a request before it checks whether to stop.
_IDLE_POLL_S = 0.2


def _internal(model: type[M], raw: bytes | None) -> M:
    """A record of a followed internal topic; ValueError with the reason when it is
    not one (the follower logs it and skips it: nothing to dead-letter it to)."""
    parsed = parse(model, raw)
    if isinstance(parsed, DeadLetter):
        raise ValueError(parsed.error)
    return parsed


def _control(m: Message) -> bytes | None:
    """The value of a record's ``streamrec-control`` header (None: a rank request)."""
    for key, value in m.headers() or ():
        if key == CONTROL_HEADER:
            return value
    return None


class Worker:
    """Consumes rank requests in micro-batches and publishes recommendations."""

    def __init__(self, settings: Settings, ranker: Ranker | None = None) -> None:
        if not settings.brokers:
            raise ValueError("no brokers: set --brokers / STREAMREC_BROKERS")
        # numpy's BLAS threads spin-wait after each call and take the cores from
        # torch's between the worker's many small products: one BLAS thread ranked
        # 1,248 fusion lists/s against 812 with two on the 2-core test machine.
        threadpool_limits(limits=1, user_api="blas")
        if settings.worker_threads:
            import torch

            torch.set_num_threads(settings.worker_threads)
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        policy = load_config(settings.experiments)
        self.book = PolicyBook(policy)
        metrics.init_labels(policy.variants())
        self.ranker = ranker or load_ranker(settings, self.book)
        default = getattr(self.ranker, "default_arm", None)
        self._labels = policy.metric_labels([default.name] if default is not None else [])
        self.signals = SignalsTable(SignalsConfig.from_settings(settings))
        self.fusion_weights: FusionWeights | None = None
        self._attach(self.ranker)
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._catalog = self.ranker.catalog
        self._recent_ild: deque[float] = deque(maxlen=_RECENT_LISTS)
        # Exposure of the last 1000 lists (built on the first list: the catalog's
        # long-tail flags and categories); a new model's catalog starts a new one.
        self._exposure: RollingExposure | None = None
        self._stop = threading.Event()
        self._reload_now = threading.Event()
        self._pending: Ranker | None = None
        self._variant_rankers: dict[str, Ranker] = {}
        metrics.MODEL_INFO.labels(self.ranker.model_version, self._device(self.ranker)).set(1)

    @staticmethod
    def _device(ranker: Ranker) -> str:
        encoder = getattr(ranker.scorer, "encoder", None)
        return str(getattr(encoder, "device", "cpu"))

    def stop(self, *_: object) -> None:
        """Finish the current batch, commit, and leave the loop."""
        self._stop.set()
        self._reload_now.set()  # wake the artifact watcher so it can leave too

    def install_signal_handlers(self) -> None:
        def handler(_sig: int, _frame: FrameType | None) -> None:
            self.stop()

        def reload(_sig: int, _frame: FrameType | None) -> None:
            self._reload_now.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, reload)

    def check_reload(self) -> bool:
        """Load the version ``--artifact`` points at now, if it is not the one served.

        The new ranker is staged; :meth:`handle` swaps it in before its next
        batch. Returns True when one was staged.
        """
        if self.settings.artifact is None:
            return False
        version = artifact_version(self.settings.artifact)
        staged = self._pending.model_version if self._pending is not None else None
        if version is None or version in (self.ranker.model_version, staged):
            return False
        log.info("artifact %s: loading version %s", self.settings.artifact, version)
        self._pending = load_ranker(self.settings, self.book)
        return True

    def _swap(self) -> None:
        """Serve the staged ranker from this batch on (called between batches)."""
        new, self._pending = self._pending, None
        if new is None:
            return
        self._attach(new)
        old, self.ranker, self._catalog = self.ranker, new, new.catalog
        self._recent_ild.clear()
        self._exposure = None
        metrics.MODEL_RELOADS.inc()
        metrics.MODEL_INFO.remove(old.model_version, self._device(old))
        metrics.MODEL_INFO.labels(new.model_version, self._device(new)).set(1)
        log.info("model %s -> %s", old.model_version, new.model_version)

    def _watch_artifact(self) -> None:
        """Background thread: check for a new version every interval and on SIGHUP."""
        interval = self.settings.reload_interval_s or None  # 0: on SIGHUP only
        while not self._stop.is_set():
            self._reload_now.wait(interval)
            self._reload_now.clear()
            if self._stop.is_set():
                return
            try:
                self.check_reload()
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning(
                    "model reload failed, still serving %s: %s", self.ranker.model_version, exc
                )

    def _seed_answered(self) -> None:
        """Remember the requests this worker group answered before it started.

        A worker that died between publishing a window's lists and committing
        it gets the window again after its restart (and so does the next owner
        of a partition after a rebalance). Reading back the newest lists on
        ``recommendations`` lets it skip what was already published instead of
        publishing it a second time (the same ``rec_id``, so harmless, but
        noise for every consumer). Best effort: at most ``_SEED_BUDGET_S``.
        """
        raws = read_recent(
            self.settings.brokers, self.topics.recommendations, _SEED_PER_PARTITION, _SEED_BUDGET_S
        )
        for raw in raws:
            rec = parse(Recommendation, raw)
            if isinstance(rec, DeadLetter):
                continue  # not a list of ours: the dataflow dead-letters it
            self._remember(rec.request_id or f"evt:{rec.trigger_event_id}")
        log.info("read back %d recent lists: their requests count as answered", len(raws))

    def _remember(self, request_id: str) -> None:
        self._answered[request_id] = None
        if len(self._answered) > _ANSWERED_KEPT:
            self._answered.popitem(last=False)

    def _fresh(self, request: RankRequest) -> bool:
        if request.request_id in self._answered:
            metrics.DUPLICATE_REQUESTS.inc()
            return False
        self._remember(request.request_id)
        return True

    def plan(self, messages: list[Message]) -> tuple[list[Produced], list[RankRequest]]:
        """Parse a consumed window -> (dead letters to produce, the requests to rank).

        Redelivered request ids are dropped. With ``latest_wins``, of a user's
        event-triggered requests in the window only the newest is ranked: the
        older ones would describe a state the user has already left, and
        ranking them only delays everyone's next list (a burst of one
        shopper's basket lines is one list, not twenty). Explicit requests
        (``recommendation-requests``) are always answered.
        """
        out: list[Produced] = []
        requests: list[RankRequest] = []
        for m in messages:
            if _control(m) == ForgetControl.CONTROL:
                # The user's data is gone from the dataflow: drop what waits here of
                # them (requests built from it). Later ones come from new events.
                user = (m.key() or b"").decode("utf-8", errors="replace")
                kept = [r for r in requests if r.user_id != user]
                metrics.FORGOTTEN_REQUESTS.inc(len(requests) - len(kept))
                requests = kept
                continue
            parsed = parse(RankRequest, m.value(), m.topic(), m.partition(), m.offset())
            if isinstance(parsed, DeadLetter):
                metrics.DEAD_LETTERS.inc()
                out.append((self.topics.rank_requests_dlq, parsed.to_bytes(), None, None))
            elif self._fresh(parsed):
                requests.append(parsed)
        metrics.REQUESTS_CONSUMED.inc(len(messages))
        if self.settings.latest_wins:
            newest = {r.user_id: i for i, r in enumerate(requests) if r.explicit_request_id is None}
            kept = [
                r
                for i, r in enumerate(requests)
                if r.explicit_request_id is not None or newest[r.user_id] == i
            ]
            metrics.SKIPPED_REQUESTS.inc(len(requests) - len(kept))
            requests = kept
        metrics.QUEUE_DEPTH.set(len(requests))
        return out, requests

    def rank(self, requests: list[RankRequest], consumed_ts: float) -> list[Produced]:
        """Rank one micro-batch -> its ``recommendations`` records.

        Each record carries the header ``streamrec-timing``: JSON epoch seconds
        ``consumed_ts`` (the window left Kafka), ``batch_start_ts`` and
        ``done_ts`` (this batch's ranking), so a benchmark can split a list's
        latency into the hop, the batch wait and the compute.
        """
        self._swap()
        if not requests:
            return []
        batch_start = time.time()
        started = time.perf_counter()
        recs = self._recommend(requests)
        metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(requests))
        timing = json.dumps(
            {"consumed_ts": consumed_ts, "batch_start_ts": batch_start, "done_ts": time.time()}
        ).encode()
        out: list[Produced] = []
        for rec in recs:
            out.append(
                (
                    self.topics.recommendations,
                    rec.to_bytes(),
                    rec.user_id.encode(),
                    [(TIMING_HEADER, timing)],
                )
            )
            self._observe(rec)
        return out

    def _recommend(self, requests: list[RankRequest]) -> list[Recommendation]:
        """Rank each request with its variant's model; lists keep the batch order.

        Requests of a variant that serves another artifact (``policy.artifact``
        from the experiments file) go to a ranker for that artifact, loaded on
        first use and kept; the rest go to the worker's own ranker.
        """
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.policy.artifact, []).append(i)
        out: list[Recommendation | None] = [None] * len(requests)
        for artifact, idx in groups.items():
            ranker = self.ranker if artifact is None else self._variant_ranker(artifact)
            for i, rec in zip(idx, ranker.recommend([requests[i] for i in idx]), strict=True):
                out[i] = rec
        return [rec for rec in out if rec is not None]

    def _variant_ranker(self, artifact: str) -> Ranker:
        if artifact not in self._variant_rankers:
            log.info("loading the model of an experiment variant: %s", artifact)
            settings = self.settings.model_copy(update={"artifact": Path(artifact)})
            self._variant_rankers[artifact] = self._attach(load_ranker(settings, self.book))
        return self._variant_rankers[artifact]

    def _lag_from_stats(self, stats_json: str) -> None:
        """librdkafka statistics -> per-partition lag (the broker's high mark, when known)."""
        parts = json.loads(stats_json).get("topics", {}).get(self.topics.rank_requests, {})
        for p, st in parts.get("partitions", {}).items():
            if p != "-1" and st.get("consumer_lag", -1) >= 0:
                metrics.CONSUMER_LAG.labels(p).set(st["consumer_lag"])

    def _observe(self, rec: Recommendation) -> None:
        """Per-list metrics: latency, variant, arm, rolling diversity and coverage."""
        metrics.EVENT_TO_RECOMMENDATION_SECONDS.observe(rec.latency_ms / 1000.0)
        labels = self._labels
        metrics.RECOMMENDATIONS.labels(
            *labels.variant(rec.experiment.name, rec.experiment.variant)
        ).inc()
        policy = rec.policy
        metrics.ARM_PICKS.labels(labels.segment(policy.segment), labels.arm(policy.arm)).inc()
        rows = [self._catalog.row[x.item_id] for x in rec.items if x.item_id in self._catalog.row]
        self._recent_ild.append(intra_list_diversity(self._catalog.vectors[rows]))
        metrics.LIST_ILD.set(float(np.mean(self._recent_ild)))
        if self.ranker.relevance_ild:
            metrics.LIST_ILD_RELEVANCE.set(float(np.mean(self.ranker.relevance_ild)))
        if self._exposure is None:
            self._exposure = RollingExposure(
                self._catalog.long_tail, self._catalog.categories, _RECENT_LISTS
            )
        self._exposure.add(rows)
        metrics.CATALOG_COVERAGE.set(self._exposure.distinct_items / max(1, len(self._catalog)))
        metrics.LIST_LONG_TAIL_SHARE.set(self._exposure.long_tail_share)
        metrics.EXPOSURE_GINI.set(self._exposure.category_gini)

    def _attach(self, ranker: Ranker) -> Ranker:
        """Hand the followed item signals and fusion weights to ``ranker``."""
        ranker.signals = self.signals
        ranker.fusion_weights = self.fusion_weights
        return ranker

    def _apply_signal_row(self, raw: bytes | None) -> None:
        self.signals.apply(_internal(SignalRow, raw))
        SIGNAL_ROWS.inc()
        SIGNAL_RECORDS.set(self.signals.records)

    def _apply_fusion_weights(self, raw: bytes | None) -> None:
        weights = _internal(FusionWeights, raw)
        self.fusion_weights = weights
        for ranker in [self.ranker, *self._variant_rankers.values()]:
            ranker.fusion_weights = weights

    def _apply_bandit_state(self, raw: bytes | None) -> None:
        self.book.apply(_internal(BanditState, raw))

    def _follow(self, handlers: dict[str, tuple[str, Callable[[bytes | None], None]]]) -> None:
        """Background thread: apply every record of the followed topics, from the
        beginning; ``handlers`` maps each topic to (its metric name, its apply).

        One consumer for the three internal topics, with a relaxed fetch wait
        (``RELAXED_FETCH_WAIT_MS``): a row a tenth of a second late ranks the
        same, and every idle consumer costs the broker a fetch per wait.
        A record that cannot be applied is logged and skipped (counted per
        topic): these topics are compacted and read from the start, so a record
        that stopped the worker would stop it again at every start. The thread
        outlives a broker outage: the follower is rebuilt until it connects.
        """
        follower = self._follower(list(handlers))
        if follower is None:  # stopped before the topics could be followed
            return
        try:
            while not self._stop.is_set():
                for m in follower.poll(500, 0.5):
                    name, apply = handlers[m.topic()]
                    try:
                        apply(m.value())
                    except Exception as exc:  # noqa: BLE001 - any bad record is a skip
                        metrics.SKIPPED_INTERNAL.labels(name).inc()
                        log.warning(
                            "skipping a bad %s record (partition %s, offset %s): %s: %s",
                            m.topic(),
                            m.partition(),
                            m.offset(),
                            type(exc).__name__,
                            str(exc)[:200],
                        )
        finally:
            follower.close()

    def _follower(self, topics: list[str]) -> TopicFollower | None:
        """A follower of ``topics``, retried every 2 s while the brokers are away or
        a topic does not exist yet; None once the worker stops."""
        while not self._stop.is_set():
            try:
                return TopicFollower(
                    self.settings.brokers, topics, fetch_wait_ms=RELAXED_FETCH_WAIT_MS
                )
            except Exception as exc:  # noqa: BLE001 - retried: the topic may not exist yet
                log.warning("cannot follow %s yet (%s); retrying", ", ".join(topics), exc)
                self._stop.wait(2.0)
        return None

    def run(self) -> None:
        """The consume -> rank -> produce -> commit loop, until ``stop()``."""
        s = self.settings
        metrics.serve(s.metrics_port)
        t = self.topics
        handlers = {
            t.bandit_weights: ("bandit-weights", self._apply_bandit_state),
            t.item_signals: ("item-signals", self._apply_signal_row),
            t.fusion_weights: ("fusion-weights", self._apply_fusion_weights),
        }
        for name, _ in handlers.values():
            metrics.SKIPPED_INTERNAL.labels(name)
        threading.Thread(
            target=self._follow, args=(handlers,), name="internal-topics", daemon=True
        ).start()
        if s.artifact is not None:
            threading.Thread(
                target=self._watch_artifact, name="artifact-watch", daemon=True
            ).start()
        cons = consumer(
            s.brokers,
            WORKER_GROUP + (f"-{s.topic_prefix}" if s.topic_prefix else ""),
            **{
                "session.timeout.ms": s.consumer_session_timeout_ms,
                "statistics.interval.ms": 5000,
                "stats_cb": self._lag_from_stats,
                "on_commit": self._committed,
            },
        )
        prod = producer(s.brokers)
        self._seed_answered()
        cons.subscribe([self.topics.rank_requests])
        log.info("worker consuming %s", self.topics.rank_requests)
        try:
            while not self._stop.is_set():
                # Wait for the first request, then for at most max_wait_ms more: a
                # lone request is ranked at once instead of waiting for a full batch.
                batch = cons.consume(1, timeout=_IDLE_POLL_S)
                if batch:
                    batch += cons.consume(s.batch_size - 1, timeout=s.max_wait_ms / 1000.0)
                if len(batch) == s.batch_size:
                    # A backlog: take what is already here too (no wait), so latest-wins
                    # sees a user's newer requests and the batches stay full.
                    batch += cons.consume(s.batch_size * (_LOOKAHEAD - 1), timeout=0)
                consumed_ts = time.time()
                messages = [m for m in batch if m.error() is None]
                for m in batch:
                    if m.error() is not None:
                        log.warning("consumer error: %s", m.error())
                if not messages:
                    continue
                failed: list[tuple[Produced, KafkaError]] = []
                dead_letters, requests = self.plan(messages)
                produce_checked(prod, dead_letters, failed)
                for start in range(0, len(requests), s.batch_size):
                    chunk = requests[start : start + s.batch_size]
                    # Each batch goes out as soon as it is ranked; one flush for the window.
                    produce_checked(prod, self.rank(chunk, consumed_ts), failed)
                self._deliver(prod, failed)
                self._commit(cons)
        finally:
            # The last window's offsets, should its asynchronous commit be in flight; a
            # failure (nothing consumed since, the group moved on) means a redelivery of
            # the same rec_ids.
            with contextlib.suppress(KafkaException):
                cons.commit(asynchronous=False)
            cons.close()
            prod.flush(10)

    def _deliver(self, prod: Producer, failed: list[tuple[Produced, KafkaError]]) -> None:
        """Wait for the window's acknowledgements (:func:`streams.kafka.deliver`):
        retried while the broker stalls, a refused list becomes a dead letter on
        ``rank-requests.dlq``; raises DeliveryFailed only when stopping."""
        deliver(
            prod,
            failed,
            self.topics.rank_requests_dlq,
            stopping=self._stop.is_set,
            on_retry=metrics.DELIVERY_RETRIES.inc,
            on_refused=metrics.UNDELIVERABLE.inc,
        )

    @staticmethod
    def _commit(cons: object) -> None:
        """Commit the consumed offsets, asynchronously: every list of the window is
        acknowledged already (``_deliver``), so the commit need not hold up the
        next window (a synchronous one cost a broker round trip per window, which
        the requests waiting behind it paid as latency). The result arrives on
        :meth:`_committed`.
        """
        try:
            cons.commit(asynchronous=True)  # type: ignore[attr-defined]
        except KafkaException as exc:
            metrics.COMMIT_FAILURES.inc()
            log.warning("offset commit failed (%s); the window will be redelivered", exc)

    @staticmethod
    def _committed(err: KafkaError | None, _partitions: list) -> None:
        """A commit's result (served on the consumer's poll). A commit fails when
        the group lost this worker's assignment (a broker stall longer than the
        session timeout, a rebalance): the partitions' next owner gets the window
        again from the last commit and ranks it to the same deterministic
        ``rec_id``s, so the duplicate is harmless. The consumer rejoins the group
        by itself.
        """
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            metrics.COMMIT_FAILURES.inc()
            log.warning("offset commit failed (%s); the window will be redelivered", err)
