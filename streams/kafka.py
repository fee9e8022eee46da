"""Thin helpers over confluent-kafka shared by every process: topics and clients.

Works the same against the embedded broker and Apache Kafka. What the
embedded (Tansu) broker lacks is designed around here and says so: no
transactions or read_committed, no time-based offset lookups, and no
reliable ``get_watermark_offsets`` high marks, so nothing here relies on them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings

__all__ = [
    "KafkaUnavailable",
    "TopicFollower",
    "RELAXED_FETCH_WAIT_MS",
    "create_topics",
    "describe_topics",
    "wait_until_ready",
    "producer",
    "consumer",
    "kafka_properties",
    "consumer_config",
    "producer_config",
    "Produced",
    "produce_checked",
    "deliver",
    "retriable",
    "DeliveryFailed",
    "read_recent",
]

_log = logging.getLogger(__name__)


class _LibrdkafkaLog:
    """librdkafka's own log lines into Python logging (``streams.kafka.librdkafka``).

    Every client gets it as confluent-kafka's ``logger``: librdkafka's lines are then
    records of that logger, served on the client's poll, instead of raw
    ``%3|...|FAIL|...`` lines on stderr. librdkafka retries a lost broker by itself
    and logs every attempt (about 30 FAIL lines a second per client), while the
    product says so itself (wait_until_ready's one line, deliver's every 10 s): so
    its errors are warnings here, and a client's warning of a facility it logged
    within the last ``every_s`` seconds is counted into its next one instead of
    logged. Debug and info lines (``debug=...`` in the client settings) pass as
    they are.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last: dict[tuple[object, ...], tuple[float, int]] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client, text).
        level = logging.WARNING if level == logging.ERROR else level
        if level >= logging.WARNING:
            key, now = args[:2], time.monotonic()
            shown, dropped = self._last.get(key, (float("-inf"), 0))
            if now - shown < self.every_s:
                self._last[key] = (shown, dropped + 1)
                return
            self._last[key] = (now, 0)
            if dropped:
                msg += f" ({dropped} more like it in the last {self.every_s:g} s)"
        self.logger.log(level, msg, *args)


#: confluent-kafka's ``logger`` of every client (a consumer, producer or admin client).
LIBRDKAFKA_LOG = _LibrdkafkaLog(_log.getChild("librdkafka"))


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
    return {"fetch.wait.max.ms": s.fetch_wait_ms, **kafka_properties(s), "logger": LIBRDKAFKA_LOG}


def producer_config(settings: Settings | None = None) -> dict[str, object]:
    """What every producer adds to ``bootstrap.servers``: a short linger (small
    batches, low latency), then :func:`kafka_properties`."""
    s = settings if settings is not None else Settings()
    return {"linger.ms": s.linger_ms, **kafka_properties(s), "logger": LIBRDKAFKA_LOG}


def wait_until_ready(brokers: str, timeout_s: float | None = None) -> None:
    """Block until the cluster answers a metadata request, or raise KafkaUnavailable.

    Every command calls this first, with the same settings its clients get
    (:func:`kafka_properties`), so a wrong address, TLS or SASL setting ends
    the command with one line saying what the client last reported, instead
    of librdkafka retrying (and logging) forever. librdkafka's own log lines
    are silenced here; their content reaches the reason through ``error_cb``.
    The timeout defaults to ``connect_timeout_s`` (STREAMREC_CONNECT_TIMEOUT_S).
    """
    s = Settings()
    timeout_s = s.connect_timeout_s if timeout_s is None else timeout_s
    errors: list[str] = []
    props = kafka_properties(s)
    admin = AdminClient(
        {
            "bootstrap.servers": brokers,
            **props,
            "log_level": 0,
            "error_cb": lambda err: errors.append(str(err.str())),
        }
    )
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc
            admin.poll(0.1)  # serves error_cb: the client's own account of the failure
    reason = errors[-1] if errors else str(last)
    raise KafkaUnavailable(
        f"no Kafka broker answered at {brokers} within {timeout_s:g} s: {reason}"
        + _settings_hint(props)
    )


# Settings whose values say how a client connects and are no secret.
_SHOWN = ("security.protocol", "sasl.mechanism", "sasl.mechanisms")


