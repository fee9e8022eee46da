"""The base of every diversity bandit: exploration floor, counts, plain-data state.

A policy travels on ``bandit-weights`` as its sufficient statistics (counts,
sums, Beta parameters, LinUCB's inverse and b), never as code: nothing read
from a topic is unpickled. The record is :class:`streams.contracts.BanditState`
(:meth:`DiversityPolicy.state_record`), which admits only known policies and
plain numbers; :func:`policy_from_state` rebuilds a policy from one and
refuses statistics that do not fit it with a ValueError.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from streams.contracts import BanditState

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
    #: A contextual policy learns one model for every segment (the context carries
    #: the segment): its state lives under one key (``streams.bandit.bandit_key``).
    contextual = False

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

    def state_record(self, key: str, updated_ts: float) -> BanditState:
        """The ``bandit-weights`` record of this state under bandit ``key``."""
        return BanditState.model_validate({"key": key, "updated_ts": updated_ts, **self.to_state()})

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


def policy_from_state(state: BanditState) -> DiversityPolicy:
    """Rebuild a policy from its ``bandit-weights`` record (:meth:`DiversityPolicy.state_record`).

    The record's model already admits only known policies and plain finite
    numbers; statistics that do not fit the policy (an arm it does not have,
    a matrix of the wrong shape, a Beta parameter that is not positive) raise
    ValueError (the worker logs the record and skips it).
    """
    from streams.bandit import POLICIES

    policy = POLICIES[state.policy](
        list(state.arms), min(1.0, max(0.0, state.min_exploration)), state.seed
    )
    for arm in state.arms:
        policy.pulls[arm] = state.stats[arm].pulls
        policy.reward_sum[arm] = state.stats[arm].reward_sum
    policy.updates = state.updates
    policy._load(state.params.model_dump())
    return policy
