"""The experiments file: validation messages, and deterministic, balanced assignment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from scipy.stats import chisquare

from streams.experiments import (
    Arm,
    ConfigError,
    PolicyConfig,
    assign,
    load_config,
)

USERS = [f"u{i}" for i in range(100_000)]


def _experiment(name: str = "div", salt: str = "s1", traffic: float = 1.0, **weights: float):
    weights = weights or {"control": 0.5, "treatment": 0.5}
    return {
        "name": name,
        "salt": salt,
        "traffic": traffic,
        "variants": [{"name": v, "weight": w} for v, w in weights.items()],
    }


def _config(*experiments: dict, **extra: object) -> PolicyConfig:
    return PolicyConfig.model_validate({"experiments": list(experiments), **extra})


def _variants(cfg: PolicyConfig, users: list[str]) -> list[str | None]:
    """Each user's ``experiment/variant``, or None outside every experiment."""
    out = []
    for user in users:
        got = assign(cfg, user)
        out.append(None if got is None else f"{got[0].name}/{got[1].name}")
    return out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(text)
    return path


# (raw config, fragment the error message must contain)
INVALID = {
    "unknown top-level key": ({"colour": "red"}, "colour"),
    "unknown variant key": (
        {"experiments": [{**_experiment(), "variants": [{"name": "a", "weight": 1.0, "x": 1}]}]},
        "variants.0.x",
    ),
    "weights do not sum to 1": (
        {"experiments": [_experiment(a=0.5, b=0.4)]},
        "variant weights sum to 0.9, not 1",
    ),
    "zero weight": ({"experiments": [_experiment(a=1.0, b=0.0)]}, "weight"),
    "negative weight": ({"experiments": [_experiment(a=1.2, b=-0.2)]}, "weight"),
    "duplicate variant names": (
        {
            "experiments": [
                {
                    **_experiment(),
                    "variants": [{"name": "a", "weight": 0.5}, {"name": "a", "weight": 0.5}],
                }
            ]
        },
        "duplicate variant names",
    ),
    "traffic overlap": (
        {"experiments": [_experiment("e1", traffic=0.6), _experiment("e2", traffic=0.5)]},
        "would overlap",
    ),
    "unknown reranker in an arm": (
        {"arms": [{"reranker": "shuffle", "lambda": 0.5}]},
        "unknown reranker 'shuffle'",
    ),
    "unknown reranker in a variant": (
        {
            "experiments": [
                {**_experiment(), "variants": [{"name": "a", "weight": 1.0, "reranker": "nope"}]}
            ]
        },
        "unknown reranker 'nope'",
    ),
    "bandit variant with lambda": (
        {
            "experiments": [
                {
                    **_experiment(),
                    "variants": [{"name": "b", "weight": 1.0, "policy": "bandit", "lambda": 0.5}],
                }
            ]
        },
        "picks its own arm",
    ),
    "duplicate experiment names": (
        {"experiments": [_experiment("e1", traffic=0.5), _experiment("e1", traffic=0.5)]},
        "duplicate experiment names",
    ),
}


@pytest.mark.parametrize(("raw", "fragment"), INVALID.values(), ids=INVALID.keys())
def test_invalid_model_raises_validation_error(raw: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        PolicyConfig.model_validate(raw)


@pytest.mark.parametrize(("raw", "fragment"), INVALID.values(), ids=INVALID.keys())
def test_invalid_file_raises_config_error(tmp_path: Path, raw: dict, fragment: str) -> None:
    path = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "text", ["experiments: [1, 2", "arms:\n  - reranker: mmr\n lambda: 0.5\n", "\tkey: 1"]
)
def test_unparsable_yaml_raises_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read experiments file"):
        load_config(_write(tmp_path, text))


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read experiments file"):
        load_config(tmp_path / "absent.yaml")


def test_yaml_that_is_not_a_mapping_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid experiments file"):
        load_config(_write(tmp_path, "- just\n- a list\n"))