def _settings_hint(props: dict[str, str]) -> str:
    """The client settings that shape the connection, for an error line: the
    values of the protocol and mechanism, only the names of the rest (they may
    hold secrets)."""
    if not props:
        return ""
    shown = [f"{k}={props[k]}" for k in _SHOWN if k in props]
    named = sorted(k for k in props if k not in _SHOWN)
    parts = shown + ([f"{', '.join(named)} (values not shown)"] if named else [])
    return f" (client settings from STREAMREC_KAFKA_* / the properties file: {'; '.join(parts)})"


def create_topics(
    brokers: str,
    topics: Iterable[str],
    partitions: int,
    compacted: Iterable[str] = (),
    timeout_s: float = 15.0,
    replication_factor: int = 1,
) -> list[str]:
    """Create the missing topics; existing ones are left as they are.

    Returns the names that were created. Compacted topics get
    ``cleanup.policy=compact`` (Apache Kafka honours it; the embedded broker
    keeps everything in memory and ignores it, which is harmless for a demo).
    ``replication_factor`` is each partition's number of copies: 1 for one
    broker (the default, the demo's and the tests'), typically 3 on a real
    cluster; a cluster with fewer brokers refuses it (a KafkaException).
    """
    admin = AdminClient(
        {"bootstrap.servers": brokers, **kafka_properties(), "logger": LIBRDKAFKA_LOG}
    )
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    compacted = set(compacted)
    new = [
        NewTopic(
            t,
            num_partitions=partitions,
            replication_factor=replication_factor,
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


def describe_topics(brokers: str, timeout_s: float = 15.0) -> dict[str, tuple[int, int]]:
    """Every topic of the cluster -> (partitions, replication factor).

    The replication factor is the smallest replica count of the topic's
    partitions (0 for a topic without partitions). What ``streamrec topics
    create`` reports for topics that already exist.
    """
    admin = AdminClient(
        {"bootstrap.servers": brokers, **kafka_properties(), "logger": LIBRDKAFKA_LOG}
    )
    md = admin.list_topics(timeout=timeout_s).topics
    return {
        name: (
            len(t.partitions),
            min((len(p.replicas) for p in t.partitions.values()), default=0),
        )
        for name, t in md.items()
    }


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


#: (topic, value, key, headers) of a record to produce.
Produced = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]

# Delivery failures worth producing again: the broker or the network, not the record.
_RETRIED_ERRORS = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    }
)


def retriable(err: KafkaError) -> bool:
    """True for a failure of the broker or the network, False for one of the record
    (too large, not authorised, invalid): the first is produced again, the second
    would fail the same way forever."""
    return err.code() in _RETRIED_ERRORS or (err.retriable() and not err.fatal())


class DeliveryFailed(RuntimeError):
    """Asked to stop while produced records were still unacknowledged."""


def produce_checked(
    prod: Producer, records: Iterable[Produced], failed: list[tuple[Produced, KafkaError]]
) -> None:
    """Produce ``records``; each one whose delivery fails is appended to ``failed``
    with its error (:func:`deliver` reads it), and so is one librdkafka refuses at
    once (over ``message.max.bytes``). A full local queue waits for room."""
    for record in records:
        topic, value, key, headers = record

        def report(err: KafkaError | None, _msg: object, record: Produced = record) -> None:
            if err is not None:
                failed.append((record, err))

        while True:
            try:
                prod.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                break
            except BufferError:
                prod.poll(0.1)
            except KafkaException as exc:
                failed.append((record, exc.args[0]))
                break
    prod.poll(0)


