"""Thompson sampling per arm with river's ``ThompsonSampling`` and Beta posteriors."""

from __future__ import annotations

import random

import numpy as np
from river import bandit, proba

from streams.bandit.base import DiversityPolicy

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