VALID = """\
layer_salt: layer-1
default_arm: {reranker: mmr, lambda: 0.8}
default_mode: bandit
arms:
  - {reranker: mmr, lambda: 1.0}
  - {reranker: dpp, lambda: 0.5}
bandit:
  policy: ucb
  min_exploration: 0.1
  segment_features: [history, returning]
attribution:
  window_s: 600
  max_open_lists: 3
experiments:
  - name: diversity
    salt: div-1
    traffic: 0.4
    variants:
      - {name: control, weight: 0.5, reranker: mmr, lambda: 0.7}
      - {name: bandit, weight: 0.5, policy: bandit}
  - name: retrieval
    salt: ret-1
    traffic: 0.6
    variants:
      - {name: small, weight: 0.3, candidates: 50}
      - {name: large, weight: 0.7, candidates: 200}
"""


def test_valid_file_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, VALID))
    assert cfg.layer_salt == "layer-1"
    assert cfg.default_arm == Arm(reranker="mmr", trade_off=0.8)
    assert cfg.default_mode == "bandit"
    assert [a.name for a in cfg.arms] == ["mmr:1", "dpp:0.5"]
    assert cfg.arm("dpp:0.5") == Arm(reranker="dpp", trade_off=0.5)
    assert cfg.bandit.policy == "ucb"
    assert cfg.bandit.min_exploration == 0.1
    assert cfg.bandit.segment_features == ["history", "returning"]
    assert cfg.attribution.window_s == 600
    assert cfg.attribution.max_open_lists == 3
    diversity, retrieval = cfg.experiments
    assert (diversity.name, diversity.salt, diversity.traffic) == ("diversity", "div-1", 0.4)
    control, bandit = diversity.variants
    assert control.arm(cfg.default_arm) == Arm(reranker="mmr", trade_off=0.7)
    assert bandit.policy == "bandit"
    assert [v.candidates for v in retrieval.variants] == [50, 200]


def test_empty_file_and_none_give_defaults(tmp_path: Path) -> None:
    default = load_config(None)
    assert default == PolicyConfig()
    assert default.experiments == []
    assert default.default_mode == "fixed"
    assert [a.name for a in default.arms] == ["mmr:1", "mmr:0.7", "mmr:0.4", "dpp:0.6"]
    assert assign(default, "u1") is None
    assert load_config(_write(tmp_path, "")) == default


def test_assignment_is_deterministic_across_calls_and_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    first, second = load_config(path), load_config(path)
    users = USERS[:2000]
    once = _variants(first, users)
    assert once == _variants(first, users)
    assert once == _variants(second, users)


def test_assignment_of_a_user_does_not_depend_on_other_users() -> None:
    cfg = _config(_experiment(a=0.2, b=0.3, c=0.5))
    users = USERS[:2000]
    forward = dict(zip(users, _variants(cfg, users), strict=True))
    backward = dict(zip(reversed(users), _variants(cfg, list(reversed(users))), strict=True))
    alone = {u: _variants(cfg, [u])[0] for u in users[:50]}
    assert forward == backward
    assert alone == {u: forward[u] for u in users[:50]}


@pytest.mark.parametrize("traffic", [0.1, 0.3, 0.75])
def test_assignment_respects_traffic(traffic: float) -> None:
    cfg = _config(_experiment(traffic=traffic))
    got = _variants(cfg, USERS[:20_000])
    share = sum(v is not None for v in got) / len(got)
    assert share == pytest.approx(traffic, abs=0.015)


@pytest.mark.parametrize(
    "weights", [{"a": 0.5, "b": 0.5}, {"a": 0.2, "b": 0.3, "c": 0.5}], ids=["50-50", "20-30-50"]
)
def test_assignment_is_balanced(weights: dict[str, float]) -> None:
    cfg = _config(_experiment(**weights))
    counts = Counter(_variants(cfg, USERS))
    observed = [counts[f"div/{v}"] for v in weights]
    expected = [w * len(USERS) for w in weights.values()]
    assert sum(observed) == len(USERS)
    assert chisquare(observed, expected).pvalue > 0.001


