"""A simulated storefront for the diversity bandit, run through the real topics.

The world (all seeded):

* a catalog of ``categories x items_per_category`` items; an item's vector is
  its category's random direction plus noise, so items of one category are
  similar and categories are not;
* two kinds of users, half each. *Focused* users have a peaked taste over
  categories (Dirichlet 0.05) and no appetite for variety (0); *explorers*
  have a broad taste (Dirichlet 10) and want variety (appetite 1). Their
  histories differ in category entropy, so the ``entropy`` segment (edge 1.2
  nats) tells them apart once the ``history`` segment says they have at least
  4 events (newcomers form their own, mixed segment);
* a response model: a list of k items is clicked with probability
  ``0.05 + 0.7 * ((1 - appetite) * R + appetite * V)`` where R is the
  position-weighted taste match of the list (1 = every item from the user's
  favourite category) and V its category coverage. The clicked item is drawn
  by taste and position; a list that is not clicked is followed by a view of
  an item the user likes (no rec_id). One event per list, so each user waits
  for the list its last event triggered, as on a real page.

Every response is a real event on ``events`` (clicks and purchases carry the
list's ``rec_id``), so the dataflow attributes them, closes lists, updates the
bandit and the worker picks arms from ``bandit-weights``: the whole loop runs
through the product. An experiment splits users between the bandit and each
fixed arm, which gives "the best fixed arm in hindsight" and, per segment,
the oracle (the best fixed arm of each segment) from the same run.

A list's reward is computed exactly as the dataflow does: min(1, sum of the
configured weights of its attributed events); the simulation weighs a click
1, so the reward is "the list was clicked" and Thompson's Beta posterior is
exact.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.broker import EmbeddedBroker
from pipeline.processes import ProcessGroup, start_pipeline
from streams.catalog import Catalog
from streams.contracts import BanditState, Event, Topics, parse
from streams.experiments import PolicyConfig
from streams.kafka import TopicFollower, producer
from streams.settings import Settings

__all__ = ["World", "SimUser", "SimResult", "simulation_config", "run_simulation"]

ARMS = ["mmr:1", "mmr:0.3", "dpp:0.3", "category_cap:0"]


@dataclass(frozen=True)
class SimUser:
    user_id: str
    kind: str  # "focused" | "explorer"
    taste: np.ndarray  # (categories,), max 1
    appetite: float


@dataclass
class World:
    """The synthetic catalog, users and response model."""

    categories: int = 8
    items_per_category: int = 40
    users: int = 2000
    seed: int = 7
    dim: int = 384
    k: int = 10

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        centroids = rng.normal(size=(self.categories, self.dim))
        self.item_category = np.repeat(np.arange(self.categories), self.items_per_category)
        noise = rng.normal(size=(len(self.item_category), self.dim))
        vecs = centroids[self.item_category] + 0.35 * noise
        self.vectors = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
        self.item_ids = [f"s{i}" for i in range(len(self.item_category))]
        self.row = {item: i for i, item in enumerate(self.item_ids)}
        self.population: list[SimUser] = []
        for u in range(self.users):
            focused = u % 2 == 0
            taste = rng.dirichlet([0.05 if focused else 10.0] * self.categories)
            self.population.append(
                SimUser(
                    f"sim{u}",
                    "focused" if focused else "explorer",
                    taste / taste.max(),
                    0.0 if focused else 1.0,
                )
            )

    def catalog(self) -> Catalog:
        """The world's items as a streamrec catalog (vectors, categories, titles)."""
        return Catalog(
            item_ids=self.item_ids,
            titles=[f"category {c} item {i}" for i, c in enumerate(self.item_category)],
            categories=[f"cat{c}" for c in self.item_category],
            vectors=self.vectors,
            popularity=np.ones(len(self.item_ids), np.float32),
            manifest={"version": f"simulated-world-{self.seed}", "model": "none (simulated)"},
        )

    def liked_item(self, user: SimUser, rng: random.Random) -> str:
        """An item drawn from the user's taste (a browse outside the lists)."""
        cats = np.arange(self.categories)
        c = rng.choices(cats, weights=user.taste)[0]
        return self.item_ids[c * self.items_per_category + rng.randrange(self.items_per_category)]

    def click_probability(self, user: SimUser, items: list[str]) -> float:
        """P(the list gets a click) under the response model."""
        cats = [self.item_category[self.row[i]] for i in items if i in self.row]
        if not cats:
            return 0.05
        pos = 1.0 / np.log2(np.arange(len(cats)) + 2.0)
        match = float(np.dot(pos, user.taste[cats]) / pos.sum())
        coverage = len(set(cats)) / min(self.k, self.categories)
        a = user.appetite
        return min(1.0, 0.05 + 0.7 * ((1 - a) * match + a * coverage))

    def respond(
        self, user: SimUser, rec: dict, ts: float, rng: random.Random, seq: int
    ) -> tuple[Event, float]:
        """The user's next event after seeing ``rec`` -> (event, the list's reward).

        Exactly one event per list, so each user has one list in flight: a
        click on a list item (carrying the rec_id) or a view elsewhere.
        """
        items = [x["item_id"] for x in rec["items"]]
        if rng.random() < self.click_probability(user, items):
            weights = [
                user.taste[self.item_category[self.row[i]]] / np.log2(r + 2)
                for r, i in enumerate(items)
            ]
            item = rng.choices(items, weights=weights)[0]
            return _event(user, item, "click", ts, rec["rec_id"], seq), 1.0
        return _event(user, self.liked_item(user, rng), "view", ts, None, seq), 0.0


