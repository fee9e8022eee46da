"""UCB per arm with river's ``UCB``."""

from __future__ import annotations

import random

import numpy as np
from river import bandit

from streams.bandit.base import DiversityPolicy

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
