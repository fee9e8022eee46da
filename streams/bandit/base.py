"""The base of every diversity bandit: exploration floor, counts, JSON state."""

from __future__ import annotations

import base64
import pickle
import random
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["DiversityPolicy", "policy_from_state"]


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
        """JSON-ready state: readable stats plus the policy itself (pickled, base64).

        The pickle is only exchanged between streamrec's own processes on the
        internal ``bandit-weights`` topic; the readable part is for people and
        dashboards.
        """
        return {
            "policy": self.name,
            "arms": self.arms,
            "updates": self.updates,
            "stats": {
                a: {
                    "pulls": self.pulls[a],
                    "reward_sum": round(self.reward_sum[a], 9),
                    "mean_reward": round(self.mean_reward(a), 9),
                }
                for a in self.arms
            },
            "blob": base64.b64encode(pickle.dumps(self)).decode("ascii"),
        }


def policy_from_state(state: dict[str, Any]) -> DiversityPolicy:
    """Rebuild a policy published with :meth:`DiversityPolicy.to_state`."""
    policy = pickle.loads(base64.b64decode(state["blob"]))
    if not isinstance(policy, DiversityPolicy):
        raise TypeError(f"bandit state holds a {type(policy).__name__}, not a policy")
    return policy
