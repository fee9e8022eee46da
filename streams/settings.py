"""Typed settings shared by every streamrec process.

Every field has a default and an environment variable ``STREAMREC_<FIELD>``
(for example ``STREAMREC_BROKERS``). The CLI flags of the same name override
them; processes started by ``python -m bytewax.run`` read them from the
environment, which is how ``streamrec dataflow`` hands its flags over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams import sample_data

__all__ = [
    "Settings",
    "DEFAULT_EVENT_WEIGHTS",
    "SHARED_DATA",
    "default_data_dir",
    "WORKER_METRICS_OFFSET",
    "worker_metrics_port",
]

#: How much one event of each type pulls the user embedding towards the item.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "favorite": 2.0,
    "add_to_cart": 2.0,
    "purchase": 3.0,
}


#: The shared data folder beside the checkout (``../shared/data``); it need not exist.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


#: The worker's metrics port is the dataflow's (``metrics_port``) plus this,
#: unless it is given its own (``STREAMREC_WORKER_METRICS_PORT``).
WORKER_METRICS_OFFSET = 100


def worker_metrics_port(dataflow_port: int) -> int:
    """The worker's default /metrics port beside a dataflow on ``dataflow_port``:
    that + 100, so one setting never makes both bind one port; 0 (off) stays 0.

    >>> worker_metrics_port(9100), worker_metrics_port(0)
    (9200, 0)
    """
    return dataflow_port + WORKER_METRICS_OFFSET if dataflow_port else 0


def default_data_dir() -> Path:
    """The dataset used when neither ``--data`` nor ``STREAMREC_DATA`` names one.

    The full online-retail data in :data:`SHARED_DATA` when that folder exists, else the
    slice of it that ships with the package (``streams/sample_data/online-retail``).
    Looked up at each call, so a test can point :data:`SHARED_DATA` elsewhere.
    """
    shared = SHARED_DATA / "online-retail"
    return shared if shared.is_dir() else sample_data.ONLINE_RETAIL


class Settings(BaseSettings):
    """All knobs of the dataflow, the worker, replay and the demo."""

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="ignore")

    # --- Kafka ---
    brokers: str = Field("", description="Kafka bootstrap servers HOST:PORT,...; empty = embedded")
    topic_prefix: str = Field("", description="prefix for every topic name (isolates runs)")
    partitions: int = Field(4, ge=1, description="partitions per topic when streamrec creates them")
    consumer_session_timeout_ms: int = Field(
        6000,
        ge=1000,
        description="worker consumer-group session timeout; the embedded broker's group "
        "join waits about half of it",
    )
    fetch_wait_ms: int = Field(
        10,
        ge=0,
        description="consumers' fetch.wait.max.ms: how long the broker holds a fetch when "
        "there is no data; librdkafka's 500 costs about 128 ms a hop on the embedded broker",
    )
    linger_ms: float = Field(
        1.0, ge=0, description="producers' linger.ms: how long a record waits to fill a batch"
    )
    connect_timeout_s: float = Field(
        15.0,
        gt=0,
        description="how long a command waits for the brokers to answer at start before "
        "it exits with the reason (wrong address, TLS or SASL settings)",
    )
    max_record_bytes: int = Field(
        65_536,
        ge=1024,
        description="input records larger than this are dead-lettered unread (far below "
        "librdkafka's 1 MB message limit, so nothing made from a record can exceed it)",
    )
    kafka_properties: Path | None = Field(
        None,
        description="a librdkafka properties file (key=value lines: security.protocol, "
        "sasl.*, ssl.*, ...) applied to every Kafka client; STREAMREC_KAFKA_<NAME> "
        "variables (dots as underscores) override it",
    )

    # --- data and model ---
    data: Path = Field(
        default_factory=default_data_dir,
        description="dataset folder; default: ../shared/data/online-retail beside the "
        "checkout when it exists, else the online-retail sample shipped with the package",
    )
    artifact: Path | None = Field(None, description="model artifact folder; None = pretrained")
    cache_dir: Path = Field(Path(".cache/streamrec"), description="item vectors and indexes")
    experiments: Path | None = Field(
        None, description="experiments/arms/bandit YAML file; None = defaults, no experiment"
    )
    catalog: Path | None = Field(
        None, description="a built catalog folder (item vectors + FAISS index)"
    )

    # --- user state and retrieval (dataflow) ---
    half_life_s: float = Field(7 * 24 * 3600.0, gt=0, description="user embedding half-life")
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    recent_n: int = Field(20, ge=1, description="recent items kept per user")
    seen_max: int = Field(2000, ge=1, description="seen items kept per user (oldest dropped)")
    user_retention_s: float = Field(
        0.0,
        ge=0,
        description="drop a user's state this many seconds (wall clock) after their last "
        "input; 0 = keep it (the default)",
    )
    candidates: int = Field(100, ge=1, description="candidates retrieved per request (M)")
    filter_seen: bool = Field(True, description="drop items the user already interacted with")
    k: int = Field(10, ge=1, description="list length when a request does not say")
    trigger_on_events: bool = Field(
        True,
        description="every event asks for a fresh list; off = events only update state and "
        "lists come from `recommendation-requests`",
    )
    sequence_n: int = Field(
        50, ge=1, description="ordered items per user the sequence model reads (oldest dropped)"
    )
    repeat_n: int = Field(
        50, ge=0, description="the user's most bought items added as `repeat` candidates"
    )

    # --- streaming item signals (dataflow `item-signals` step) ---
    covis_window: int = Field(
        5, ge=1, description="previous distinct items of the user an event co-visits with"
    )
    covis_n: int = Field(50, ge=1, description="co-visitation neighbours kept per item")
    # 2 s, not 0.5: under a 10x burst, republishing every touched item's row was
    # the dataflow's largest cost (28% of its samples); at 2 s the bench's burst
    # left the dataflow 6.3k events behind instead of 12.7k.
    signals_interval_s: float = Field(
        2.0,
        ge=0,
        description="an item's `item-signals` row is published at most this often (its "
        "latest state at the end of the interval); 0 = after every batch",
    )
    covis_half_life_s: float = Field(
        30 * 24 * 3600.0, gt=0, description="half-life of co-visitation counts"
    )
    trend_half_life_s: float = Field(
        24 * 3600.0, gt=0, description="half-life of the short (trending) item counts"
    )
    trend_long_half_life_s: float = Field(
        30 * 24 * 3600.0, gt=0, description="half-life of the long item counts (trend baseline)"
    )
    covis_candidates: int = Field(
        50, ge=0, description="co-visitation neighbours of recent items added as candidates"
    )
    trending_candidates: int = Field(20, ge=0, description="trending items added as candidates")

    # --- worker ---
    batch_size: int = Field(64, ge=1, description="max rank requests per inference batch")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="after a batch's first request, how long the worker waits for more; "
        "under load batches fill while the previous one is ranked",
    )
    latest_wins: bool = Field(
        True,
        description="of one user's event-triggered requests waiting together, rank only the "
        "newest (counted in streamrec_worker_skipped_requests_total), and of one user's events "
        "in one dataflow input batch only the newest asks for a list (counted in "
        "streamrec_superseded_triggers_total); explicit requests are always answered",
    )
    reasons: bool = Field(
        True,
        description="each listed item carries a reason (`RankedItem.reason`: its candidate "
        "source, the user's item behind it, the features that added most); off = null",
    )
    mmr_lambda: float = Field(0.7, ge=0, le=1, description="MMR relevance weight (1 = relevance)")
    lm_blend: float = Field(
        0.5, ge=0, le=1, description="weight of the LM history query vs the streamed embedding"
    )
    history_items: int = Field(5, ge=1, description="recent item texts the LM reads per user")
    device: str = Field("auto", description="auto | cpu | cuda")
    worker_threads: int = Field(
        0,
        ge=0,
        description="torch threads of the worker on the CPU; 0 = torch's default (every "
        "core). On a machine the dataflow shares, leave it a core",
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="worker LM: none | int8 (dynamic int8 nn.Linear, CPU only)"
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="seconds between checks of --artifact for a new version (0 = off)"
    )
    cross_encoder: Path | None = Field(
        None, description="cross-encoder folder that rescores the top candidates; None = off"
    )
    cross_top_n: int = Field(20, ge=1, description="candidates the cross-encoder rescores")
    sequence_model: Path | None = Field(
        None,
        description="sequence model folder (`streamrec finetune-seq`); None = LM two-tower only",
    )
    seq_candidates: int = Field(
        100, ge=0, description="the sequence model's top items added as candidates"
    )
    fusion_lm_blend: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the fusion ranker's `lm` feature: weight of the LM title query against "
        "the streamed embedding; 0 = no LM forward pass per request",
    )
    fusion_warm_start: Path | None = Field(
        None,
        description="JSON weights the fusion learner starts from; None = the sequence "
        "model's fusion.json",
    )
    fusion_online: bool = Field(
        True,
        description="the dataflow learns the fusion weights from attributed outcomes and "
        "the worker follows them; off = the warm start stays",
    )
    fusion_lr: float = Field(
        0.001, gt=0, description="SGD step of the online fusion learner (features are O(1-20))"
    )

    # --- observability ---
    metrics_port: int = Field(
        9100,
        ge=0,
        description="Prometheus /metrics port of the process: the dataflow's (+ its process "
        "id in a cluster); `streamrec worker` serves on it + 100 unless given its own "
        "(STREAMREC_WORKER_METRICS_PORT); 0 = off",
    )

    @field_validator("event_weights")
    @classmethod
    def _known_types(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(DEFAULT_EVENT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown event types in event_weights: {sorted(unknown)}")
        return {**DEFAULT_EVENT_WEIGHTS, **v}

    def to_env(self) -> dict[str, str]:
        """These settings as ``STREAMREC_*`` variables, to hand them to a child process
        (which reads them back with ``Settings()``); unset (None) fields are left out.

        >>> Settings(k=5, metrics_port=0).to_env()["STREAMREC_K"]
        '5'
        """
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            env[f"STREAMREC_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, dict) else str(value)
            )
        return env