def _event(user: SimUser, item: str, kind: str, ts: float, rec_id: str | None, seq: int) -> Event:
    return Event(
        event_id=f"{user.user_id}-{seq}",
        type=kind,
        user_id=user.user_id,
        item_id=item,
        ts=ts,
        rec_id=rec_id,
    )


def simulation_config(policy: str = "thompson", bandit_share: float = 0.6) -> dict:
    """The experiments file of a simulation: the bandit vs each fixed arm."""
    fixed_share = round((1.0 - bandit_share) / len(ARMS), 6)
    variants = [
        {"name": "bandit", "weight": round(1.0 - fixed_share * len(ARMS), 6), "policy": "bandit"}
    ]
    for arm in ARMS:
        reranker, _, trade_off = arm.partition(":")
        variants.append(
            {
                "name": f"fixed-{arm}",
                "weight": fixed_share,
                "reranker": reranker,
                "lambda": float(trade_off),
            }
        )
    return {
        "layer_salt": "sim",
        "arms": [
            {"reranker": a.partition(":")[0], "lambda": float(a.partition(":")[2])} for a in ARMS
        ],
        "bandit": {
            "policy": policy,
            "min_exploration": 0.02,
            "segment_features": ["history", "entropy"],
            "history_buckets": [4],
            "entropy_buckets": [1.2],
            "seed": 1,
        },
        "attribution": {
            "window_s": 3600,
            "max_open_lists": 2,
            "reward_weights": {
                "view": 0.0,
                "click": 1.0,
                "favorite": 0.0,
                "add_to_cart": 0.0,
                "purchase": 1.0,
            },
        },
        "experiments": [{"name": "sim", "salt": "sim-split", "traffic": 1.0, "variants": variants}],
    }


@dataclass
class SimResult:
    """Per-variant and per-(segment, arm) rewards of one simulation."""

    lists: int = 0
    seconds: float = 0.0
    reward: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    by_segment_arm: dict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    bandit_segments: list[str] = field(default_factory=list)
    bandit_arms: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    bandit_truth: dict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    learned: dict[str, dict] = field(default_factory=dict)

    def mean(self, variant: str) -> float:
        r = self.reward.get(variant, [])
        return float(np.mean(r)) if r else float("nan")

    def summary(self) -> dict:
        """Bandit vs the best fixed arm in hindsight and the per-segment oracle."""
        fixed = {v: self.mean(v) for v in self.reward if v.startswith("fixed-")}
        best_fixed = max(fixed, key=fixed.get) if fixed else None
        oracle_arm = {}
        for seg in {s for s, _ in self.by_segment_arm}:
            means = {
                a: float(np.mean(r))
                for (s, a), r in self.by_segment_arm.items()
                if s == seg and len(r) >= 20
            }
            if means:
                oracle_arm[seg] = max(means, key=means.get)
        oracle = [
            float(np.mean(self.by_segment_arm[(s, oracle_arm[s])]))
            for s in self.bandit_segments
            if s in oracle_arm
        ]
        bandit = self.mean("bandit")
        oracle_mean = float(np.mean(oracle)) if oracle else float("nan")
        return {
            "lists": self.lists,
            "bandit_lists": len(self.reward.get("bandit", [])),
            "seconds": round(self.seconds, 1),
            "bandit_mean_reward": bandit,
            "bandit_cumulative_reward": float(np.sum(self.reward.get("bandit", []))),
            "fixed_mean_reward": fixed,
            "best_fixed_arm": best_fixed,
            "best_fixed_mean_reward": fixed.get(best_fixed, float("nan")),
            "oracle_arm_per_segment": oracle_arm,
            "oracle_mean_reward": oracle_mean,
            "bandit_vs_best_fixed": bandit / fixed[best_fixed] if best_fixed else float("nan"),
            "bandit_vs_oracle": bandit / oracle_mean if oracle else float("nan"),
            "bandit_arm_picks": {s: dict(a) for s, a in self.bandit_arms.items()},
            "bandit_learned": self.learned,
            "fixed_by_segment": {
                f"{s}/{a}": round(float(np.mean(r)), 4) for (s, a), r in self.by_segment_arm.items()
            },
        }


