"""Closed-loop attribution share (issue 19): returning shoppers click their first list.

On the embedded broker with the real dataflow and worker: ``--users`` shoppers
with ten purchases each, three weeks old; one explicit request each; one click
per list on a random item of it, with the list's ``rec_id`` and ``ts`` = now.
Prints how many of those clicks were attributed (``outcomes``). Speaks only
the topic contract (JSON), so it runs against older checkouts too:

    python benchmarks/closed_loop_attribution.py --catalog CATALOG_DIR [--users 200]

(run from the checkout to measure, with its environment's python).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from pathlib import Path

from pipeline.broker import EmbeddedBroker
from pipeline.processes import ProcessGroup, streamrec_cmd
from streams.contracts import Topics
from streams.kafka import TopicFollower, create_topics, producer
from streams.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, required=True, help="a `streamrec index` folder")
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    items = json.loads((args.catalog / "items.json").read_text())["item_ids"]
    rng, old = random.Random(3), time.time() - 21 * 86400.0
    logs = Path(tempfile.mkdtemp(prefix="closed-loop-"))
    with EmbeddedBroker(partitions=4) as broker, ProcessGroup(logs) as procs:
        t = Topics(f"cl{uuid.uuid4().hex[:6]}-")
        create_topics(broker.bootstrap, t.all(), 4, t.compacted())
        s = Settings(
            brokers=broker.bootstrap, catalog=args.catalog, topic_prefix=t.prefix, metrics_port=0
        )
        env = s.to_env()
        procs.start("dataflow", streamrec_cmd("dataflow"), env)
        procs.start("worker", streamrec_cmd("worker"), env)
        p = producer(broker.bootstrap)
        users = [f"u{i}" for i in range(args.users)]
        for u in users:
            for j in range(10):
                event = {"event_id": f"w-{u}-{j}", "type": "purchase", "user_id": u,
                         "item_id": rng.choice(items), "ts": old + 60.0 * j}  # fmt: skip
                p.produce(t.events, key=u.encode(), value=json.dumps(event).encode())
        p.flush(30)
        time.sleep(3)
        for u in users:
            ask = {"request_id": f"ask-{u}", "user_id": u, "k": 10}
            p.produce(t.recommendation_requests, key=u.encode(), value=json.dumps(ask).encode())
        p.flush(30)
        follower, lists = TopicFollower(broker.bootstrap, [t.recommendations]), {}
        deadline = time.time() + 240
        while len(lists) < len(users) and time.time() < deadline:
            procs.check()
            for m in follower.poll(500, 0.5):
                rec = json.loads(m.value())
                if rec["request_id"]:
                    lists[rec["request_id"]] = rec
        follower.close()
        for u in users:
            rec = lists.get(f"ask-{u}")
            if rec is not None:
                item = rng.choice(rec["items"])["item_id"]
                click = {"event_id": f"c-{u}", "type": "click", "user_id": u, "item_id": item,
                         "ts": time.time(), "rec_id": rec["rec_id"]}  # fmt: skip
                p.produce(t.events, key=u.encode(), value=json.dumps(click).encode())
        p.flush(30)
        follower, credited, quiet = (
            TopicFollower(broker.bootstrap, [t.outcomes]),
            set(),
            time.time(),
        )
        while time.time() - quiet < 8:
            for m in follower.poll(500, 0.5):
                credited.add(json.loads(m.value())["event_id"])
                quiet = time.time()
        follower.close()
    share = 100 * len(credited) / max(1, len(lists))
    print(f"clicks with rec_id {len(lists)}, attributed {len(credited)} ({share:.1f}%)")


if __name__ == "__main__":
    main()
