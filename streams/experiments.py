"""Experiments, diversity arms and the bandit, declared in one YAML file.

The file (``STREAMREC_EXPERIMENTS``; ``experiments.example.yaml`` documents
every key) says which diversity arms exist, how the bandit explores them and
attributes rewards, and which A/B experiments split the traffic. Loading it
validates everything with a clear message: unknown keys, weights that do not
sum to 1, experiments whose traffic shares overlap, unknown rerankers.

Assignment is a pure function of (salt, user_id): a user stays in one
variant across restarts, processes and machines.

>>> cfg = PolicyConfig.model_validate({"experiments": [{"name": "div", "salt": "s1",
...     "variants": [{"name": "control", "weight": 0.5, "reranker": "mmr", "lambda": 0.7},
...                  {"name": "bandit", "weight": 0.5, "policy": "bandit"}]}]})
>>> assign(cfg, "u42") == assign(cfg, "u42")
True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The experiment stamp of a user outside every experiment's traffic (a contract).
from streams.contracts import NO_EXPERIMENT

__all__ = [
    "MetricLabels",
    "OTHER",
    "Arm",
    "BanditConfig",
    "AttributionConfig",
    "Variant",
    "Experiment",
    "PolicyConfig",
    "ConfigError",
    "load_config",
    "assign",
    "NO_EXPERIMENT",
    "RERANKER_NAMES",
]

#: Names the worker's reranker registry knows (kept here so the dataflow,
#: which never imports the model package, can validate a config).
RERANKER_NAMES = (
    "relevance",
    "mmr",
    "dpp",
    "mmr_pinned",
    "dpp_pinned",
    "calibrated",
    "category_cap",
    "long_tail",
)


class ConfigError(ValueError):
    """The experiments file is invalid; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Arm(_Strict):
    """A diversity arm: a reranker and its trade-off (1 = relevance order)."""

    reranker: str = "mmr"
    trade_off: float = Field(0.7, ge=0.0, le=1.0, alias="lambda")

    @property
    def name(self) -> str:
        # Short ("mmr:1", "mmr:0.7") where :g is exact; repr where :g would drop digits.
        short = f"{self.trade_off:g}"
        exact = short if float(short) == self.trade_off else repr(self.trade_off)
        return f"{self.reranker}:{exact}"

    @classmethod
    def from_name(cls, name: str) -> Arm:
        """Parse ``reranker:trade_off`` (the inverse of :attr:`name`)."""
        reranker, sep, trade_off = name.rpartition(":")
        if not sep:
            raise ValueError(f"arm {name!r} is not reranker:trade_off")
        return cls(reranker=reranker, trade_off=float(trade_off))

    @model_validator(mode="after")
    def _known(self) -> Arm:
        if self.reranker not in RERANKER_NAMES:
            raise ValueError(f"unknown reranker {self.reranker!r}; known: {RERANKER_NAMES}")
        return self


class BanditConfig(_Strict):
    """How the bandit explores the arms, per segment of users."""

    policy: Literal["thompson", "ucb", "linucb"] = "thompson"
    min_exploration: float = Field(0.05, ge=0.0, le=1.0)
    segment_features: list[Literal["history", "entropy", "returning"]] = Field(
        default_factory=lambda: ["history", "entropy", "returning"]
    )
    history_buckets: list[int] = Field(default_factory=lambda: [3, 20])
    entropy_buckets: list[float] = Field(default_factory=lambda: [0.5, 1.2])
    session_gap_s: float = Field(1800.0, gt=0)
    ucb_delta: float = Field(0.5, gt=0)
    linucb_alpha: float = Field(0.5, gt=0)
    seed: int = 0


class AttributionConfig(_Strict):
    """Which interactions count for a shown list, and how much."""

    window_s: float = Field(1800.0, gt=0, description="last-shown-list attribution window")
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 0.0,
            "click": 0.3,
            "favorite": 0.5,
            "add_to_cart": 0.6,
            "purchase": 1.0,
        }
    )
    max_open_lists: int = Field(5, ge=1, description="recent lists kept per user for rec_id")
    max_early_events: int = Field(
        32, ge=0, description="events kept per user whose rec_id list has not arrived yet"
    )


class Variant(_Strict):
    """One arm of an experiment: what it changes for its users."""

    name: str = Field(min_length=1)
    weight: float = Field(gt=0.0, le=1.0)
    policy: Literal["fixed", "bandit"] = "fixed"
    reranker: str | None = None
    trade_off: float | None = Field(None, ge=0.0, le=1.0, alias="lambda")
    artifact: Path | None = None
    candidates: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Variant:
        if self.policy == "bandit" and (self.reranker or self.trade_off is not None):
            raise ValueError(
                f"variant {self.name!r}: a bandit variant picks its own arm; drop reranker/lambda"
            )
        if self.reranker is not None and self.reranker not in RERANKER_NAMES:
            raise ValueError(
                f"variant {self.name!r}: unknown reranker {self.reranker!r}; "
                f"known: {RERANKER_NAMES}"
            )
        return self

    def arm(self, default: Arm) -> Arm:
        """The fixed arm of this variant (defaults fill what it does not say)."""
        return Arm(
            reranker=self.reranker or default.reranker,
            trade_off=default.trade_off if self.trade_off is None else self.trade_off,
        )


