"""Prometheus metrics of the inference worker (``streamrec_`` prefix, base units)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "ARM_PICKS",
    "LIST_ILD",
    "CATALOG_COVERAGE",
    "LIST_LONG_TAIL_SHARE",
    "EXPOSURE_GINI",
    "CONSUMER_LAG",
    "QUEUE_DEPTH",
    "MODEL_RELOADS",
    "REQUESTS_CONSUMED",
    "RECOMMENDATIONS",
    "DEAD_LETTERS",
    "DUPLICATE_REQUESTS",
    "SKIPPED_REQUESTS",
    "BATCH_SIZE",
    "INFERENCE_SECONDS",
    "EVENT_TO_RECOMMENDATION_SECONDS",
    "MODEL_INFO",
    "serve",
    "init_labels",
]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS_CONSUMED = Counter("streamrec_worker_rank_requests_total", "Rank requests consumed")
RECOMMENDATIONS = Counter(
    "streamrec_recommendations_published_total",
    "Recommendation lists published (= lists shown), per experiment variant",
    ["experiment", "variant"],
)
ARM_PICKS = Counter(
    "streamrec_bandit_arm_picks_total",
    "Lists per diversity arm chosen by the worker (fixed or bandit), per segment",
    ["segment", "arm"],
)
LIST_ILD = Gauge(
    "streamrec_list_ild",
    "Rolling mean intra-list diversity (1 - cosine, catalog vectors) of the last 1000 lists",
)
LIST_ILD_RELEVANCE = Gauge(
    "streamrec_list_ild_relevance",
    "Rolling mean ILD of the relevance order (top-k by score) of the last 1000 lists' "
    "candidates: the baseline of streamrec_list_ild (what the reranker's diversity buys)",
)
CATALOG_COVERAGE = Gauge(
    "streamrec_catalog_coverage_ratio",
    "Distinct items in the last 1000 lists / catalog size",
)
LIST_LONG_TAIL_SHARE = Gauge(
    "streamrec_list_long_tail_share",
    "Share of the position-weighted exposure (1/log2(rank+1)) of the last 1000 lists "
    "on long-tail items (outside the catalog's most popular 20%)",
)
EXPOSURE_GINI = Gauge(
    "streamrec_exposure_gini",
    "Gini coefficient of the position-weighted exposure of the last 1000 lists across "
    "the catalog's categories (0 = equal)",
)
CONSUMER_LAG = Gauge(
    "streamrec_worker_consumer_lag",
    "Records behind the partition end on rank-requests (librdkafka statistics)",
    ["partition"],
)
QUEUE_DEPTH = Gauge(
    "streamrec_worker_queue_depth", "Rank requests in the micro-batch being processed"
)
MODEL_RELOADS = Counter(
    "streamrec_model_reloads_total", "Times the worker loaded a newer model artifact"
)
DEAD_LETTERS = Counter(
    "streamrec_worker_dlq_records_total", "Rank requests the worker could not parse (to DLQ)"
)
SKIPPED_REQUESTS = Counter(
    "streamrec_worker_skipped_requests_total",
    "Event-triggered rank requests not ranked because a newer one for the same user "
    "was already waiting (latest wins)",
)
SKIPPED_INTERNAL = Counter(
    "streamrec_worker_skipped_internal_records_total",
    "Records of the dataflow's internal topics the worker could not use (logged, skipped)",
    ["topic"],  # the topic's base name: bandit-weights, item-signals, fusion-weights
)
UNDELIVERABLE = Counter(
    "streamrec_worker_undeliverable_records_total",
    "Records the broker refused for good (too large, not authorised): each list is "
    "replaced by a dead letter on rank-requests.dlq",
)
DELIVERY_RETRIES = Counter(
    "streamrec_worker_delivery_retries_total",
    "Records produced again after a retriable delivery failure (timeout, broker down)",
)
COMMIT_FAILURES = Counter(
    "streamrec_worker_commit_failures_total",
    "Offset commits that failed (lost assignment, rebalance, broker down): the window "
    "is redelivered and its lists carry the same rec_ids",
)
FORGOTTEN_REQUESTS = Counter(
    "streamrec_worker_forgotten_requests_total",
    "Queued rank requests dropped because their user asked to be forgotten",
)
DUPLICATE_REQUESTS = Counter(
    "streamrec_worker_duplicate_requests_total", "Rank requests already answered (skipped)"
)
BATCH_SIZE = Histogram(
    "streamrec_inference_batch_size",
    "Rank requests per inference micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INFERENCE_SECONDS = Histogram(
    "streamrec_inference_seconds",
    "Scoring + reranking time per micro-batch",
    buckets=_LATENCY_BUCKETS,
)
EVENT_TO_RECOMMENDATION_SECONDS = Histogram(
    "streamrec_event_to_recommendation_seconds",
    "From the trigger's arrival on Kafka to the list being published",
    buckets=_LATENCY_BUCKETS,
)
MODEL_INFO = Gauge(
    "streamrec_model_info", "The model being served (value 1)", ["model_version", "device"]
)

_served: set[int] = set()


def init_labels(experiments: list[tuple[str, str]]) -> None:
    """Create the per-variant series at 0, so ``rate()`` sees the first lists."""
    for name, variant in experiments:
        RECOMMENDATIONS.labels(name, variant)


def serve(port: int) -> None:
    """Serve ``/metrics`` on ``port`` once per process (0 = off)."""
    if port and port not in _served:
        start_http_server(port)
        _served.add(port)
