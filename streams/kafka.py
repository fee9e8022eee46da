"""Thin helpers over confluent-kafka shared by every process: topics and clients.

Works the same against the embedded broker and Apache Kafka. What the
embedded (Tansu) broker lacks is designed around here and says so: no
transactions or read_committed, no time-based offset lookups, and no
reliable ``get_watermark_offsets`` high marks, so nothing here relies on them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings

__all__ = [
    "KafkaUnavailable",
    "TopicFollower",
    "create_topics",
    "wait_until_ready",
    "producer",
    "consumer",
    "kafka_properties",
    "consumer_config",
    "producer_config",
]


class KafkaUnavailable(RuntimeError):
    """The brokers did not answer in time; check --brokers / STREAMREC_BROKERS."""


_ENV_PREFIX = "STREAMREC_KAFKA_"


def kafka_properties(settings: Settings | None = None) -> dict[str, str]:
    """The librdkafka settings every client of the product gets (TLS, SASL, ...).

    First the properties file ``STREAMREC_KAFKA_PROPERTIES`` (``key=value``
    lines, ``#`` comments, as Kafka's own tools read), then every
    ``STREAMREC_KAFKA_<NAME>`` variable, the convention of Kafka's container
    images: ``_`` is a dot and ``__`` an underscore, so
    ``STREAMREC_KAFKA_SASL_MECHANISM=SCRAM-SHA-512`` sets ``sasl.mechanism``.
    The values may be secrets: nothing here logs them.
    """
    s = settings if settings is not None else Settings()
    props: dict[str, str] = {}
    if s.kafka_properties is not None:
        props.update(_read_properties(s.kafka_properties))
    for name, value in os.environ.items():
        if name.startswith(_ENV_PREFIX) and name != _ENV_PREFIX + "PROPERTIES":
            key = name[len(_ENV_PREFIX) :].lower().replace("__", "\0").replace("_", ".")
            props[key.replace("\0", "_")] = value
    return props


def _read_properties(path: Path) -> dict[str, str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise KafkaUnavailable(f"cannot read the Kafka properties file {path}: {exc}") from None
    props = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise KafkaUnavailable(f"{path}:{n}: not a key=value line")
        props[key.strip()] = value.strip()
    return props


def consumer_config(settings: Settings | None = None) -> dict[str, object]:
    """What every consumer adds to ``bootstrap.servers``: a short fetch wait (latency),
    then :func:`kafka_properties` (which may override it)."""
    s = settings if settings is not None else Settings()
    return {"fetch.wait.max.ms": s.fetch_wait_ms, **kafka_properties(s)}


def producer_config(settings: Settings | None = None) -> dict[str, object]:
    """What every producer adds to ``bootstrap.servers``: a short linger (small
    batches, low latency), then :func:`kafka_properties`."""
    s = settings if settings is not None else Settings()
    return {"linger.ms": s.linger_ms, **kafka_properties(s)}


def wait_until_ready(brokers: str, timeout_s: float = 15.0) -> None:
    """Block until the cluster answers a metadata request, or raise KafkaUnavailable."""
    admin = AdminClient({"bootstrap.servers": brokers, **kafka_properties()})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.1)
    raise KafkaUnavailable(f"no Kafka broker answered at {brokers} within {timeout_s}s: {last}")


def create_topics(
    brokers: str,
    topics: Iterable[str],
    partitions: int,
    compacted: Iterable[str] = (),
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the missing topics; existing ones are left as they are.

    Returns the names that were created. Compacted topics get
    ``cleanup.policy=compact`` (Apache Kafka honours it; the embedded broker
    keeps everything in memory and ignores it, which is harmless for a demo).
    """
    admin = AdminClient({"bootstrap.servers": brokers, **kafka_properties()})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    compacted = set(compacted)
    new = [
        NewTopic(
            t,
            num_partitions=partitions,
            replication_factor=1,
            config={"cleanup.policy": "compact"} if t in compacted else {},
        )
        for t in topics
        if t not in existing
    ]
    if not new:
        return []
    for fut in admin.create_topics(new, request_timeout=timeout_s).values():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            # A concurrent creator (another process of the same run) is fine.
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    # Metadata can lag creation; wait until every partition is visible.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout_s).topics
        if all(t.topic in md and len(md[t.topic].partitions) == partitions for t in new):
            break
        time.sleep(0.05)
    return [t.topic for t in new]


def producer(brokers: str, **extra: object) -> Producer:
    """An idempotence-free, low-latency producer (acks=all, ``linger_ms``).

    Idempotent producing needs producer ids that the embedded broker does not
    reliably support; duplicates are instead made harmless downstream by
    deterministic ids (``event_id``, ``request_id`` -> ``rec_id``).
    """
    conf: dict[str, object] = {
        "bootstrap.servers": brokers,
        "acks": "all",
        "queue.buffering.max.messages": 200_000,
        **producer_config(),
    }
    conf.update(extra)
    return Producer(conf)


def consumer(brokers: str, group_id: str, **extra: object) -> Consumer:
    """A consumer that commits only when told to (at-least-once)."""
    conf: dict[str, object] = {
        "bootstrap.servers": brokers,
        **consumer_config(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(extra)
    return Consumer(conf)


class TopicFollower:
    """Reads every partition of some topics from the beginning, without a group.

    Manual assignment avoids the consumer-group join wait (the embedded broker
    takes about session.timeout.ms / 2 to join) and sees every record, which
    is what a report or a test that checks a topic's content needs.
    """

    def __init__(self, brokers: str, topics: Iterable[str], timeout_s: float = 10.0) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._consumer = consumer(brokers, "streamrec-follower", **{"enable.partition.eof": False})
        md = self._consumer.list_topics(timeout=timeout_s).topics
        parts = []
        for topic in topics:
            if topic not in md:
                raise KafkaUnavailable(f"topic {topic!r} does not exist on {brokers}")
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md[topic].partitions]
        self._consumer.assign(parts)

    def poll(self, max_messages: int = 1000, timeout_s: float = 0.2) -> list:
        """The next records (any of the topics), errors dropped after logging."""
        return [
            m for m in self._consumer.consume(max_messages, timeout=timeout_s) if m.error() is None
        ]

    def close(self) -> None:
        self._consumer.close()
