"""The simulated storefront through the real topics (a short run; the 50k-list
run's figures are in docs/SIMULATION.md)."""

from __future__ import annotations

import math

import pytest

from evaluation.simulator import World, run_simulation, simulation_config
from streams.experiments import PolicyConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_response_model_rewards_variety_only_for_explorers():
    world = World(users=40, seed=3)
    focused = next(u for u in world.population if u.kind == "focused")
    explorer = next(u for u in world.population if u.kind == "explorer")
    fav = int(focused.taste.argmax())
    same = [world.item_ids[fav * world.items_per_category + i] for i in range(10)]
    spread = [world.item_ids[c * world.items_per_category] for c in range(8)] + same[:2]
    assert world.click_probability(focused, same) > world.click_probability(focused, spread)
    assert world.click_probability(explorer, spread) > world.click_probability(explorer, same)
    PolicyConfig.model_validate(simulation_config())  # the config the run uses is valid


def test_short_simulation_learns_what_users_reward(tmp_path):
    result = run_simulation(lists=4000, users=400, workdir=tmp_path, seed=11)
    s = result.summary()
    assert s["lists"] == 4000 and s["bandit_lists"] > 1500
    # Attribution end to end: the reward the dataflow credited per (segment,
    # arm) agrees with what the simulated users did with the bandit's lists
    # (lists still open at the end are not closed yet, hence the tolerance).
    checked = 0
    for segment, arms in s["bandit_learned"].items():
        for arm, st in arms.items():
            truth = result.bandit_truth[(segment, arm)]
            if st["pulls"] >= 100:
                assert st["pulls"] <= len(truth)
                assert st["mean"] == pytest.approx(sum(truth) / len(truth), abs=0.06)
                checked += 1
    assert checked >= 2
    # The bandit does at least as well as choosing arms at random (the fixed arms'
    # average), within sampling noise: at 4,000 lists each mean reward has a
    # standard error of about 0.011 and the edge the bandit can build in so short
    # a run is of that order, so a strict "above" failed now and then on a
    # reward 0.002 below (thread timing changes which lists close first).
    fixed = s["fixed_mean_reward"]
    average = sum(fixed.values()) / len(fixed)
    p, n_bandit = average, s["bandit_lists"]
    se = math.sqrt(p * (1 - p) / n_bandit + p * (1 - p) / (s["lists"] - n_bandit))
    assert s["bandit_mean_reward"] > average - 2 * se
