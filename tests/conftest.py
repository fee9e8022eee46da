"""Shared fixtures: the real embedded broker (one per session), a real catalog,
and a helper that runs the real dataflow and worker as child processes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.contracts import Topics
from streams.kafka import TopicFollower, producer
from streams.settings import Settings

DATA = Path(__file__).parents[2] / "shared" / "data"
ONLINE_RETAIL = DATA / "online-retail"
TAOBAO = DATA / "taobao-userbehavior-sample"

# A small generic catalog: four kinds of products, real titles, so the real
# encoder gives meaningful similarities and the tests stay fast.
_KINDS = {
    "kitchen": [
        "RED ENAMEL MUG",
        "BLUE ENAMEL MUG",
        "TEA TOWEL SET",
        "CAKE TIN VINTAGE",
        "BREAD BIN CREAM",
        "PINK TEACUP AND SAUCER",
        "WOODEN SPOON SET",
        "BAKING MOULD HEART",
        "SUGAR BOWL FLORAL",
        "MILK JUG WHITE",
    ],
    "light": [
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "GLASS LANTERN SMALL",
        "CANDLE PLATE LACE",
        "STAR FAIRY LIGHTS",
        "PINK T-LIGHT HOLDER",
        "METAL LANTERN BLACK",
        "SCENTED CANDLE ROSE",
        "TEALIGHT SET OF 12",
        "CHRISTMAS LIGHTS WARM",
        "LAMP SHADE FLORAL",
    ],
    "bags": [
        "JUMBO BAG RED RETROSPOT",
        "SHOPPER BAG VINTAGE",
        "LUNCH BAG DOLLY GIRL",
        "CHARLOTTE BAG PINK POLKADOT",
        "GIFT BAG BIRTHDAY",
        "TOTE BAG PAISLEY",
        "JUMBO BAG STRAWBERRY",
        "PAPER BAG KRAFT",
        "SCHOOL BAG BLUE",
        "WASH BAG FLORAL",
    ],
    "toys": [
        "WOODEN TRAIN SET",
        "SPACEBOY ROCKET",
        "TOY TIDY DOLLY GIRL",
        "SKIPPING ROPE RED",
        "NESTING DOLLS SET",
        "JIGSAW PUZZLE FARM",
        "PLAYING CARDS RETRO",
        "KITE RED",
        "DOMINOES TIN",
        "MARBLES BAG",
    ],
}


def write_generic_dataset(folder: Path, n_users: int = 12, seed: int = 7) -> Path:
    """A generic interactions.csv + items.csv pair with real product titles."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        (f"{kind[0]}{i}", title, kind)
        for kind, titles in _KINDS.items()
        for i, title in enumerate(titles)
    ]
    with open(folder / "items.csv", "w") as f:
        f.write("item_id,title,category\n")
        for item_id, title, kind in items:
            f.write(f"{item_id},{title},{kind}\n")
    types = ["view", "click", "add_to_cart", "purchase"]
    ts = 1_700_000_000
    with open(folder / "interactions.csv", "w") as f:
        f.write("user_id,item_id,ts,type\n")
        for step in range(6):
            for u in range(n_users):
                kind = list(_KINDS)[u % 4] if rng.random() < 0.8 else rng.choice(list(_KINDS))
                item = rng.choice([i for i in items if i[2] == kind])[0]
                ts += rng.randint(1, 60)
                f.write(f"u{u},{item},{ts},{types[(u + step) % 4]}\n")
    return folder