def run_simulation(
    lists: int = 5000,
    users: int = 2000,
    policy: str = "thompson",
    seed: int = 7,
    concurrency: int | None = None,
    workdir: Path | None = None,
    console: Console | None = None,
    timeout_s: float = 3600.0,
) -> SimResult:
    """Run the world against the real broker, dataflow and worker until ``lists`` lists."""
    console = console or Console()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="streamrec-sim-"))
    world = World(users=users, seed=seed)
    catalog_path = workdir / "catalog"
    world.catalog().save(catalog_path)
    config_path = workdir / "experiments.yaml"
    config_path.write_text(yaml.safe_dump(simulation_config(policy)))
    PolicyConfig.model_validate(yaml.safe_load(config_path.read_text()))
    rng = random.Random(seed)
    result = SimResult()
    topics = Topics("sim-")
    with EmbeddedBroker(partitions=2, topics=topics) as broker, ProcessGroup(workdir) as procs:
        s = Settings(
            brokers=broker.bootstrap,
            catalog=catalog_path,
            topic_prefix=topics.prefix,
            experiments=config_path,
            metrics_port=0,
            lm_blend=0.0,
            candidates=200,
            filter_seen=False,
            half_life_s=600.0,
            batch_size=128,
        )
        start_pipeline(procs, s)
        prod = producer(broker.bootstrap, **{"linger.ms": 2})
        follower = TopicFollower(broker.bootstrap, [topics.recommendations])
        clock = {u.user_id: 1_700_000_000.0 + rng.random() * 60 for u in world.population}
        seq: dict[str, int] = defaultdict(int)
        by_id = {u.user_id: u for u in world.population}

        def send(events: list[Event]) -> None:
            for e in events:
                prod.produce(topics.events, key=e.user_id.encode(), value=e.to_bytes())
            prod.poll(0)

        waiting = list(world.population)
        rng.shuffle(waiting)
        in_flight = 0
        started = time.monotonic()
        last_seen = time.monotonic()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("simulated lists", total=lists)
            while result.lists < lists:
                while in_flight < (concurrency or users) and waiting:
                    user = waiting.pop()
                    send(
                        [
                            _event(
                                user,
                                world.liked_item(user, rng),
                                "view",
                                clock[user.user_id],
                                None,
                                seq[user.user_id],
                            )
                        ]
                    )
                    seq[user.user_id] += 1
                    in_flight += 1
                prod.flush(5)
                procs.check()
                batch = follower.poll(1000, 0.2)
                if batch:
                    last_seen = time.monotonic()
                elif time.monotonic() - last_seen > 120 or time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"no lists for 120 s; logs in {workdir}")
                for m in batch:
                    rec = json.loads(m.value())
                    user = by_id.get(rec["user_id"])
                    if user is None:
                        continue
                    clock[user.user_id] += 60.0
                    event, reward = world.respond(
                        user, rec, clock[user.user_id], rng, seq[user.user_id]
                    )
                    seq[user.user_id] += 1
                    variant = rec["experiment"]["variant"]
                    segment, arm = rec["policy"]["segment"], rec["policy"]["arm"]
                    result.lists += 1
                    result.reward[variant].append(reward)
                    if variant == "bandit":
                        result.bandit_segments.append(segment)
                        result.bandit_arms[segment][arm] += 1
                        result.bandit_truth[(segment, arm)].append(reward)
                    else:
                        result.by_segment_arm[(segment, arm)].append(reward)
                    bar.update(task, advance=1)
                    if result.lists >= lists:
                        break
                    send([event])
        result.seconds = time.monotonic() - started
        follower.close()
        result.learned = _latest_bandit_stats(broker.bootstrap, topics.bandit_weights)
    return result


def _latest_bandit_stats(brokers: str, topic: str) -> dict[str, dict]:
    """The bandit's own view at the end: per key, per arm pulls and mean reward."""
    follower = TopicFollower(brokers, [topic])
    latest: dict[str, BanditState] = {}
    try:
        while batch := follower.poll(1000, 1.0):
            for m in batch:
                state = parse(BanditState, m.value())
                if isinstance(state, BanditState) and (
                    state.key not in latest or state.updates >= latest[state.key].updates
                ):
                    latest[state.key] = state
    finally:
        follower.close()
    return {
        key: {
            arm: {"pulls": st.pulls, "mean": round(st.mean_reward, 4)}
            for arm, st in state.stats.items()
        }
        for key, state in latest.items()
    }
