"""The dataflow's Kafka output: Bytewax's sink, with every delivery checked.

Bytewax 0.21's ``KafkaSink`` produces without a delivery callback and then
``flush()``-es each batch: a record the broker refuses (too large, not
authorised) is dropped without a word, one librdkafka refuses locally (over
``message.max.bytes``) raises and stops the dataflow (and, read again after a
restart, stops it again), and after a stall longer than ``message.timeout.ms``
the unsent records are silently lost. This sink keeps Bytewax's contract (a
batch is on the broker before ``write_batch`` returns, so the epoch that
follows, and its recovery snapshot, never runs ahead of the output) and
settles each batch with :func:`streams.kafka.deliver`: retriable failures are
produced again however long the broker is away, a record refused for good
becomes a dead letter on ``events.dlq`` with the reason.
"""

from __future__ import annotations

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Producer

from streams import metrics
from streams.kafka import Produced, deliver, produce_checked

__all__ = ["CheckedKafkaSink"]


class _Partition(StatelessSinkPartition[KafkaSinkMessage]):
    def __init__(self, producer: Producer, dlq_topic: str) -> None:
        self._producer = producer
        self._dlq = dlq_topic

    def write_batch(self, items: list[KafkaSinkMessage]) -> None:
        failed: list[tuple[Produced, KafkaError]] = []
        records = [(m.topic, m.value, m.key, m.headers or None) for m in items]
        produce_checked(self._producer, records, failed)  # type: ignore[arg-type]
        deliver(
            self._producer,
            failed,
            self._dlq,
            on_retry=metrics.DELIVERY_RETRIES.inc,
            on_refused=metrics.UNDELIVERABLE.inc,
        )

    def close(self) -> None:
        self._producer.flush(30)


class CheckedKafkaSink(DynamicSink[KafkaSinkMessage]):
    """Every ``KafkaSinkMessage`` (each names its topic) to Kafka, delivery checked.

    One producer per Bytewax worker, configured like Bytewax's own
    (``bootstrap.servers`` plus ``add_config``).
    """

    def __init__(self, brokers: list[str], dlq_topic: str, add_config: dict | None = None) -> None:
        self._config = {"bootstrap.servers": ",".join(brokers), **(add_config or {})}
        self._dlq = dlq_topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:  # noqa: ARG002
        return _Partition(Producer(self._config), self._dlq)
