"""Prometheus metrics of the dataflow process (``streamrec_`` prefix, base units).

Labels never carry user or item ids: only bounded sets (event type, topic,
trigger kind, experiment and variant names from the config, segment and arm
names from the bandit config). Bytewax's own ``bytewax_kafka_consumer_lag``
(per step, topic and partition) is served from the same endpoint.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from streams.contracts import EVENT_TYPES

__all__ = [
    "OUTCOMES",
    "REVENUE",
    "BANDIT_PULLS",
    "BANDIT_REWARD",
    "BANDIT_MEAN_REWARD",
    "EVENTS",
    "DEAD_LETTERS",
    "DUPLICATE_EVENTS",
    "UNKNOWN_ITEMS",
    "RANK_REQUESTS",
    "EVENTS_BY_TYPE",
    "UNATTRIBUTED_INTERACTIONS",
    "UNATTRIBUTED",
    "EVENT_TRIGGERS",
    "REQUEST_TRIGGERS",
    "SUPERSEDED_TRIGGERS",
    "serve",
    "init_labels",
]

EVENTS = Counter(
    "streamrec_events_total", "Valid events applied to user state, by event type", ["type"]
)
DEAD_LETTERS = Counter(
    "streamrec_dlq_records_total", "Records sent to a dead-letter topic, by source topic", ["topic"]
)
DELIVERY_RETRIES = Counter(
    "streamrec_delivery_retries_total",
    "Output records produced again after a retriable delivery failure (timeout, broker down)",
)
UNDELIVERABLE = Counter(
    "streamrec_undeliverable_records_total",
    "Output records the broker refused for good (too large, not authorised): each is "
    "replaced by a dead letter on events.dlq",
)
KAFKA_ERRORS = Counter(
    "streamrec_kafka_errors_total",
    "Errors the Kafka source reported that concern no record (broker down, transport): "
    "logged and skipped, the consumer fetches again by itself",
)
FORGOTTEN_USERS = Counter(
    "streamrec_forgotten_users_total", "Forget requests applied: the user's state dropped"
)
EXPIRED_USERS = Counter(
    "streamrec_expired_users_total",
    "User states dropped after user_retention_s without an input (retention)",
)
DUPLICATE_EVENTS = Counter(
    "streamrec_duplicate_events_total", "Events ignored because their event_id was already applied"
)
UNKNOWN_ITEMS = Counter(
    "streamrec_unknown_item_events_total", "Events whose item is not in the catalog"
)
RANK_REQUESTS = Counter(
    "streamrec_rank_requests_total", "Rank requests sent to the worker, by trigger", ["trigger"]
)
SUPERSEDED_TRIGGERS = Counter(
    "streamrec_superseded_triggers_total",
    "Events that asked for no list because a newer event of the same user came in the "
    "same input batch (latest wins; the state still applies every event)",
)

# The per-event counters, one child per label value made once: ``labels()`` costs
# more than the rest of a counter increment, and these run for every event.
EVENTS_BY_TYPE = {t: EVENTS.labels(t) for t in EVENT_TYPES}
EVENT_TRIGGERS = RANK_REQUESTS.labels("event")
REQUEST_TRIGGERS = RANK_REQUESTS.labels("request")

UNATTRIBUTED_INTERACTIONS = Counter(
    "streamrec_unattributed_interactions_total",
    "Interactions that named a list (rec_id) they could not be credited to, by reason: "
    "unknown, expired (outside the attribution window), other_user",
    ["reason"],
)
UNATTRIBUTED = {
    r: UNATTRIBUTED_INTERACTIONS.labels(r) for r in ("unknown", "expired", "other_user")
}

OUTCOMES = Counter(
    "streamrec_attributed_outcomes_total",
    "Interactions attributed to a shown list (once per rec_id, item, type)",
    ["experiment", "variant", "type"],
)
REVENUE = Counter(
    "streamrec_attributed_revenue_total",
    "price x quantity of attributed purchases (currency units of the events)",
    ["experiment", "variant"],
)
BANDIT_PULLS = Counter(
    "streamrec_bandit_pulls_total",
    "Closed lists per segment and arm (a pull whose reward is known)",
    ["segment", "arm"],
)
BANDIT_REWARD = Counter(
    "streamrec_bandit_reward_total", "Reward credited per segment and arm", ["segment", "arm"]
)
BANDIT_MEAN_REWARD = Gauge(
    "streamrec_bandit_mean_reward", "Mean reward per pull, per segment and arm", ["segment", "arm"]
)

_served: set[int] = set()


def init_labels(input_topics: list[str], experiments: list[tuple[str, str]]) -> None:
    """Create every known label set at 0, so ``rate()`` sees the first increase.

    ``experiments``: (experiment, variant) pairs from the experiments file.
    """
    for t in EVENT_TYPES:
        EVENTS.labels(t)
    for topic in input_topics:
        DEAD_LETTERS.labels(topic)
    for trigger in ("event", "request"):
        RANK_REQUESTS.labels(trigger)
    for name, variant in experiments:
        REVENUE.labels(name, variant)
        for t in EVENT_TYPES:
            if t != "view":
                OUTCOMES.labels(name, variant, t)


def serve(port: int) -> None:
    """Serve ``/metrics`` on ``port`` once per process (0 = off)."""
    if port and port not in _served:
        start_http_server(port)
        _served.add(port)
