"""The dataflow's Kafka input: Bytewax's ``KafkaSource``, one consumer per worker.

Bytewax 0.21's ``KafkaSource`` gives every Kafka partition its own consumer
(every partition of ``events``, ``recommendation-requests``,
``recommendations`` and ``forget-requests``: 16 consumers at 4 partitions
each) and polls each with ``consume(batch_size, 0.001)``. Both cost latency:

- each poll may block the worker for a millisecond, so an idle loop spends
  about 16 ms waiting before a new event is even read;
- each idle consumer sends the broker a fetch every ``fetch.wait.max.ms``
  (10 ms by default, ``STREAMREC_FETCH_WAIT_MS``): 1,600 fetches a second
  from an idle dataflow. On the 2-core test machine the embedded broker
  took most of a core at 100 events/s, and every process's latency with it.

Here the partitions a Bytewax worker owns share one consumer (assigned each
partition with its own offset, ``incremental_assign``), polled without
waiting; what it returns is sorted into per-partition buffers and each
partition hands out its own. Bytewax itself sleeps 1 ms after a poll that
found nothing (``next_awake`` is None), so an idle dataflow still does not
spin. What Bytewax's source promises is kept: each partition is a recovery
partition whose snapshot is its next offset, errors arrive as
``KafkaError`` items (``raise_on_errors=False``), and the consumer lag per
partition goes to Bytewax's ``bytewax_kafka_consumer_lag`` gauge. A client
error that concerns no partition (the broker away) is handed to the
partition that polled, once.

Written here rather than configured: Bytewax 0.21's source has no option to
share a consumer (its partitions build their consumers themselves).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

from bytewax.connectors.kafka import (
    BYTEWAX_CONSUMER_LAG_GAUGE,
    KafkaError,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

__all__ = ["SharedConsumerKafkaSource"]

_Key = tuple[str, int]  # (topic, partition)


class _Hub:
    """One consumer for the partitions of one source in one Bytewax worker."""

    def __init__(self, config: dict[str, Any], step_id: str, hub_id: tuple) -> None:
        self._step_id, self.hub_id = step_id, hub_id
        self._consumer = Consumer({**config, "stats_cb": self._stats})
        self._lock = threading.Lock()
        self.parts: dict[_Key, _Partition] = {}

    def add(self, part: _Partition) -> None:
        with self._lock:
            self.parts[part.key] = part
            self._consumer.incremental_assign([TopicPartition(*part.key, part.offset)])

    def remove(self, part: _Partition) -> bool:
        """Unassign ``part``; True when it was the last one (the consumer is closed)."""
        with self._lock:
            self.parts.pop(part.key, None)
            if self.parts:
                self._consumer.incremental_unassign([TopicPartition(*part.key)])
                return False
            self._consumer.close()
            return True

    def fill(self, caller: _Partition, n: int) -> None:
        """Poll once without waiting; each message into its partition's buffer
        (one that concerns no partition of ours into ``caller``'s)."""
        with self._lock:
            for msg in self._consumer.consume(n, 0):
                self.parts.get((msg.topic(), msg.partition()), caller).buffer.append(msg)

    def _stats(self, stats_json: str) -> None:
        # librdkafka's statistics (every statistics.interval.ms, served on consume).
        topics = json.loads(stats_json).get("topics", {})
        for (topic, idx), part in list(self.parts.items()):
            st = topics.get(topic, {}).get("partitions", {}).get(str(idx))
            # OFFSET_BEGINNING and the like are negative: no lag to tell yet.
            if st is not None and part.offset > 0 and st.get("ls_offset", -1) >= 0:
                BYTEWAX_CONSUMER_LAG_GAUGE.labels(
                    step_id=self._step_id, topic=topic, partition=idx
                ).set(st["ls_offset"] - part.offset)


class _Partition(StatefulSourcePartition):
    """One Kafka partition: its buffer of the hub's messages and its next offset."""

    def __init__(
        self, hub: _Hub, key: _Key, offset: int, batch_size: int, raise_on_errors: bool
    ) -> None:
        self.hub, self.key, self.offset = hub, key, offset
        self.buffer: deque[Message] = deque()
        self._batch_size = batch_size
        self._raise = raise_on_errors
        hub.add(self)

    def next_batch(self) -> list:
        if not self.buffer:
            self.hub.fill(self, self._batch_size)
        batch: list = []
        buffer = self.buffer
        while buffer and len(batch) < self._batch_size:
            msg = buffer.popleft()
            error = msg.error()
            if error is not None and error.code() == ConfluentKafkaError._PARTITION_EOF:
                continue  # tail: the end of a partition is no record
            if error is not None and self._raise:
                raise RuntimeError(f"error consuming from Kafka topic {self.key[0]!r}: {error}")
            item = KafkaSourceMessage(
                key=msg.key(),
                value=msg.value(),
                topic=msg.topic(),
                headers=msg.headers() or [],
                latency=msg.latency(),
                offset=msg.offset(),
                partition=msg.partition(),
                timestamp=msg.timestamp(),
            )
            batch.append(item if error is None else KafkaError(error, item))
            # Resume after this record; an error of no record (offset < 0) moves nothing.
            offset = msg.offset()
            if (msg.topic(), msg.partition()) == self.key and offset is not None and offset >= 0:
                self.offset = offset + 1
        return batch

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        if self.hub.remove(self):
            with _HUBS_LOCK:
                _HUBS.pop(self.hub.hub_id, None)


# The hub of each (source, step, worker thread): Bytewax builds and polls a
# worker's partitions on that worker's thread.
_HUBS: dict[tuple, _Hub] = {}
_HUBS_LOCK = threading.Lock()


class SharedConsumerKafkaSource(KafkaSource):
    """``KafkaSource`` whose partitions in one Bytewax worker share one consumer,
    polled without waiting (see the module docstring). Tails its topics."""

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        idx, topic = for_part.split("-", 1)
        if topic not in self._topics:
            raise ValueError(f"cannot resume partition {for_part!r}: not one of {self._topics}")
        config = {
            # Offsets live in the recovery store, not in a consumer group.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": 1000,
            **self._add_config,
        }
        hub_id = (id(self), step_id, threading.get_ident())
        with _HUBS_LOCK:
            hub = _HUBS.get(hub_id)
            if hub is None:
                hub = _HUBS[hub_id] = _Hub(config, step_id, hub_id)
        offset = self._starting_offset if resume_state is None else resume_state
        return _Partition(hub, (topic, int(idx)), offset, self._batch_size, self._raise_on_errors)
