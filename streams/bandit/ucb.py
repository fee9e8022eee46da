"""UCB per arm with river's ``UCB``."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from river import bandit

from streams.bandit.base import DiversityPolicy, _number, load_river_counts, river_counts

__all__ = ["UCB"]


class UCB(DiversityPolicy):
    """Upper confidence bound (river): mean + delta * sqrt(2 ln n / n_arm).

    Deterministic between updates: many lists picked before the next weight
    update all get the same arm, so keep ``min_exploration`` above zero.

    >>> p = UCB(["a", "b"], min_exploration=0.0, delta=0.5)
    >>> for _ in range(50):
    ...     p.update("a", 0.8); p.update("b", 0.2)
    >>> p.pull(rng=random.Random(0))
    'a'
    """

    name = "ucb"

    def __init__(
        self, arms: list[str], min_exploration: float = 0.05, seed: int = 0, delta: float = 0.5
    ) -> None:
        super().__init__(arms, min_exploration, seed)
        # burn_in=1: every arm is tried once before the bound is trusted.
        self._policy = bandit.UCB(delta=delta, burn_in=1, seed=seed)

    def _pull(self, context: np.ndarray | None, rng: random.Random) -> str:
        return self._policy.pull(self.arms)

    def _update(self, arm: str, reward: float, context: np.ndarray | None) -> None:
        self._policy.update(arm, reward)

    def _params(self) -> dict[str, Any]:
        """Each arm's running mean (weight, mean), river's step and pull counts, delta."""
        rewards = self._policy._rewards
        return {
            "mean": {a: [rewards[a].n, rewards[a]._mean] for a in self.arms if a in rewards},
            **river_counts(self._policy, self.arms),
            "delta": self._policy.delta,
        }

    def _load(self, params: dict[str, Any]) -> None:
        self._policy.delta = _number(params["delta"], "delta")
        for arm, (n, mean) in params["mean"].items():
            if arm not in self.pulls:
                raise ValueError(f"bandit state: unknown arm {arm!r}")
            stat = self._policy._rewards[arm]
            stat.n, stat._mean = _number(n, "n"), _number(mean, "mean")
        load_river_counts(self._policy, params, self.arms)