class Experiment(_Strict):
    """An A/B test: a share of the traffic split over weighted variants."""

    name: str = Field(min_length=1)
    salt: str = Field(min_length=1)
    traffic: float = Field(1.0, gt=0.0, le=1.0)
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: duplicate variant names {names}")
        total = sum(v.weight for v in self.variants)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"experiment {self.name!r}: variant weights sum to {total:g}, not 1")
        return self


OTHER = "other"


@dataclass(frozen=True)
class MetricLabels:
    """Label values a metric may carry, all from the configuration.

    Segments, arms and experiment stamps reach a process inside records
    (rank requests, lists read back); copied into labels, a crafted record
    would make a new Prometheus series per value. Anything not configured
    is counted under ``other``.

    >>> labels = PolicyConfig().metric_labels()
    >>> labels.arm("mmr:0.7"), labels.arm("mmr:0.123456"), labels.segment("h0-e0-new")
    ('mmr:0.7', 'other', 'h0-e0-new')
    """

    segments: frozenset[str]
    arms: frozenset[str]
    variants: frozenset[tuple[str, str]]

    def segment(self, value: object) -> str:
        return value if value in self.segments else OTHER  # type: ignore[return-value]

    def arm(self, value: object) -> str:
        return value if value in self.arms else OTHER  # type: ignore[return-value]

    def variant(self, experiment: object, variant: object) -> tuple[str, str]:
        pair = (experiment, variant)
        return pair if pair in self.variants else (OTHER, OTHER)  # type: ignore[return-value]


class PolicyConfig(_Strict):
    """The whole file: arms, bandit, attribution and experiments."""

    layer_salt: str = "streamrec-layer"
    default_arm: Arm = Field(default_factory=Arm)
    default_mode: Literal["fixed", "bandit"] = Field(
        "fixed", description="policy for users outside every experiment"
    )
    arms: list[Arm] = Field(
        default_factory=lambda: [
            Arm(reranker="mmr", trade_off=1.0),
            Arm(reranker="mmr", trade_off=0.7),
            Arm(reranker="mmr", trade_off=0.4),
            Arm(reranker="dpp", trade_off=0.6),
        ]
    )
    bandit: BanditConfig = Field(default_factory=BanditConfig)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    experiments: list[Experiment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _layer(self) -> PolicyConfig:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate experiment names {names}")
        total = sum(e.traffic for e in self.experiments)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"experiments' traffic shares sum to {total:g} > 1: they would overlap "
                "(each user is in at most one experiment)"
            )
        same = [e.name for e in self.experiments if e.salt == self.layer_salt]
        if same:
            raise ValueError(
                f"experiments {same} use the layer_salt as their salt: traffic and variant "
                "would come from one hash and split nobody; give each its own salt"
            )
        arm_names = [a.name for a in self.arms]
        if len(set(arm_names)) != len(arm_names):
            raise ValueError(f"duplicate arms {arm_names}")
        return self

    def variants(self) -> list[tuple[str, str]]:
        """Every (experiment, variant) a list can carry, ``NO_EXPERIMENT`` included."""
        pairs = [(e.name, v.name) for e in self.experiments for v in e.variants]
        return [(NO_EXPERIMENT.name, NO_EXPERIMENT.variant), *pairs]

    def metric_labels(self, extra_arms: Iterable[str] = ()) -> MetricLabels:
        """The label values metrics may carry: every segment the bandit config can
        name, the configured arms (and ``extra_arms``), every (experiment, variant)."""
        b = self.bandit
        values = {
            "history": [f"h{i}" for i in range(len(b.history_buckets) + 1)],
            "entropy": [f"e{i}" for i in range(len(b.entropy_buckets) + 1)],
            "returning": ["new", "ret"],
        }
        names = product(*(values[f] for f in b.segment_features))
        segments = {"-".join(n) or "all" for n in names} | {"all", "global"}
        arms = {a.name for a in [*self.arms, self.default_arm]} | set(extra_arms)
        return MetricLabels(frozenset(segments), frozenset(arms), frozenset(self.variants()))

    def arm(self, name: str) -> Arm:
        """An arm by name (``reranker:trade_off``)."""
        for a in [*self.arms, self.default_arm]:
            if a.name == name:
                return a
        raise KeyError(f"unknown arm {name!r}; known: {[a.name for a in self.arms]}")


def load_config(path: Path | str | None) -> PolicyConfig:
    """Read and validate the YAML file; ``None`` = the defaults (no experiment)."""
    if path is None:
        return PolicyConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read experiments file {path}: {exc}") from exc
    try:
        return PolicyConfig.model_validate(raw)
    except ValidationError as exc:
        msgs = [
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(f"invalid experiments file {path}: " + "; ".join(msgs)) from None


def _unit(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) from (salt, user_id): stable everywhere."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(cfg: PolicyConfig, user_id: str) -> tuple[Experiment, Variant] | None:
    """The user's (experiment, variant), or None outside every experiment.

    The layer hash places the user on [0, 1); experiments own consecutive
    ranges of it (their traffic shares, in file order), so they never
    overlap. Within an experiment a second hash, salted by the experiment,
    picks the variant by cumulative weight.
    """
    u = _unit(cfg.layer_salt, user_id)
    start = 0.0
    for exp in cfg.experiments:
        if start <= u < start + exp.traffic:
            v = _unit(exp.salt, user_id)
            acc = 0.0
            for variant in exp.variants:
                acc += variant.weight
                if v < acc:
                    return exp, variant
            return exp, exp.variants[-1]  # rounding at the top end
        start += exp.traffic
    return None
