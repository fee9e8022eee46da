"""Online bandits that choose the diversity arm (reranker, trade-off) per list.

One file per policy (``thompson``, ``ucb``, ``linucb``) over a small base
class (``base.DiversityPolicy``) that owns the public ``pull``/``update``,
the minimum exploration rate and the JSON state that travels on the
``bandit-weights`` topic. ``context`` turns a user's state into the segment
name and the feature vector the policies see.
"""

from __future__ import annotations

from streams.bandit.base import DiversityPolicy, policy_from_state
from streams.bandit.context import context_vector, segment_of
from streams.bandit.linucb import LinUCB
from streams.bandit.thompson import Thompson
from streams.bandit.ucb import UCB
from streams.contracts import GLOBAL_KEY
from streams.experiments import BanditConfig

__all__ = [
    "DiversityPolicy",
    "Thompson",
    "UCB",
    "LinUCB",
    "POLICIES",
    "bandit_key",
    "make_policy",
    "new_policy",
    "policy_from_state",
    "segment_of",
    "context_vector",
]

POLICIES: dict[str, type[DiversityPolicy]] = {"thompson": Thompson, "ucb": UCB, "linucb": LinUCB}


def bandit_key(policy: str, segment: str) -> str:
    """The key a bandit ``policy`` (a name of :data:`POLICIES`) learns and publishes
    its state under for a user of ``segment``: the segment itself, or ``global``
    for a contextual policy (LinUCB), whose context carries the segment. The
    dataflow's ``bandit`` step and the worker's policy book both key by it.

    >>> bandit_key("thompson", "h1-e0-new"), bandit_key("linucb", "h1-e0-new")
    ('h1-e0-new', 'global')
    """
    return GLOBAL_KEY if POLICIES[policy].contextual else segment


def new_policy(cfg: BanditConfig, arms: list[str]) -> DiversityPolicy:
    """A fresh policy as the config says (policy name, exploration, seed, its knob)."""
    params: dict[str, object] = {"min_exploration": cfg.min_exploration, "seed": cfg.seed}
    if cfg.policy == "ucb":
        params["delta"] = cfg.ucb_delta
    elif cfg.policy == "linucb":
        params["alpha"] = cfg.linucb_alpha
    return make_policy(cfg.policy, arms, **params)


def make_policy(name: str, arms: list[str], **params: object) -> DiversityPolicy:
    """A fresh policy by name over ``arms``."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown bandit policy {name!r}; known: {', '.join(POLICIES)}") from None
    return cls(arms, **params)
