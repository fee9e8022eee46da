"""The dataflow's Kafka input: Bytewax's ``KafkaSource`` with a poll that never blocks.

Bytewax 0.21's Kafka partition calls ``consume(batch_size, 0.001)``: each of
the source's partitions (every partition of ``events``,
``recommendation-requests`` and ``recommendations``) may block its worker for
a millisecond per poll, so with 12 partitions an idle loop spends about
12 ms waiting before a new event is even read (the event -> rank request
share of a list's latency). This source polls without waiting; Bytewax
itself sleeps 1 ms after a poll that found nothing (``next_awake`` is None),
so an idle dataflow still does not spin. Everything else (offsets kept in
the recovery store, errors as ``KafkaError`` items) is Bytewax's.
"""

from __future__ import annotations

from typing import Any

from bytewax.connectors.kafka import KafkaSource

__all__ = ["NonBlockingKafkaSource"]


class _NoWait:
    """A consumer whose ``consume`` returns what is already fetched, at once."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def consume(self, num_messages: int, timeout: float) -> list:  # noqa: ARG002 - by design
        return self._consumer.consume(num_messages, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class NonBlockingKafkaSource(KafkaSource):
    """``KafkaSource`` whose partitions poll with a zero timeout (see the module docstring)."""

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):  # noqa: ANN201
        part = super().build_part(step_id, for_part, resume_state)
        # Bytewax 0.21.1 (pinned) keeps the consumer in this attribute.
        part._consumer = _NoWait(part._consumer)
        return part
