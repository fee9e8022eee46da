"""The ``streams`` Bytewax dataflow: events -> user state -> rank requests.

Steps (``step_id``s are stable: recovery state is keyed by them):

``kafka-in``      KafkaSource on ``events`` and ``recommendation-requests``
``parse``         bytes -> Event | RecommendationRequest | DeadLetter (never raises)
``split-dlq``     bad records branch off to ``events.dlq`` with the reason
``by-user``       key by user_id (a user's events stay in order on one worker)
``user-state``    stateful: decayed embedding, recent items, seen set; on each
                  trigger, retrieve candidates -> a RankRequest
``to-kafka``      RankRequests -> ``rank-requests``; dead letters -> ``events.dlq``

Run it with ``streamrec dataflow`` (wraps ``python -m bytewax.run``, so
``-w``, ``-i/-a`` and the recovery flags work) or directly with
``python -m bytewax.run "streams.dataflow:build_flow()"``; configuration
comes from ``STREAMREC_*`` environment variables (see ``streams.settings``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

from streams import metrics
from streams.catalog import Catalog, CatalogNotFound
from streams.contracts import (
    DeadLetter,
    Event,
    RankRequest,
    RecommendationRequest,
    Topics,
    parse_event,
    parse_recommendation_request,
)
from streams.retrieval import retrieve
from streams.settings import Settings
from streams.state import StateConfig, UserState, update_state

__all__ = ["build_flow", "UserStep", "Trigger"]

DEFAULT_EXPERIMENT = {"name": "default", "variant": "control"}


@dataclass(frozen=True)
class Trigger:
    """A parsed input with the time it reached Kafka (for end-to-end latency)."""

    message: Event | RecommendationRequest
    arrival_ts: float


def _arrival(timestamp: tuple[int, int] | None) -> float:
    # (type, ms): type 0 = not available; then the time we first saw it.
    if timestamp and timestamp[0] != 0 and timestamp[1] > 0:
        return timestamp[1] / 1000.0
    return time.time()


def _parse(topics: Topics, msg: object) -> Trigger | DeadLetter:
    if isinstance(msg, KafkaError):
        src = msg.msg
        return DeadLetter(
            error=f"kafka error: {msg.err}",
            raw=(src.value or b"").decode("utf-8", errors="replace"),
            topic=src.topic,
            partition=src.partition,
            offset=src.offset,
        )
    parse = (
        parse_recommendation_request if msg.topic == topics.recommendation_requests else parse_event
    )
    parsed = parse(msg.value, msg.topic, msg.partition, msg.offset)
    if isinstance(parsed, DeadLetter):
        return parsed
    return Trigger(parsed, _arrival(msg.timestamp))


class UserStep:
    """The ``user-state`` step: apply the input, then emit a rank request.

    A plain callable class (not a closure) so it is picklable and unit-tested
    without Bytewax: ``step(state, trigger) -> (state, RankRequest | None)``.
    """

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.cfg = StateConfig(
            half_life_s=settings.half_life_s,
            event_weights=settings.event_weights,
            recent_n=settings.recent_n,
            seen_max=settings.seen_max,
        )

    def __call__(
        self, state: UserState | None, trigger: Trigger
    ) -> tuple[UserState, RankRequest | None]:
        state = state if state is not None else UserState()
        msg = trigger.message
        if isinstance(msg, Event):
            if not update_state(state, msg, self.catalog, self.cfg):
                metrics.DUPLICATE_EVENTS.inc()
                return state, None
            metrics.EVENTS.labels(msg.type).inc()
            if msg.item_id not in self.catalog.row:
                metrics.UNKNOWN_ITEMS.inc()
            request_id, explicit, k, trigger_id = f"evt:{msg.event_id}", None, None, msg.event_id
            metrics.RANK_REQUESTS.labels("event").inc()
        else:
            request_id, explicit, k, trigger_id = msg.request_id, msg.request_id, msg.k, None
            metrics.RANK_REQUESTS.labels("request").inc()
        return state, self.rank_request(
            state, msg.user_id, request_id, explicit, k, trigger_id, trigger.arrival_ts
        )

    def rank_request(
        self,
        state: UserState,
        user_id: str,
        request_id: str,
        explicit_request_id: str | None,
        k: int | None,
        trigger_event_id: str | None,
        arrival_ts: float,
    ) -> RankRequest:
        """Retrieve candidates for the user and wrap them for the worker."""
        s = self.settings
        vector = state.unit_embedding()
        return RankRequest(
            request_id=request_id,
            explicit_request_id=explicit_request_id,
            user_id=user_id,
            k=k or s.k,
            candidates=retrieve(state, self.catalog, s.candidates, s.filter_seen),
            user_vector=None if vector is None else [round(float(x), 6) for x in vector],
            recent_items=state.recent_items()[: s.history_items],
            category_mix=state.category_mix(),
            trigger_event_id=trigger_event_id,
            arrival_ts=arrival_ts,
            created_ts=time.time(),
            experiment=dict(DEFAULT_EXPERIMENT),
        )


def _to_sink(topics: Topics, item: RankRequest | DeadLetter) -> KafkaSinkMessage:
    if isinstance(item, DeadLetter):
        metrics.DEAD_LETTERS.labels(item.topic or "unknown").inc()
        return KafkaSinkMessage(key=None, value=item.to_bytes(), topic=topics.events_dlq)
    return KafkaSinkMessage(
        key=item.user_id.encode("utf-8"), value=item.to_bytes(), topic=topics.rank_requests
    )


def build_flow(settings: Settings | None = None) -> Dataflow:
    """Build the dataflow from ``settings`` (default: the environment)."""
    s = settings if settings is not None else Settings()
    if not s.brokers:
        raise ValueError("STREAMREC_BROKERS is empty: point it at Kafka (HOST:PORT,...)")
    if s.catalog is None:
        raise CatalogNotFound("STREAMREC_CATALOG is not set: build one with `streamrec index`")
    catalog = Catalog.load(s.catalog)
    topics = Topics(s.topic_prefix)
    brokers = s.brokers.split(",")
    metrics.serve(s.metrics_port)

    flow = Dataflow("streams")
    raw = op.input(
        "kafka-in",
        flow,
        KafkaSource(
            brokers,
            [topics.events, topics.recommendation_requests],
            # Errors become dead letters instead of stopping the dataflow.
            raise_on_errors=False,
            batch_size=500,
        ),
    )
    parsed = op.map("parse", raw, lambda m: _parse(topics, m))
    split = op.branch("split-dlq", parsed, lambda x: isinstance(x, Trigger))
    keyed = op.key_on("by-user", split.trues, lambda t: t.message.user_id)
    requests = op.stateful_map("user-state", keyed, UserStep(catalog, s))
    to_rank = op.filter_map("rank-request", requests, lambda kv: kv[1])
    out = op.map(
        "to-kafka", op.merge("merge-out", to_rank, split.falses), lambda x: _to_sink(topics, x)
    )
    op.output("kafka-out", out, KafkaSink(brokers, topic=None))
    return flow
