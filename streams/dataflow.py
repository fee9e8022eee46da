"""The ``streams`` Bytewax dataflow: events -> user state -> rank requests.

Steps (``step_id``s are stable: recovery state is keyed by them):

``kafka-in``        Kafka (``streams.source``: one consumer per Bytewax worker) on
                    ``events``, ``recommendation-requests``, ``recommendations`` (the
                    lists read back for attribution) and ``forget-requests``
``parse``           bytes -> Trigger | Shown | DeadLetter (never raises; a source
                    error that concerns no record, e.g. the broker away, is
                    logged and dropped)
``dead-letters``    bad records go to ``events.dlq`` with the reason
``by-user``         key by user_id (a user's inputs stay in order on one worker)
``user-state``      stateful (a forget request discards the user's key, tells the
                    worker on ``rank-requests`` and answers on ``forgotten``; with
                    ``user_retention_s``, an idle user's key expires):
                    decayed embedding, recent items, seen set, item
                    sequence and counts, open lists; an event is attributed to
                    the list it came from and emits its co-visit and hit records
                    (streams.signals); each trigger gets an experiment variant,
                    a segment and candidates -> RankRequest (with ``latest_wins``,
                    of a user's events in one input batch only the newest asks for
                    a list); closed lists -> ListReward
``rewards``         its ListRewards (closed lists), for the bandit and the fusion learner
``published``       its records that go to Kafka as they are
``signal-records``  its co-visit and hit records, grouped by item (the co-visit's
                    source, the hit's item) within each batch
``item-signals``    stateful: per item, decayed co-visitation neighbours (top N) and
                    short/long event counts; each update -> the item's row on
                    ``item-signals`` (compacted)
``arm-metrics``     per-arm pull/reward counters for every closed list
``bandit-lists``    only lists whose arm the bandit chose teach it
``by-bandit-key``   key by ``streams.bandit.bandit_key``: the segment (or ``global``
                    for LinUCB)
``bandit``          stateful: the policy per key, updated per closed list; its
                    state (a ``BanditState``) goes to ``bandit-weights`` (compacted)
``fusion-examples`` each closed list's (features, label) per shown item with features
``by-fusion-key``   one key, ``global``
``fusion``          stateful: the fusion ranker's logistic regression, one SGD step
                    per example; its weights go to ``fusion-weights`` (compacted)
                    on the first update and every ``_FUSION_PUBLISH_EVERY``
``signal-rows``     the item-signals rows
``to-kafka``        each output (a record of ``streams.contracts``) to its topic
                    (``_SINK_TOPICS``): ``rank-requests``, ``outcomes``,
                    ``outcomes.unattributed``, ``forgotten``, ``bandit-weights``,
                    ``item-signals``, ``fusion-weights``, ``events.dlq``
``kafka-out``       the producer (``streams.sink``): every delivery checked, retried
                    while the broker is away, a record refused for good
                    dead-lettered

Run it with ``streamrec dataflow`` (wraps ``python -m bytewax.run``, so
``-w``, ``-i/-a`` and the recovery flags work) or directly with
``python -m bytewax.run "streams.dataflow:build_flow()"``; configuration
comes from ``STREAMREC_*`` environment variables (see ``streams.settings``).

The stateless steps are batch steps (``flat_map_batch``): one Python call per
Bytewax batch rather than one per record.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from pydantic import ValidationError

from streams import metrics
from streams.attribution import ListReward, attribute, claim_early, show
from streams.bandit import (
    DiversityPolicy,
    bandit_key,
    context_vector,
    new_policy,
    segment_of,
)
from streams.bandit.context import Buckets, buckets
from streams.catalog import Catalog, CatalogNotFound
from streams.contracts import (
    NO_EXPERIMENT,
    AssignedPolicy,
    BanditState,
    DeadLetter,
    Event,
    ExperimentStamp,
    ForgetControl,
    ForgetRequest,
    Forgotten,
    FusionWeights,
    Outcome,
    RankRequest,
    Recommendation,
    RecommendationRequest,
    SignalRow,
    Topics,
    Unattributed,
    dead_letter,
    encode_vector,
    parse,
    too_large,
)
from streams.experiments import MetricLabels, PolicyConfig, assign, load_config
from streams.fusion_learner import FusionStep, read_warm_start
from streams.kafka import consumer_config, producer_config, retriable
from streams.settings import Settings
from streams.signals import (
    CoVisit,
    Hit,
    ItemSignals,
    SignalsConfig,
    SignalsStep,
    records,
)
from streams.sink import CheckedKafkaSink
from streams.source import SharedConsumerKafkaSource
from streams.state import StateConfig, UserState, restore, update_state

__all__ = ["build_flow", "UserStep", "BanditStep", "Trigger", "Shown"]

log = logging.getLogger(__name__)

_MAX_PENDING = 64
# Examples between two publications of the fusion weights (and the first one).
_FUSION_PUBLISH_EVERY = 50


@dataclass(frozen=True)
class Trigger:
    """A parsed input with the time it reached Kafka (for end-to-end latency)."""

    message: Event | RecommendationRequest
    arrival_ts: float


@dataclass(frozen=True)
class Shown:
    """A list the worker published, read back for attribution."""

    rec: Recommendation


def _arrival(timestamp: tuple[int, int] | None) -> float:
    # (type, ms): type 0 = not available; then the time we first saw it.
    if timestamp and timestamp[0] != 0 and timestamp[1] > 0:
        return timestamp[1] / 1000.0
    return time.time()


_last_kafka_warning = 0.0


def _parse(topics: Topics, msg: object, limit: int) -> Trigger | Shown | DeadLetter | None:
    if isinstance(msg, KafkaError):
        src = msg.msg
        if src.value is None and retriable(msg.err):
            # The broker or the network (a stall, a restart), not a record: nothing
            # to dead-letter, and the consumer fetches the same offsets again.
            global _last_kafka_warning
            metrics.KAFKA_ERRORS.inc()
            if time.monotonic() - _last_kafka_warning > 10:
                _last_kafka_warning = time.monotonic()
                log.warning("kafka source: %s (retrying)", msg.err)
            return None
        return dead_letter(
            f"kafka error: {msg.err}", src.value, src.topic, src.partition, src.offset
        )
    # Refused unread: a record this large would only grow the requests and lists
    # made from it past what the producer may send (and parsing it costs as much).
    reason = too_large(msg.value, limit)
    if reason is not None:
        return dead_letter(reason, msg.value, msg.topic, msg.partition, msg.offset)
    model = topics.record_model(msg.topic)  # Event, RecommendationRequest, Recommendation, ...
    parsed = parse(model, msg.value, msg.topic, msg.partition, msg.offset)
    if isinstance(parsed, (DeadLetter, ForgetRequest)):
        return parsed
    if isinstance(parsed, Recommendation):
        return Shown(parsed)
    return Trigger(parsed, _arrival(msg.timestamp))


def _user_of(item: Trigger | Shown | ForgetRequest) -> str:
    if isinstance(item, ForgetRequest):
        return item.user_id
    return item.rec.user_id if isinstance(item, Shown) else item.message.user_id


def _keyed_by_user(items: list) -> list[tuple[str, Trigger | Shown | ForgetRequest]]:
    """The ``by-user`` step over a batch: (user_id, input) of every parsed input
    that is not a dead letter."""
    return [(_user_of(x), x) for x in items if not isinstance(x, DeadLetter)]


def _rewards(batch: list[tuple[str, list]]) -> list[ListReward]:
    """The closed lists among the ``user-state`` outputs (the learners' input)."""
    return [o for _, outputs in batch for o in outputs if isinstance(o, ListReward)]


def _published(batch: list[tuple[str, list]]) -> list:
    """The ``user-state`` outputs that go to a topic as they are: all but the
    closed lists (the learners') and the signal records (the item-signals step's)."""
    return [
        o for _, outputs in batch for o in outputs if not isinstance(o, (ListReward, CoVisit, Hit))
    ]


def _signal_records_by_item(batch: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """The batch's signal records grouped by their key, in arrival order within
    each key: one (key, records) item per key for ``item-signals``, instead of a
    keyed item per record."""
    groups: dict[str, list] = {}
    for _, outputs in batch:
        for o in outputs:
            if isinstance(o, (CoVisit, Hit)):
                key = o.key
                found = groups.get(key)
                if found is None:
                    groups[key] = [o]
                else:
                    found.append(o)
    return list(groups.items())


class UserStep:
    """The ``user-state`` step: apply one input to the user's state.

    A plain callable class (not a closure) so it is picklable and unit-tested
    without Bytewax. ``apply(state, item) -> (state, outputs)`` where outputs
    are RankRequests (one per trigger), Outcomes and Unattributed records
    (interactions), ListRewards (closed lists, for the bandit and the fusion
    learner), the co-visit and hit records of each applied event
    (``streams.signals.records``, for the item signals), and for a forget
    request a ForgetControl (for the worker) and the Forgotten answer. ``__call__`` is the
    trigger-only view used by in-process evaluation: ``(state, RankRequest | None)``.
    """

    def __init__(
        self, catalog: Catalog, settings: Settings, policy: PolicyConfig | None = None
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self.policy = policy if policy is not None else load_config(settings.experiments)
        explicit = "default_arm" in self.policy.model_fields_set
        self._default_arm = self.policy.default_arm.name if explicit else None
        self.cfg = StateConfig(
            half_life_s=settings.half_life_s,
            event_weights=settings.event_weights,
            recent_n=settings.recent_n,
            seen_max=settings.seen_max,
            sequence_n=settings.sequence_n,
            session_gap_s=self.policy.bandit.session_gap_s,
        )

    def __call__(
        self, state: UserState | None, trigger: Trigger
    ) -> tuple[UserState, RankRequest | None]:
        state, outputs = self.apply(state, trigger)
        return state, next((o for o in outputs if isinstance(o, RankRequest)), None)

    def apply(
        self, state: UserState | None, item: Trigger | Shown | ForgetRequest, trigger: bool = True
    ) -> tuple[UserState | None, list]:
        """``trigger=False``: an event updates the state and emits its records but
        asks for no list (a newer event of the user is already here: latest wins)."""
        if isinstance(item, ForgetRequest):
            # None discards the key: Bytewax snapshots the deletion, so a dataflow
            # restarted from recovery does not bring the user back.
            metrics.FORGOTTEN_USERS.inc()
            done = Forgotten(
                request_id=item.request_id,
                user_id=item.user_id,
                had_state=state is not None,
                done_ts=time.time(),
            )
            return None, [ForgetControl(forget=item.user_id, request_id=item.request_id), done]
        state = restore(state, self.catalog, self.cfg) if state is not None else UserState()
        if isinstance(item, Shown):
            pending = state.pending.pop(
                item.rec.request_id or f"evt:{item.rec.trigger_event_id}", None
            )
            clock, context = pending if pending else (state.last_ts or 0.0, None)
            cfg = self.policy.attribution
            closed = show(state.open_lists, item.rec, clock, context, cfg)
            claimed, lost = claim_early(state.open_lists, state.early, cfg)
            state.closed.extend(r.rec_id for r in closed)
            return state, [*claimed, *lost, *closed]
        msg = item.message
        outputs: list = []
        if isinstance(msg, Event):
            if not update_state(state, msg, self.catalog, self.cfg):
                metrics.DUPLICATE_EVENTS.inc()
                return state, []
            metrics.EVENTS_BY_TYPE[msg.type].inc()
            if msg.item_id not in self.catalog.row:
                metrics.UNKNOWN_ITEMS.inc()
            outcomes, closed, lost = attribute(
                state.open_lists, msg, self.policy.attribution, state.early, state.closed
            )
            state.closed.extend(r.rec_id for r in closed)
            outputs += outcomes + lost + closed
            outputs += records(state.sequence, msg.item_id, msg.ts, self.settings.covis_window)
            if not self.settings.trigger_on_events:
                return state, outputs
            if not trigger:
                metrics.SUPERSEDED_TRIGGERS.inc()
                return state, outputs
            request_id, explicit, k, trigger_id = f"evt:{msg.event_id}", None, None, msg.event_id
            clock = msg.ts
            metrics.EVENT_TRIGGERS.inc()
        else:
            request_id, explicit, k, trigger_id = msg.request_id, msg.request_id, msg.k, None
            clock = msg.ts if msg.ts is not None else item.arrival_ts
            metrics.REQUEST_TRIGGERS.inc()
        request = self.rank_request(
            state, msg.user_id, request_id, explicit, k, trigger_id, item.arrival_ts
        )
        # Remember when (event time: the trigger's ts, or the request's ts or Kafka
        # timestamp) and in which context the list was asked for: the attribution
        # window starts there and the bandit learns in that context when the list
        # comes back on `recommendations`. Of event-triggered requests only
        # the newest is kept: the worker ranks a user's newest when several wait
        # (latest wins), so older entries would mostly wait forever, in every
        # user's state.
        if explicit is None:
            for older in [r for r in state.pending if r.startswith("evt:")]:
                del state.pending[older]
        state.pending[request_id] = (clock, request.context)
        while len(state.pending) > _MAX_PENDING:
            state.pending.popitem(last=False)
        outputs.append(request)
        return state, outputs

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
        """Assign the experiment and describe the user for the worker, which
        retrieves and ranks the candidates (``streams.retrieval``).

        Built without validation (``model_construct``): every field comes from
        typed state, and validating a request the dataflow itself writes would
        cost as much as the rest of the step.
        """
        s = self.settings
        found = buckets(state, self.policy.bandit)
        policy, experiment, m = self._policy_for(user_id, state, found)
        vector = state.unit_embedding()
        return RankRequest.model_construct(
            request_id=request_id,
            explicit_request_id=explicit_request_id,
            user_id=user_id,
            k=k or s.k,
            m=m or s.candidates,
            user_vector=None if vector is None else encode_vector(vector),
            last_ts=state.last_ts,
            recent_items=state.recent_items()[: s.history_items],
            sequence=[item for item, _ in state.sequence],
            sequence_ts=[ts for _, ts in state.sequence],
            # Items no source may propose (retrieval, sequence model, co-visitation,
            # trending): the seen set when seen items are filtered.
            exclude=list(state.seen) if s.filter_seen else [],
            # The repeat source and its features need the counts only when repeats
            # are allowed; with the seen filter they would only grow the request.
            counts={} if s.filter_seen else {i: (c[0], c[1]) for i, c in state.counts.items()},
            filter_seen=s.filter_seen,
            category_mix=state.category_mix(),
            trigger_event_id=trigger_event_id,
            arrival_ts=arrival_ts,
            created_ts=time.time(),
            experiment=experiment,
            policy=policy,
            context=context_vector(state, self.policy.bandit, found),
        )

    def _policy_for(
        self, user_id: str, state: UserState, found: Buckets
    ) -> tuple[AssignedPolicy, ExperimentStamp, int | None]:
        """(policy stamp, experiment stamp, candidate count) for the user's variant."""
        segment = segment_of(state, self.policy.bandit, found)
        assigned = assign(self.policy, user_id)
        if assigned is None:
            # Outside every experiment: the experiments file's default arm when it
            # names one, else none (the worker's ranker serves its own default).
            stamp = AssignedPolicy.of(self.policy.default_mode, self._default_arm, segment)
            return stamp, NO_EXPERIMENT, None
        exp, variant = assigned
        arm = None if variant.policy == "bandit" else variant.arm(self.policy.default_arm).name
        artifact = None if variant.artifact is None else str(variant.artifact)
        stamp = AssignedPolicy.of(variant.policy, arm, segment, artifact)
        return stamp, ExperimentStamp.of(exp.name, variant.name), variant.candidates


class BanditStep:
    """The ``bandit`` step, keyed by bandit key: update the policy, publish it.

    The key (:func:`streams.bandit.bandit_key`) is the user segment for
    per-segment policies (Thompson, UCB) and ``global`` for the contextual
    LinUCB, whose context carries the segment.
    """

    def __init__(self, policy: PolicyConfig) -> None:
        self.cfg = policy

    def key(self, reward: ListReward) -> str:
        return bandit_key(self.cfg.bandit.policy, reward.segment)

    def __call__(
        self, state: DiversityPolicy | None, reward: ListReward
    ) -> tuple[DiversityPolicy, BanditState | None]:
        if state is None:
            state = new_policy(self.cfg.bandit, [a.name for a in self.cfg.arms])
        if reward.arm in state.pulls:
            state.update(reward.arm, reward.reward, reward.context)
        try:
            return state, state.state_record(self.key(reward), time.time())
        except ValidationError as exc:  # statistics no longer finite: nothing to publish
            log.warning("bandit %s: state not published: %s", self.key(reward), exc)
            return state, None


class _UserLogic(StatefulBatchLogic):
    """One user inside ``op.stateful_batch``: :meth:`UserStep.apply` per input,
    and, with a retention (``user_retention_s`` > 0), the state dropped that long
    after the user's last input.

    What ``op.stateful_map`` would do (one output list per input, a None state
    discards the key: a forget request), plus the expiry timer. The timer is
    wall-clock: retention is a promise about how long data is kept. It costs
    nothing when retention is off (no timer is set); when on, Bytewax 0.21 scans
    every key's timer at each activation of the step (``sched_cache`` in its
    ``stateful_batch``), so the cost grows with the users held.
    """

    def __init__(self, step: UserStep, retention_s: float, resume: tuple | None) -> None:
        self.step = step
        self.retention = timedelta(seconds=retention_s) if retention_s > 0 else None
        self.state, self.touched = resume if resume is not None else (None, _now())

    def on_batch(self, values: list) -> tuple[list[list], bool]:
        out = []
        last = _last_event(values) if self.step.settings.latest_wins else None
        for i, value in enumerate(values):
            # Latest wins: of the user's events in this batch only the newest asks
            # for a list (the worker would skip the older ones anyway, after paying
            # for their requests); explicit requests are always answered.
            trigger = last is None or i >= last or not _is_event(value)
            self.state, outputs = self.step.apply(self.state, value, trigger)
            out.append(outputs)
        self.touched = _now()
        return out, StatefulBatchLogic.DISCARD if self.state is None else StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[list], bool]:
        metrics.EXPIRED_USERS.inc()
        return [], StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return None if self.retention is None else self.touched + self.retention

    def snapshot(self) -> tuple[UserState | None, datetime]:
        # Serialised later, while this state keeps changing (as stateful_map does).
        return copy.deepcopy(self.state), self.touched


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _is_event(value: object) -> bool:
    return isinstance(value, Trigger) and isinstance(value.message, Event)


def _last_event(values: list) -> int | None:
    """The index of the last event (not an explicit request) among ``values``."""
    for i in range(len(values) - 1, -1, -1):
        if _is_event(values[i]):
            return i
    return None


class _SignalsLogic(StatefulBatchLogic):
    """One item inside ``op.stateful_batch``: its records -> at most one row per interval.

    The first records after a quiet spell are published at once; later ones
    within ``interval_s`` only mark the item dirty, and its latest row goes
    out when the interval ends (``notify_at``). After a restart from recovery,
    a row that was due but not yet published goes out with the item's next
    record (the logic learns its key from its records).
    """

    def __init__(self, step: SignalsStep, interval_s: float, state: ItemSignals | None) -> None:
        self.step = step
        self.interval = timedelta(seconds=interval_s)
        self.state = state
        self.key: str | None = None
        self.next_publish: datetime | None = None
        self.dirty = False

    def on_batch(self, values: list[list[CoVisit | Hit]]) -> tuple[list[SignalRow], bool]:
        # Each value is one upstream batch's records of this item, in order.
        found = [r for group in values for r in group]
        self.state = self.step.apply(self.state, found)
        self.key = found[-1].key
        self.dirty = True
        if self.next_publish is None or datetime.now(timezone.utc) >= self.next_publish:
            return self._publish(), StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[SignalRow], bool]:
        return self._publish(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.dirty:
            return None
        return self.next_publish or datetime.now(timezone.utc)

    def _publish(self) -> list[SignalRow]:
        if not self.dirty or self.state is None or self.key is None:
            return []
        self.dirty = False
        self.next_publish = datetime.now(timezone.utc) + self.interval
        return [self.state.row(self.key, self.step.cfg)]

    def snapshot(self) -> ItemSignals | None:
        # Serialised later, while this state keeps changing (as stateful_map does).
        return copy.deepcopy(self.state)


def _publish_fusion(kv: tuple[str, FusionWeights | None]) -> list[FusionWeights]:
    return [] if kv[1] is None else [kv[1]]


def _record(labels: MetricLabels, item: ListReward) -> ListReward:
    """Per-arm metrics for every closed list (bandit or fixed)."""
    segment, arm = labels.segment(item.segment), labels.arm(item.arm)
    metrics.BANDIT_PULLS.labels(segment, arm).inc()
    metrics.BANDIT_REWARD.labels(segment, arm).inc(item.reward)
    return item


#: The topic (base name, ``streams.contracts.TOPIC_RECORDS``) of each record the
#: dataflow produces: its dead letters go to ``events.dlq``, and a forget control
#: to ``rank-requests``, behind the user's queued requests.
_SINK_TOPICS: dict[type, str] = {
    RankRequest: "rank-requests",
    ForgetControl: "rank-requests",
    Outcome: "outcomes",
    Unattributed: "outcomes.unattributed",
    Forgotten: "forgotten",
    SignalRow: "item-signals",
    BanditState: "bandit-weights",
    FusionWeights: "fusion-weights",
    DeadLetter: "events.dlq",
}


def _count(labels: MetricLabels, item: object) -> None:
    """The metrics of an output record on its way out."""
    kind = type(item)
    if kind is DeadLetter:
        metrics.DEAD_LETTERS.labels(item.topic or "unknown").inc()
    elif kind is Outcome:
        name, variant = labels.variant(item.experiment.name, item.experiment.variant)
        metrics.OUTCOMES.labels(name, variant, item.type).inc()
        if item.revenue is not None:
            metrics.REVENUE.labels(name, variant).inc(item.revenue)
    elif kind is Unattributed:
        metrics.UNATTRIBUTED[item.reason].inc()
    elif kind is BanditState:
        for arm, st in item.stats.items():
            metrics.BANDIT_MEAN_REWARD.labels(labels.segment(item.key), labels.arm(arm)).set(
                st.mean_reward
            )


def _to_sink(topics: Topics, labels: MetricLabels, item: object) -> KafkaSinkMessage:
    """An output record -> its Kafka message: the record's topic, key, headers and JSON."""
    base = _SINK_TOPICS.get(type(item))
    if base is None:
        raise TypeError(f"the dataflow has no topic for a {type(item).__name__}")
    _count(labels, item)
    return KafkaSinkMessage(
        key=item.kafka_key(),
        value=item.to_bytes(),
        topic=topics.name(base),
        headers=item.kafka_headers(),
    )


def fusion_start(s: Settings) -> FusionWeights | None:
    """The fusion learner's warm start: ``fusion_warm_start``, else the sequence
    model's own ``fusion.json`` (the weights the worker starts from: learning
    from zero would publish near-zero weights on the first update)."""
    path = s.fusion_warm_start
    if path is None and s.sequence_model is not None:
        path = s.sequence_model / "fusion.json"
        if not path.is_file():
            return None
    return None if path is None else read_warm_start(path)


def build_flow(
    settings: Settings | None = None,
    source: Source | None = None,
    sink: Sink | None = None,
) -> Dataflow:
    """Build the dataflow from ``settings`` (default: the environment).

    ``source`` and ``sink`` default to Kafka (the topics of ``settings``); a test
    passes ``bytewax.testing.TestingSource`` of Kafka-shaped messages and a
    ``TestingSink`` to run the same flow in-process (``tests/unit/test_flow.py``).
    """
    s = settings if settings is not None else Settings()
    if not s.brokers:
        raise ValueError("STREAMREC_BROKERS is empty: point it at Kafka (HOST:PORT,...)")
    if s.catalog is None:
        raise CatalogNotFound("STREAMREC_CATALOG is not set: build one with `streamrec index`")
    catalog = Catalog.load(s.catalog)
    policy = load_config(s.experiments)
    topics = Topics(s.topic_prefix)
    brokers = s.brokers.split(",")
    labels = policy.metric_labels()
    metrics.serve(s.metrics_port)
    metrics.init_labels(
        [
            topics.events,
            topics.recommendation_requests,
            topics.recommendations,
            topics.forget_requests,
        ],
        policy.variants(),
    )

    flow = Dataflow("streams")
    raw = op.input(
        "kafka-in",
        flow,
        source
        or SharedConsumerKafkaSource(
            brokers,
            [
                topics.events,
                topics.recommendation_requests,
                topics.recommendations,
                topics.forget_requests,
            ],
            # Errors become dead letters instead of stopping the dataflow.
            raise_on_errors=False,
            batch_size=1000,
            add_config=consumer_config(s),
        ),
    )
    # Batch operators (flat_map_batch: one Python call per Bytewax batch) where
    # the per-item ones (map, key_on, branch) cost a call, or a call from Rust,
    # per record: an event fans out into a rank request and several signal
    # records, and those calls were a fifth of the dataflow's time.
    limit = s.max_record_bytes
    parsed = op.flat_map_batch(
        "parse",
        raw,
        lambda ms: [p for p in (_parse(topics, m, limit) for m in ms) if p is not None],
    )
    dead_letters = op.flat_map_batch(
        "dead-letters", parsed, lambda xs: [x for x in xs if isinstance(x, DeadLetter)]
    )
    keyed = op.flat_map_batch("by-user", parsed, _keyed_by_user)
    user_step = UserStep(catalog, s, policy)
    per_user = op.stateful_batch(
        "user-state", keyed, lambda resume: _UserLogic(user_step, s.user_retention_s, resume)
    )
    rewards = op.flat_map_batch("rewards", per_user, _rewards)
    published = op.flat_map_batch("published", per_user, _published)
    signal_records = op.flat_map_batch("signal-records", per_user, _signal_records_by_item)
    signals_step = SignalsStep(SignalsConfig.from_settings(s))
    rows = op.stateful_batch(
        "item-signals",
        signal_records,
        lambda resume: _SignalsLogic(signals_step, s.signals_interval_s, resume),
    )
    # One key is enough for the fusion learner: its model is a few dozen floats
    # and an SGD step costs microseconds, far below the rate lists close at.
    examples = op.flat_map(
        "fusion-examples", rewards, lambda r: r.examples if s.fusion_online else []
    )
    fusion = op.stateful_map(
        "fusion",
        op.key_on("by-fusion-key", examples, lambda _: "global"),
        FusionStep(fusion_start(s), _FUSION_PUBLISH_EVERY, s.fusion_lr, s.filter_seen),
    )
    bandit_step = BanditStep(policy)
    learn = op.filter(
        "bandit-lists",
        op.map("arm-metrics", rewards, lambda r: _record(labels, r)),
        lambda r: r.mode == "bandit",
    )
    states = op.stateful_map(
        "bandit", op.key_on("by-bandit-key", learn, bandit_step.key), bandit_step
    )
    merged = op.merge(
        "merge-out",
        published,
        dead_letters,
        op.filter_map("bandit-states", states, lambda kv: kv[1]),
        op.flat_map_batch("signal-rows", rows, lambda kvs: [kv[1] for kv in kvs]),
        op.flat_map("fusion-weights", fusion, _publish_fusion),
    )
    op.output(
        "kafka-out",
        op.flat_map_batch("to-kafka", merged, lambda xs: [_to_sink(topics, labels, x) for x in xs]),
        sink or CheckedKafkaSink(brokers, topics.events_dlq, add_config=producer_config(s)),
    )
    return flow
