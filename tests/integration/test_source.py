"""``SharedConsumerKafkaSource`` on the real broker: one consumer for a worker's
partitions, each partition its own records in order, its own offset to resume from."""

from __future__ import annotations

import time

from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING

from pipeline.broker import EmbeddedBroker
from streams.contracts import Topics
from streams.source import _HUBS, SharedConsumerKafkaSource
from tests.helpers import produce_all


def _drain(parts: dict, want: int, timeout_s: float = 30.0) -> dict[str, list]:
    """Poll every partition, as Bytewax does, until ``want`` records came out."""
    got: dict[str, list] = {name: [] for name in parts}
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for v in got.values()) < want:
        assert time.monotonic() < deadline, f"{got} after {timeout_s} s"
        for name, part in parts.items():
            got[name] += part.next_batch()
        time.sleep(0.01)
    return got


def test_partitions_share_one_consumer_and_resume_from_their_own_offsets(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    names = [topics.events, topics.recommendation_requests]
    produce_all(
        broker.bootstrap, topics.events, [(f"u{n}".encode(), b"e%d" % n) for n in range(40)]
    )
    produce_all(broker.bootstrap, topics.recommendation_requests, [(b"u1", b"r0"), (b"u2", b"r1")])
    source = SharedConsumerKafkaSource([broker.bootstrap], names, batch_size=7)
    part_names = source.list_parts()
    assert len(part_names) == 4  # 2 topics x 2 partitions (the session broker's)
    hubs_before = len(_HUBS)
    parts = {name: source.build_part("kafka-in", name, None) for name in part_names}
    assert len(_HUBS) == hubs_before + 1  # one consumer for the four partitions

    got = _drain(parts, 42)
    for name, items in got.items():
        idx, topic = name.split("-", 1)
        assert all(isinstance(m, KafkaSourceMessage) for m in items)
        assert {(m.topic, m.partition) for m in items} <= {(topic, int(idx))}
        offsets = [m.offset for m in items]
        assert offsets == list(range(len(items)))  # in order, nothing lost or repeated
        # The next offset to read; a partition that gave nothing still starts at the beginning.
        assert parts[name].snapshot() == (len(items) if items else OFFSET_BEGINNING)
    values = sorted(m.value for items in got.values() for m in items)
    assert values == sorted([b"e%d" % n for n in range(40)] + [b"r0", b"r1"])

    # Resume every partition from its snapshot: only records produced since come out.
    resume = {name: part.snapshot() for name, part in parts.items()}
    for part in parts.values():
        part.close()
    assert len(_HUBS) == hubs_before  # the last partition closed the consumer
    produce_all(broker.bootstrap, topics.events, [(b"u9", b"late")])
    again = SharedConsumerKafkaSource([broker.bootstrap], names)
    parts = {name: again.build_part("kafka-in", name, resume[name]) for name in part_names}
    late = [m for items in _drain(parts, 1).values() for m in items]
    assert [m.value for m in late] == [b"late"]
    assert late[0].offset == resume[f"{late[0].partition}-{topics.events}"]
    for part in parts.values():
        part.close()