def wait_rank_requests(brokers: str, topic: str, n: int, procs, timeout_s: float = 90.0) -> None:
    """Every event triggers one rank request: wait for ``n`` distinct ones on ``topic``."""
    follower = TopicFollower(brokers, [topic])
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < n and time.monotonic() < deadline:
            procs.check()
            seen |= {json.loads(m.value())["request_id"] for m in follower.poll(500, 0.2)}
    finally:
        follower.close()
    assert len(seen) == n, f"{len(seen)} of {n} events applied"


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The real embedded Tansu broker, once per test session."""
    with EmbeddedBroker(partitions=2, topics=Topics("session-")) as b:
        yield b


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Topics:
    """A fresh set of topics (uuid prefix) for one test."""
    t = Topics(f"t{uuid.uuid4().hex[:10]}-")
    broker.create_topics(t)
    return t


@pytest.fixture(scope="session")
def generic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_generic_dataset(tmp_path_factory.mktemp("generic"))


@pytest.fixture(scope="session")
def encoder():
    from model.encoder import Encoder

    return Encoder(device="cpu")


@pytest.fixture(scope="session")
def catalog_path(generic_data: Path, encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real catalog (MiniLM vectors + FAISS) of the small generic dataset."""
    from model.index import build_catalog
    from streams.datasets import load_dataset

    path, _ = build_catalog(
        load_dataset(generic_data), encoder, tmp_path_factory.mktemp("cache"), progress=False
    )
    return path


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory):
    """Two fine-tuned versions of a small generic dataset: A (2 steps), then B resumed
    from A's checkpoint (4 steps) -> (artifacts dir, A, B, data dir)."""
    import dataclasses

    from model.finetune import FinetuneConfig, finetune

    data = write_generic_dataset(tmp_path_factory.mktemp("ft-data"), n_users=60)
    out = tmp_path_factory.mktemp("artifacts")
    cfg = FinetuneConfig(
        max_steps=2, batch_size=8, epoch_pairs=16, val_users=30, max_minutes=0, device="cpu"
    )
    a = finetune(data, out, cfg=cfg, progress=False)
    b = finetune(data, out, cfg=dataclasses.replace(cfg, max_steps=4), resume=True, progress=False)
    return out, a, b, data


def produce_all(brokers: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    p = producer(brokers)
    for key, value in records:
        p.produce(topic, key=key, value=value)
    assert p.flush(15) == 0


def collect(brokers: str, topics: list[str], until, timeout_s: float = 120.0, procs=None) -> list:
    """Read ``topics`` from the beginning until ``until(messages)`` or the timeout."""
    follower = TopicFollower(brokers, topics)
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(got):
            if procs is not None:
                procs.check()
            got += follower.poll(500, 0.2)
    finally:
        follower.close()
    return got


def values(messages: list, topic: str) -> list[dict]:
    return [json.loads(m.value()) for m in messages if m.topic() == topic]


@contextmanager
def pipeline(
    tmp_path: Path,
    broker: EmbeddedBroker,
    topics: Topics,
    catalog: Path,
    dataflow_processes: int = 1,
    workers: int = 1,
    dataflow_args: tuple[str, ...] = (),
    **overrides: object,
):
    """Run the real dataflow (N Bytewax processes, each with ``dataflow_args``,
    e.g. recovery flags) and M workers as children. The cluster's commands are
    on ``procs.commands`` (name -> argv), so a test can restart a process.

    Every event-triggered request is ranked (``latest_wins`` off) unless a test
    says otherwise: most tests count one list per event.
    """
    from streamrec.cli import settings_env
    from streamrec.processes import ProcessGroup, streamrec_cmd

    s = Settings(
        brokers=broker.bootstrap,
        catalog=catalog,
        topic_prefix=topics.prefix,
        **{"metrics_port": 0, "latest_wins": False, **overrides},
    )
    env = settings_env(s)
    with ProcessGroup(tmp_path / "logs") as procs:
        commands = {}
        if dataflow_processes == 1:
            commands["dataflow"] = streamrec_cmd("dataflow", *dataflow_args)
        else:
            addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(dataflow_processes))
            for i in range(dataflow_processes):
                cluster = ("-i", str(i), "-a", addrs, *dataflow_args)
                commands[f"dataflow-{i}"] = streamrec_cmd("dataflow", *cluster)
        for name, cmd in commands.items():
            procs.start(name, cmd, env)
        procs.commands = commands  # type: ignore[attr-defined]
        procs.env = env  # type: ignore[attr-defined]
        for j in range(workers):
            procs.start(f"worker-{j}", streamrec_cmd("worker", "--metrics-port", "0"), env)
        yield procs
