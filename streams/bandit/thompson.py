"""Thompson sampling per arm with river's ``ThompsonSampling`` and Beta posteriors."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from river import bandit, proba

from streams.bandit.base import DiversityPolicy, _number, load_river_counts, river_counts

__all__ = ["Thompson"]


class Thompson(DiversityPolicy):
    """Beta-Bernoulli Thompson sampling (river), for rewards in [0, 1].

    River's Beta counts a reward as a success or a failure. A fractional
    reward r becomes a Bernoulli(r) trial (Agrawal and Goyal, 2012), which
    keeps the posterior exact in expectation.

    >>> p = Thompson(["a", "b"], min_exploration=0.0, seed=1)
    >>> for _ in range(200):
    ...     p.update("a", 0.9); p.update("b", 0.1)
    >>> rng = random.Random(0)
    >>> sum(p.pull(rng=rng) == "a" for _ in range(100)) > 95
    True
    """

    name = "thompson"

    def __init__(self, arms: list[str], min_exploration: float = 0.05, seed: int = 0) -> None:
        super().__init__(arms, min_exploration, seed)
        self._policy = bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=seed)
        self._trials = random.Random(seed)

    def reseed(self, seed: int) -> None:
        draws = random.Random(seed)
        for dist in self._policy._rewards.values():  # river keeps one Beta per arm
            dist._rng = random.Random(draws.randrange(2**32))

    def _pull(self, context: np.ndarray | None, rng: random.Random) -> str:
        return self._policy.pull(self.arms)

    def _update(self, arm: str, reward: float, context: np.ndarray | None) -> None:
        self._policy.update(arm, self._trials.random() < reward)

    def _params(self) -> dict[str, Any]:
        """Each arm's Beta posterior (alpha, beta), river's step and pull counts."""
        rewards = self._policy._rewards
        return {
            "beta": {a: [rewards[a].alpha, rewards[a].beta] for a in self.arms if a in rewards},
            **river_counts(self._policy, self.arms),
        }

    def _load(self, params: dict[str, Any]) -> None:
        for arm, (alpha, beta) in params["beta"].items():
            if arm not in self.pulls:
                raise ValueError(f"bandit state: unknown arm {arm!r}")
            dist = self._policy._rewards[arm]  # river makes it with its own seed
            dist.alpha, dist.beta = _number(alpha, "alpha"), _number(beta, "beta")
            if dist.alpha <= 0 or dist.beta <= 0:
                raise ValueError("bandit state: Beta parameters must be positive")
        load_river_counts(self._policy, params, self.arms)