def deliver(
    prod: Producer,
    failed: list[tuple[Produced, KafkaError]],
    dlq_topic: str,
    stopping: Callable[[], bool] = lambda: False,
    on_retry: Callable[[], None] = lambda: None,
    on_refused: Callable[[], None] = lambda: None,
) -> None:
    """Wait until the broker acknowledged everything :func:`produce_checked` sent.

    However long the broker stalls, this waits (librdkafka reconnects by
    itself) and logs every 10 s. A record whose delivery failed in a retriable
    way (:func:`retriable`) is produced again, with a growing pause; one the
    broker refuses for good becomes a dead letter on ``dlq_topic`` saying why
    (a refused dead letter is logged: there is nothing smaller to send). So a
    caller that commits its input after this returns has lost nothing it
    acknowledged, and no record stops it. Raises :class:`DeliveryFailed` only
    when ``stopping()`` turns true and records stay unacknowledged for 30 s.
    """
    from streams.contracts import dead_letter

    waited, backoff = 0.0, 0.1
    while True:
        while prod.flush(1.0) > 0:
            waited += 1.0
            if stopping() and waited >= 30:
                raise DeliveryFailed(
                    "stopping with records the broker has not acknowledged; they are "
                    "left uncommitted and will be read again"
                )
            if waited % 10 == 0:
                _log.warning("waiting %.0f s for the broker to acknowledge records", waited)
        if not failed:
            return
        again: list[Produced] = []
        for record, err in failed:
            if retriable(err):
                on_retry()
                again.append(record)
                continue
            on_refused()
            if record[0] == dlq_topic:
                _log.error("the broker refused a dead letter for good: %s", err)
                continue
            _log.warning("the broker refused a %s record for good: %s", record[0], err)
            letter = dead_letter(
                f"the broker refused this {record[0]} record for good: {err}", record[1], record[0]
            )
            again.append((dlq_topic, letter.to_bytes(), None, None))
        failed.clear()
        if any(r[0] != dlq_topic for r in again):
            time.sleep(backoff)  # a retriable failure: give the broker a moment
            backoff = min(5.0, backoff * 2)
        produce_checked(prod, again, failed)


def read_recent(brokers: str, topic: str, per_partition: int, budget_s: float = 5.0) -> list[bytes]:
    """The values of the newest ``per_partition`` records of each partition of
    ``topic``, read for at most ``budget_s`` seconds (what a restarted process
    can learn from its own recent output).

    The start is the partition's high watermark minus ``per_partition``; the
    embedded broker's watermarks are not reliable (it reports a high mark of 1),
    which makes the start the beginning there: a small in-memory topic is read
    whole. The end is each partition's EOF, so nothing waits on an idle topic.
    """
    from confluent_kafka import TopicPartition

    cons = consumer(brokers, "streamrec-read-recent", **{"enable.partition.eof": True})
    values: list[bytes] = []
    try:
        md = cons.list_topics(topic, timeout=budget_s).topics.get(topic)
        if md is None or md.error is not None:
            return []
        parts = []
        for p in md.partitions:
            low, high = cons.get_watermark_offsets(
                TopicPartition(topic, p), timeout=budget_s, cached=False
            )
            parts.append(TopicPartition(topic, p, max(low, high - per_partition)))
        cons.assign(parts)
        pending = {p.partition for p in parts}
        deadline = time.monotonic() + budget_s
        while pending and time.monotonic() < deadline:
            for m in cons.consume(1000, 0.2):
                err = m.error()
                if err is None:
                    if m.value() is not None:
                        values.append(m.value())
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
    except KafkaException as exc:
        _log.warning("could not read back %s: %s", topic, exc)
    finally:
        cons.close()
    return values


#: ``fetch.wait.max.ms`` of readers a tenth of a second late is no matter to: the
#: worker's followers of the compacted internal topics, a benchmark's followers
#: that read Kafka timestamps rather than arrival times.
RELAXED_FETCH_WAIT_MS = 100


class TopicFollower:
    """Reads every partition of some topics from the beginning, without a group.

    Manual assignment avoids the consumer-group join wait (the embedded broker
    takes about session.timeout.ms / 2 to join) and sees every record, which
    is what a report or a test that checks a topic's content needs.
    """

    def __init__(
        self,
        brokers: str,
        topics: Iterable[str],
        timeout_s: float = 10.0,
        fetch_wait_ms: int | None = None,
    ) -> None:
        """``fetch_wait_ms`` overrides ``fetch.wait.max.ms`` for a reader that can wait
        (:data:`RELAXED_FETCH_WAIT_MS`). An idle consumer sends the broker a fetch
        every ``fetch.wait.max.ms``: the product's short default (low latency on
        the embedded broker, which does not answer a waiting fetch when data
        arrives) makes each idle consumer cost it about a hundred fetches a
        second. Measured on the embedded broker, 50 records/s: a hop takes
        p50 3.1 ms at 10 ms, 26.7 ms at 100 ms."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        extra: dict[str, object] = {"enable.partition.eof": False}
        if fetch_wait_ms is not None:
            extra["fetch.wait.max.ms"] = fetch_wait_ms
        self._consumer = consumer(brokers, "streamrec-follower", **extra)
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
