"""How much the dataflow's two single-key steps can take, on one core.

The online fusion learner (``fusion``) and LinUCB (``bandit`` with the
``linucb`` policy) keep their state under one ``global`` key, so one Bytewax
worker runs each for the whole cluster. This times both steps in-process on
synthetic inputs of the real shapes, to compare with the rate lists close at
(at most the list rate, which one dataflow process keeps at a few thousand a
second): ``python benchmarks/global_keys.py``.
"""

from __future__ import annotations

import os
import random
import time

from streams.attribution import ListReward
from streams.bandit import context_vector
from streams.contracts import FusionWeights
from streams.dataflow import BanditStep
from streams.experiments import PolicyConfig
from streams.fusion_learner import FusionStep
from streams.state import UserState

FEATURES = ["lm", "seq", "covis", "repeat_count", "trend_short", "trend_long", "popularity"]


def main() -> None:
    rng = random.Random(0)
    examples = [
        ({f: rng.random() for f in FEATURES}, int(rng.random() < 0.1)) for _ in range(50_000)
    ]
    step = FusionStep(FusionWeights(bias=0.0, weights=dict.fromkeys(FEATURES, 0.1)), 50, 0.01)
    model, started = None, time.perf_counter()
    for example in examples:
        model, _ = step(model, example)
    fusion = len(examples) / (time.perf_counter() - started)

    cfg = PolicyConfig.model_validate({"bandit": {"policy": "linucb"}})
    bandit, arms = BanditStep(cfg), [a.name for a in cfg.arms]
    x = list(context_vector(UserState(events=4), cfg.bandit))
    rewards = [
        ListReward(f"r{i}", rng.choice(arms), "global", "bandit", float(rng.random() < 0.2), x)
        for i in range(10_000)
    ]
    state, started = None, time.perf_counter()
    for reward in rewards:
        state, _ = bandit(state, reward)
    linucb = len(rewards) / (time.perf_counter() - started)

    print(f"fusion learner: {fusion:,.0f} examples/s (one SGD step each)")
    print(f"LinUCB:         {linucb:,.0f} closed lists/s (one update and its published state each)")
    print(f"load average:   {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
