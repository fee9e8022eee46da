"""A fine-tuned artifact in service: the real pipeline serves its version, and a worker
watching ``current`` swaps to a new version without a restart."""

from __future__ import annotations

import threading
import time

import pytest

from corpus.datasets import load_dataset
from model import metrics
from model.artifact import CURRENT
from model.bench import bench_requests
from model.worker import Worker
from streams.catalog import Catalog
from streams.settings import Settings
from tests.helpers import collect, pipeline, produce_all, values

pytestmark = pytest.mark.integration


def test_pipeline_lists_carry_the_artifact_version(tmp_path, broker, topics, tiny_artifacts):
    out, _, b, data = tiny_artifacts
    ds = load_dataset(data)
    records = [(e.user_id.encode(), e.to_bytes()) for e in ds.interactions.events(0, 20)]
    # STREAMREC_ARTIFACT = the `current` link; the dataflow reads the artifact's catalog.
    with pipeline(
        tmp_path, broker, topics, b.path / "catalog", artifact=out / CURRENT, data=data
    ) as procs:
        produce_all(broker.bootstrap, topics.events, records)
        got = collect(
            broker.bootstrap,
            [topics.recommendations],
            until=lambda ms: len(ms) >= len(records),
            procs=procs,
        )
    recs = values(got, topics.recommendations)
    assert len(recs) == len(records)
    assert {r["model_version"] for r in recs} == {b.version}


def _flip(link, target) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(target)
    tmp.replace(link)


def test_worker_swaps_to_a_new_version_without_restart(tmp_path, broker, topics, tiny_artifacts):
    _, a, b, _ = tiny_artifacts
    link = tmp_path / CURRENT
    link.symlink_to(a.path)
    settings = Settings(
        brokers=broker.bootstrap,
        topic_prefix=topics.prefix,
        artifact=link,
        reload_interval_s=0.3,
        metrics_port=0,
        device="cpu",
    )
    reloads = metrics.MODEL_RELOADS._value.get()
    worker = Worker(settings)  # no --catalog: the artifact's own catalog
    assert worker.ranker.model_version == a.version
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    requests = bench_requests(Catalog.load(a.path / "catalog"), 400, history=3)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        batch = requests[sent : sent + n]
        sent += n
        produce_all(
            broker.bootstrap,
            topics.rank_requests,
            [(r.user_id.encode(), r.to_bytes()) for r in batch],
        )

    try:
        send(5)
        got = collect(broker.bootstrap, [topics.recommendations], lambda ms: len(ms) >= 5, 60)
        assert {r["model_version"] for r in values(got, topics.recommendations)} == {a.version}

        _flip(link, b.path)
        deadline = time.monotonic() + 60
        while worker.ranker.model_version != b.version and time.monotonic() < deadline:
            send(1)
            time.sleep(0.3)
        send(5)
        total = sent
        got = collect(broker.bootstrap, [topics.recommendations], lambda ms: len(ms) >= total, 60)
    finally:
        worker.stop()
        thread.join(30)
    # Lists sit on several partitions: their creation time gives the serving order.
    recs = sorted(values(got, topics.recommendations), key=lambda r: r["created_ts"])
    order = [r["model_version"] for r in recs]
    assert len(order) == total
    first_b = order.index(b.version)
    # Every list before the swap is A's, every one after it B's: no mixing, no going back.
    assert set(order[:first_b]) == {a.version} and set(order[first_b:]) == {b.version}
    assert metrics.MODEL_RELOADS._value.get() == reloads + 1
    assert metrics.MODEL_INFO.labels(b.version, "cpu")._value.get() == 1


def test_a_variant_with_its_own_artifact_is_ranked_by_that_model(tiny_artifacts):
    """Experiment variants may serve another model version (``policy.artifact``)."""
    _, a, b, _ = tiny_artifacts
    settings = Settings(brokers="unused:9092", artifact=a.path, metrics_port=0)
    worker = Worker(settings)
    requests = bench_requests(Catalog.load(a.path / "catalog"), 4)
    mixed = [
        r.model_copy(update={"policy": r.policy.model_copy(update={"artifact": str(b.path)})})
        if i % 2
        else r
        for i, r in enumerate(requests)
    ]
    recs = worker._recommend(mixed)
    assert [r.rec_id for r in recs] == [r.rec_id for r in worker.ranker.recommend(mixed)]
    assert [r.model_version for r in recs] == [a.version, b.version] * 2
