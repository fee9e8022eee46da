"""The base of every diversity bandit: exploration floor, counts, plain-data state.

A policy travels on ``bandit-weights`` as its sufficient statistics (counts,
sums, Beta parameters, LinUCB's inverse and b), never as code: nothing read
from a topic is unpickled. :func:`policy_from_state` rebuilds a policy of a
known class from them and refuses anything else with a ValueError.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["DiversityPolicy", "policy_from_state", "river_counts", "load_river_counts", "_number"]


class DiversityPolicy(ABC):
    """Chooses one of ``arms`` per list and learns from each list's reward in [0, 1].

    ``pull`` explores uniformly with probability ``min_exploration`` (the
    configurable floor) and otherwise asks the subclass's ``_pull``;
    ``update`` keeps per-arm counts and reward sums (for metrics and reports)
    and calls ``_update``. ``context`` is the user's feature vector (only the
    contextual policies read it).
    """

    name = "base"

    def __init__(self, arms: list[str], min_exploration: float = 0.05, seed: int = 0) -> None:
        if not arms:
            raise ValueError("a bandit needs at least one arm")
        if not 0.0 <= min_exploration <= 1.0:
            raise ValueError(f"min_exploration must be in [0, 1], got {min_exploration}")
        self.arms = list(arms)
        self.min_exploration = min_exploration
        self.seed = seed
        self.pulls = {a: 0 for a in self.arms}
        self.reward_sum = {a: 0.0 for a in self.arms}
        self.updates = 0

    def pull(self, context: np.ndarray | None = None, rng: random.Random | None = None) -> str:
        """The arm for the next list."""
        rng = rng or random.Random()
        if rng.random() < self.min_exploration:
            return rng.choice(self.arms)
        return self._pull(context, rng)

    def update(self, arm: str, reward: float, context: np.ndarray | None = None) -> None:
        """Credit ``reward`` (clipped to [0, 1]) to ``arm``."""
        if arm not in self.pulls:
            raise KeyError(f"unknown arm {arm!r}; known: {self.arms}")
        reward = min(1.0, max(0.0, float(reward)))
        self.pulls[arm] += 1
        self.reward_sum[arm] += reward
        self.updates += 1
        self._update(arm, reward, context)

    def reseed(self, seed: int) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Give a reloaded copy its own randomness (no-op for deterministic policies).

        A policy reloaded from ``bandit-weights`` carries the RNG state it was
        published with; without reseeding, every reload would replay the same
        draws.
        """

    def mean_reward(self, arm: str) -> float:
        return self.reward_sum[arm] / self.pulls[arm] if self.pulls[arm] else 0.0

    @abstractmethod
    def _pull(self, context: np.ndarray | None, rng: random.Random) -> str: ...

    @abstractmethod
    def _update(self, arm: str, reward: float, context: np.ndarray | None) -> None: ...

    def to_state(self) -> dict[str, Any]:
        """JSON-ready state: readable stats for people and dashboards, and ``params``,
        the policy's own sufficient statistics (plain numbers, see :meth:`_params`)."""
        return {
            "policy": self.name,
            "arms": self.arms,
            "updates": self.updates,
            "min_exploration": self.min_exploration,
            "seed": self.seed,
            "stats": {
                a: {
                    "pulls": self.pulls[a],
                    "reward_sum": self.reward_sum[a],
                    "mean_reward": round(self.mean_reward(a), 9),
                }
                for a in self.arms
            },
            "params": self._params(),
        }

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """The policy's learned statistics as JSON-ready numbers."""

    @abstractmethod
    def _load(self, params: dict[str, Any]) -> None:
        """Take :meth:`_params` back; ValueError, KeyError or TypeError when malformed."""


def _number(value: Any, name: str) -> float:
    """A finite number from a record, or a ValueError that names it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"bandit state: {name} must be a finite number, got {value!r}")
    return float(value)


def river_counts(policy: Any, arms: list[str]) -> dict[str, Any]:
    """A river bandit's step count and pulls per arm (``n``, ``counts``), as numbers."""
    return {
        "n": policy._n,
        "counts": {a: int(c) for a, c in policy._counts.items() if a in arms},
    }


def load_river_counts(policy: Any, params: dict[str, Any], arms: list[str]) -> None:
    """Take :func:`river_counts` back into a river bandit; ValueError when malformed."""
    policy._n = int(_number(params["n"], "n"))
    for arm, count in params["counts"].items():
        if arm not in arms:
            raise ValueError(f"bandit state: unknown arm {arm!r}")
        policy._counts[arm] = int(_number(count, "count"))


def policy_from_state(state: dict[str, Any]) -> DiversityPolicy:
    """Rebuild a policy published with :meth:`DiversityPolicy.to_state`.

    Only the known policy classes, only numbers: a record that does not fit
    raises ValueError (the worker logs it and skips it).
    """
    from streams.bandit import POLICIES

    if not isinstance(state, dict):
        raise ValueError("bandit state is not a JSON object")
    name, arms = state.get("policy"), state.get("arms")
    if name not in POLICIES:
        raise ValueError(f"bandit state: unknown policy {name!r}")
    if not isinstance(arms, list) or not arms or not all(isinstance(a, str) for a in arms):
        raise ValueError("bandit state: arms must be a non-empty list of names")
    stats = state.get("stats")
    if not isinstance(stats, dict) or set(stats) != set(arms):
        raise ValueError("bandit state: stats must hold every arm")
    seed = state.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("bandit state: seed must be an integer")
    policy = POLICIES[name](
        arms, min(1.0, max(0.0, _number(state["min_exploration"], "min_exploration"))), seed
    )
    for arm in arms:
        policy.pulls[arm] = int(_number(stats[arm]["pulls"], "pulls"))
        policy.reward_sum[arm] = _number(stats[arm]["reward_sum"], "reward_sum")
    policy.updates = int(_number(state.get("updates", 0), "updates"))
    params = state.get("params")
    if not isinstance(params, dict):
        raise ValueError("bandit state: params must be an object")
    policy._load(params)
    return policy
