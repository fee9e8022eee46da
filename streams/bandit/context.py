"""User features for the bandit: a segment name and a context vector.

Segments (per-segment Thompson/UCB) come from configurable features:

``history``    bucket of the user's event count (``history_buckets`` edges)
``entropy``    bucket of the category-mix entropy in nats (``entropy_buckets``)
``returning``  ``new`` during the first session, ``ret`` afterwards

The context vector (LinUCB) is a bias plus the one-hot buckets and the
returning flag, so a linear model can learn per-segment preferences and share
strength across them.
"""

from __future__ import annotations

import bisect
import math

from streams.experiments import BanditConfig
from streams.state import UserState

__all__ = ["segment_of", "context_vector", "category_entropy", "buckets", "Buckets"]


def category_entropy(state: UserState) -> float:
    """Shannon entropy (nats) of the user's decayed category mix; 0 when empty.

    One pass: ``H = log T - sum(w log w) / T`` with ``T`` the total weight.
    """
    weights = [w for w in state.categories.values() if w > 0]
    total = sum(weights)
    if total <= 0:
        return 0.0
    return max(0.0, math.log(total) - sum(w * math.log(w) for w in weights) / total)


Buckets = tuple[int, int, int]


def buckets(state: UserState, cfg: BanditConfig) -> Buckets:
    """(history bucket, entropy bucket, returning): what segments and contexts read;
    compute it once per request and hand it to both."""
    h = bisect.bisect_right(cfg.history_buckets, state.events)
    e = bisect.bisect_right(cfg.entropy_buckets, category_entropy(state))
    return h, e, int(state.sessions > 1)


def segment_of(state: UserState, cfg: BanditConfig, found: Buckets | None = None) -> str:
    """The segment name, e.g. ``h1-e0-ret`` (only the configured features)."""
    h, e, returning = found if found is not None else buckets(state, cfg)
    parts = {"history": f"h{h}", "entropy": f"e{e}", "returning": "ret" if returning else "new"}
    return "-".join(parts[f] for f in cfg.segment_features) or "all"


def context_vector(
    state: UserState, cfg: BanditConfig, found: Buckets | None = None
) -> list[float]:
    """[1, one-hot history bucket, one-hot entropy bucket, returning]."""
    h, e, returning = found if found is not None else buckets(state, cfg)
    # A plain list: a dozen floats, built per rank request, cost more as an array.
    x = [0.0] * (1 + len(cfg.history_buckets) + 1 + len(cfg.entropy_buckets) + 1 + 1)
    x[0] = 1.0
    x[1 + h] = 1.0
    x[2 + len(cfg.history_buckets) + e] = 1.0
    x[-1] = float(returning)
    return x
