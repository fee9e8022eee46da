"""Helpers the tests share (not fixtures: those are in conftest.py): the shared data
folders, a small generic dataset, producing and collecting records on the real
broker, waiting on a recovery snapshot, and the real pipeline as child processes.
Import them as ``from tests.helpers import ...``."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.broker import EmbeddedBroker
from streams.contracts import Topics
from streams.kafka import TopicFollower, producer
from streams.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
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
    e.g. recovery flags) and M workers as children. The dataflow's commands are
    on ``procs.commands`` (name -> argv), so a test can restart one.

    Every event-triggered request is ranked (``latest_wins`` off) unless a test
    says otherwise: most tests count one list per event.
    """
    from pipeline.processes import ProcessGroup, start_pipeline

    s = Settings(
        brokers=broker.bootstrap,
        catalog=catalog,
        topic_prefix=topics.prefix,
        **{"metrics_port": 0, "latest_wins": False, **overrides},
    )
    with ProcessGroup(tmp_path / "logs") as procs:
        commands = start_pipeline(
            procs,
            s,
            workers=workers,
            dataflow_processes=dataflow_processes,
            dataflow_args=dataflow_args,
        )
        dataflow = {name: cmd for name, cmd in commands.items() if name.startswith("dataflow")}
        procs.commands = dataflow  # type: ignore[attr-defined]
        procs.env = s.to_env()  # type: ignore[attr-defined]
        yield procs


def committed_epoch(recovery_dir: Path) -> int | None:
    """The epoch a restart would resume from: the oldest of the recovery partitions'
    committed epochs (0 before the first snapshot); None while a partition is being
    written and cannot be read (read-only, so the dataflow is never blocked)."""
    epochs = []
    for part in sorted(Path(recovery_dir).glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1) as db:
                row = db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
        except sqlite3.OperationalError:
            return None
        epochs.append(row[0] or 0)
    return min(epochs, default=0)


def wait_for_snapshot(recovery_dir: Path, procs=None, snapshots: int = 1, timeout_s: float = 60.0):
    """Wait until the recovery store has committed ``snapshots`` more epochs than now:
    what the dataflow applied before this call survives a kill from then on."""
    deadline = time.monotonic() + timeout_s
    start = now = None
    while start is None or now is None or now < start + snapshots:
        if procs is not None:
            procs.check()
        assert time.monotonic() < deadline, f"no new snapshot in {recovery_dir} in {timeout_s} s"
        time.sleep(0.1)
        now = committed_epoch(recovery_dir)
        if start is None:
            start = now  # an unreadable first look is not taken as epoch 0