def test_experiments_in_one_layer_never_share_a_user() -> None:
    first = _experiment("e1", salt="s1", traffic=0.3)
    both = _config(first, _experiment("e2", salt="s2", traffic=0.5))
    users = USERS[:20_000]
    got = _variants(both, users)
    in_e1 = {u for u, v in zip(users, got, strict=True) if v and v.startswith("e1/")}
    in_e2 = {u for u, v in zip(users, got, strict=True) if v and v.startswith("e2/")}
    outside = {u for u, v in zip(users, got, strict=True) if v is None}
    assert not in_e1 & in_e2
    assert len(in_e1) + len(in_e2) + len(outside) == len(users)
    assert len(in_e1) / len(users) == pytest.approx(0.3, abs=0.015)
    assert len(in_e2) / len(users) == pytest.approx(0.5, abs=0.015)
    # Appending an experiment takes free traffic only: e1's users keep their variants.
    alone = _variants(_config(first), users)
    assert [v for v in alone if v] == [v for v in got if v and v.startswith("e1/")]


def test_a_new_salt_reshuffles_users() -> None:
    users = USERS[:20_000]
    before = _variants(_config(_experiment(salt="s1")), users)
    after = _variants(_config(_experiment(salt="s2")), users)
    agreement = sum(a == b for a, b in zip(before, after, strict=True)) / len(users)
    assert agreement == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    "arm",
    [
        Arm(),
        Arm(reranker="mmr", trade_off=1.0),
        Arm(reranker="mmr", trade_off=0.0),
        Arm(reranker="dpp", trade_off=0.25),
        Arm(reranker="category_cap", trade_off=0.1234567),
        Arm(reranker="calibrated", trade_off=1 / 3),
    ],
    ids=lambda a: a.name,
)
def test_arm_name_round_trips(arm: Arm) -> None:
    assert Arm.from_name(arm.name) == arm


def test_arm_from_a_bad_name_raises() -> None:
    with pytest.raises(ValueError, match="not reranker:trade_off"):
        Arm.from_name("mmr")
    with pytest.raises(ValueError, match="unknown reranker"):
        Arm.from_name("shuffle:0.5")


def test_metric_labels_come_from_the_config_and_the_rest_is_other() -> None:
    from streams.experiments import OTHER, PolicyConfig

    labels = PolicyConfig().metric_labels(extra_arms=["dpp:0.3"])
    # 3 history x 3 entropy x 2 returning buckets, plus "all" and LinUCB's "global".
    assert len(labels.segments) == 3 * 3 * 2 + 2 and labels.segment("h2-e1-ret") == "h2-e1-ret"
    assert labels.segment("h9-crafted") == OTHER and labels.segment(None) == OTHER
    assert labels.arm("dpp:0.3") == "dpp:0.3" and labels.arm("mmr:0.7000001") == OTHER
    assert labels.variant("none", "default") == ("none", "default")
    assert labels.variant("made-up", "x") == (OTHER, OTHER)


@pytest.mark.parametrize("arm", ["bogus:zz", "mmr:5", "nope:0.5", "mmr"])
def test_a_request_naming_an_arm_no_config_has_gets_the_default_arm(arm: str) -> None:
    from model.ranker import Ranker
    from model.rerank import MMR
    from streams.contracts import AssignedPolicy, RankRequest

    ranker = Ranker(None, MMR(), None, 0.7, "test")  # type: ignore[arg-type]
    request = RankRequest(
        request_id="r", user_id="u", k=3, arrival_ts=0.0, created_ts=0.0,
        policy=AssignedPolicy(mode="fixed", arm=arm, segment="all"),
    )  # fmt: skip
    assert ranker.choose(request).arm == "mmr:0.7"
