"""The worker's view of the bandits: the latest policy per key, and arm picks.

The dataflow publishes each bandit key's policy state on the compacted
``bandit-weights`` topic (:class:`streams.contracts.BanditState`); the worker
keeps the newest per key (``apply``) and asks it for an arm per request
(``pick``). Both key by :func:`streams.bandit.bandit_key`. Before any state arrives for
a key, a fresh policy with the configured arms and exploration is used.
"""

from __future__ import annotations

import logging
import random
import threading

import numpy as np

from streams.bandit import bandit_key, new_policy, policy_from_state
from streams.bandit.base import DiversityPolicy
from streams.contracts import BanditState
from streams.experiments import PolicyConfig

__all__ = ["PolicyBook"]

log = logging.getLogger(__name__)


class PolicyBook:
    """Thread-safe map bandit key -> latest policy."""

    def __init__(self, cfg: PolicyConfig, seed: int | None = None) -> None:
        self.cfg = cfg
        self._policies: dict[str, DiversityPolicy] = {}
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def key(self, segment: str) -> str:
        """The bandit key of a user in ``segment`` (:func:`streams.bandit.bandit_key`)."""
        return bandit_key(self.cfg.bandit.policy, segment)

    def apply(self, state: BanditState) -> bool:
        """Take a published state if it is newer than the one held. Returns True if
        taken; ValueError when it does not fit the experiments file's arms."""
        key, updates = state.key, state.updates
        arms = [a.name for a in self.cfg.arms]
        with self._lock:
            if updates < self._versions.get(key, -1):
                return False
            policy = policy_from_state(state)
            # A policy over other arms (another experiments file, or a crafted
            # record) would pick arms this worker does not serve.
            if sorted(policy.arms) != sorted(arms):
                raise ValueError(
                    f"bandit state for {key!r}: its {len(policy.arms)} arms are not the "
                    f"{len(arms)} arms of the experiments file"
                )
            policy.reseed(self._rng.randrange(2**32))
            self._policies[key] = policy
            self._versions[key] = updates
        return True

    def pick(self, segment: str, context: list[float] | None) -> str:
        """An arm name for one list of a user in ``segment`` with ``context``."""
        key = self.key(segment)
        arms = [a.name for a in self.cfg.arms]
        with self._lock:
            policy = self._policies.get(key)
            if policy is None:
                policy = new_policy(self.cfg.bandit, arms)
                self._policies[key] = policy
            x = None if context is None else np.asarray(context, dtype=np.float64)
            try:
                return policy.pull(x, self._rng)
            except (ValueError, IndexError, np.linalg.LinAlgError) as exc:
                # A state that passed validation but does not fit this request (a
                # context of another length): start the key afresh, never fail a list.
                log.warning("bandit key %r: %s; starting it afresh", key, exc)
                policy = new_policy(self.cfg.bandit, arms)
                self._policies[key] = policy
                return policy.pull(x, self._rng)
