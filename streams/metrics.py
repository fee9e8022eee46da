"""Prometheus metrics of the dataflow process (``streamrec_`` prefix, base units).

Labels never carry user or item ids: only bounded sets (event type, topic,
trigger kind).
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

__all__ = [
    "EVENTS",
    "DEAD_LETTERS",
    "DUPLICATE_EVENTS",
    "UNKNOWN_ITEMS",
    "RANK_REQUESTS",
    "serve",
]

EVENTS = Counter(
    "streamrec_events_total", "Valid events applied to user state, by event type", ["type"]
)
DEAD_LETTERS = Counter(
    "streamrec_dlq_records_total", "Records sent to a dead-letter topic, by source topic", ["topic"]
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

_served: set[int] = set()


def serve(port: int) -> None:
    """Serve ``/metrics`` on ``port`` once per process (0 = off)."""
    if port and port not in _served:
        start_http_server(port)
        _served.add(port)
