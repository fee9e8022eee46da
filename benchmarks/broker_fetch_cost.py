"""What one fetching consumer costs the embedded broker as a topic fills up.

    .venv/bin/python benchmarks/broker_fetch_cost.py [--stored 0,10000,30000,60000]
        [--brokers B]

Why: in `streamrec bench pipeline` the lists after the 10x burst stay slow
(p50 about 45-65 ms against 15 ms before it) while every lag is zero, and the
embedded broker's CPU climbs from about 10% to over 100% of a core during the
run and stays there. This script isolates the broker: a topic of 4 partitions
is loaded with N record batches of one 500-byte record each (a producer with
``linger.ms=0``, as a trickle of events, lists or requests writes them), then
one consumer at the product's ``fetch.wait.max.ms`` (10 ms) follows the topic's
end while 100 records/s arrive. Per N it prints the broker's CPU share over
8 s (from ``/proc``) and the hop (produce timestamp -> consumed) p50 and p99.
A figure that grows with N is a per-fetch cost proportional to what a partition
holds: on Tansu 0.6's memory storage, which keeps every batch (it has no
retention and refuses DeleteRecords), the pipeline's latency then grows with
the history of its topics however idle it is. Apache Kafka finds a fetch
offset through its offset index; run with ``--brokers`` to compare (the CPU
column is then not measured).
"""

from __future__ import annotations

import argparse
import os
import time

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.broker import EmbeddedBroker

_PARTITIONS = 4


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None without one)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(brokers: str, topic: str, n: int) -> None:
    """``n`` more single-record batches on ``topic``, spread over its partitions."""
    loader = Producer({"bootstrap.servers": brokers, "linger.ms": 0, "batch.num.messages": 1})
    for i in range(n):
        loader.produce(topic, b"y" * 500, partition=i % _PARTITIONS)
        if i % 50 == 49:  # one record per request: a batch each
            loader.flush()
    loader.flush()


def _measure(brokers: str, topic: str, pid: int | None, seconds: float = 8.0) -> dict:
    """Broker CPU share and the hop at 100 records/s with one consumer at the end."""
    cons = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"fetch-cost-{time.time_ns()}",
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": False,
        }
    )
    cons.assign([TopicPartition(topic, p, OFFSET_END) for p in range(_PARTITIONS)])
    for _ in range(20):  # settle on the end offsets
        cons.consume(100, 0.05)
    prod = Producer({"bootstrap.servers": brokers, "linger.ms": 1})
    hops: list[float] = []
    cpu0, t0 = _cpu_s(pid), time.time()
    while time.time() - t0 < seconds:
        prod.produce(topic, b"z" * 500, timestamp=int(time.time() * 1000))
        prod.poll(0)
        until = time.time() + 0.01
        while time.time() < until:
            for m in cons.consume(100, 0.005):
                if m.error() is None and m.value()[:1] == b"z":
                    hops.append(time.time() * 1000.0 - m.timestamp()[1])
    elapsed = time.time() - t0
    cpu1 = _cpu_s(pid)
    cons.close()
    prod.flush(5)
    hops.sort()
    return {
        "broker_cpu_pct": None if cpu0 is None else 100.0 * (cpu1 - cpu0) / elapsed,
        "hop_p50_ms": hops[len(hops) // 2] if hops else None,
        "hop_p99_ms": hops[int(len(hops) * 0.99)] if hops else None,
        "records": len(hops),
    }


def run(brokers: str, pid: int | None, stored: list[int]) -> None:
    topic = f"fetch-cost-{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(topic, _PARTITIONS, 1)]).values():
        future.result(10)
    have = 0
    head = f"{'batches stored':>15} {'broker CPU':>11} {'hop p50':>9} {'hop p99':>9}"
    print(f"{head}  (load {os.getloadavg()[0]:.2f} at the start)")
    for n in stored:
        _load(brokers, topic, n - have)
        have = n
        r = _measure(brokers, topic, pid)
        cpu = "-" if r["broker_cpu_pct"] is None else f"{r['broker_cpu_pct']:.0f}%"
        print(f"{n:>15,} {cpu:>11} {r['hop_p50_ms']:>7.1f}ms {r['hop_p99_ms']:>7.1f}ms", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stored", default="0,10000,30000,60000")
    ap.add_argument("--brokers", default=None, help="a running cluster instead of Tansu")
    a = ap.parse_args()
    stored = sorted(int(x) for x in a.stored.split(","))
    if a.brokers:
        run(a.brokers, None, stored)
        return
    with EmbeddedBroker(partitions=_PARTITIONS) as broker:
        run(broker.bootstrap, broker.pid, stored)


if __name__ == "__main__":
    main()
