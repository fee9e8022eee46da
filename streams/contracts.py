"""Message contracts and topic names shared by the dataflow and the worker.

The one wire format: every record on every topic, internal ones included, is a
frozen, strict pydantic model here (:data:`TOPIC_RECORDS` names the model of
each topic, :data:`CONTROL_RECORDS` the control records told apart by a
header), written with ``to_bytes()`` and read with the one parser,
:func:`parse`, which returns the model or a :class:`DeadLetter` that says why
not. Nothing in this module imports torch.

Topics (names get ``Settings.topic_prefix`` in front), and their record:

``events``                   :class:`Event`: storefront interactions (key = user_id)
``events.dlq``               :class:`DeadLetter`: records the dataflow could not parse
``catalog``                  :class:`CatalogItem`: item metadata (key = item_id, compacted;
                             reserved: nothing produces it yet)
``recommendation-requests``  :class:`RecommendationRequest`: explicit asks (key = user_id)
``rank-requests``            internal: :class:`RankRequest`, dataflow -> worker, one per
                             trigger (key = user_id); and :class:`ForgetControl` records
                             (header ``streamrec-control: forget``)
``rank-requests.dlq``        internal: :class:`DeadLetter`: rank requests the worker could
                             not parse, lists the broker refused
``recommendations``          :class:`Recommendation`: output lists (key = user_id)
``bandit-weights``           internal: :class:`BanditState`, per bandit key (compacted)
``outcomes``                 :class:`Outcome`: interactions attributed to a shown list
                             (key = user_id)
``outcomes.unattributed``    :class:`Unattributed`: interactions naming a list they could
                             not be credited to, with the reason (key = user_id)
``item-signals``             internal: :class:`SignalRow`, per-item co-visitation
                             neighbours and trend counts (key = item_id, compacted)
``fusion-weights``           internal: :class:`FusionWeights`, the fusion ranker's
                             online-learned weights (key = ``global``, compacted)
``forget-requests``          :class:`ForgetRequest`: a shopper's data must go (key = user_id)
``forgotten``                :class:`Forgotten`: the dataflow's answer (key = user_id)

Internal records (written only by streamrec's own processes) refuse NaN and
infinite numbers: they reach every worker's ranking, where one would poison
every score.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Self  # typing.Self is 3.11+; pydantic depends on it

__all__ = [
    "EVENT_TYPES",
    "TIMING_HEADER",
    "CONTROL_HEADER",
    "GLOBAL_KEY",
    "Topics",
    "TOPIC_RECORDS",
    "CONTROL_RECORDS",
    "Event",
    "RecommendationRequest",
    "CatalogItem",
    "ExperimentStamp",
    "NO_EXPERIMENT",
    "AssignedPolicy",
    "ServedPolicy",
    "RankRequest",
    "ForgetControl",
    "ForgetRequest",
    "Forgotten",
    "RankedItem",
    "Recommendation",
    "Outcome",
    "Unattributed",
    "SignalRow",
    "WeightSet",
    "FusionWeights",
    "ArmStats",
    "ThompsonParams",
    "UCBParams",
    "LinUCBParams",
    "BanditState",
    "DeadLetter",
    "parse",
    "dead_letter",
    "too_large",
    "MAX_ID_CHARS",
    "MAX_ROW_NEIGHBOURS",
    "user_tag",
    "rec_id_for",
    "encode_vector",
    "decode_vector",
]

#: The header the worker puts on every ``recommendations`` record: JSON epoch seconds
#: ``consumed_ts`` (its window left Kafka), ``batch_start_ts`` and ``done_ts`` (the
#: batch's ranking), so a reader can split a list's latency into hop, wait and compute.
TIMING_HEADER = "streamrec-timing"

#: The header of a control record on ``rank-requests`` (not a rank request): value
#: ``forget`` (a :class:`ForgetControl`), the record's key the user whose queued
#: requests the worker drops.
CONTROL_HEADER = "streamrec-control"

#: The key of a record that is one for the whole topic: the fusion weights, and a
#: contextual bandit's state (``streams.bandit.bandit_key``).
GLOBAL_KEY = "global"

EventType = Literal["view", "click", "add_to_cart", "favorite", "purchase"]
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "favorite", "purchase")


@dataclass(frozen=True)
class Topics:
    """Topic names, optionally prefixed so runs and tests can share a broker."""

    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def name(self, base: str) -> str:
        """The topic of base name ``base`` (a key of :data:`TOPIC_RECORDS`) with the prefix.

        >>> Topics("t1-").name("item-signals")
        't1-item-signals'
        """
        if base not in TOPIC_RECORDS:
            raise ValueError(f"no topic {base!r}; known: {', '.join(TOPIC_RECORDS)}")
        return self._name(base)

    def record_model(self, topic: str) -> type[_Message]:
        """The model of the (data) records on ``topic``, a name with this prefix.

        >>> Topics("t1-").record_model("t1-item-signals").__name__
        'SignalRow'
        """
        base = topic[len(self.prefix) :] if topic.startswith(self.prefix) else None
        if base not in TOPIC_RECORDS:
            raise ValueError(f"{topic!r} is not a streamrec topic of prefix {self.prefix!r}")
        return TOPIC_RECORDS[base]

    @property
    def events(self) -> str:
        return self._name("events")

    @property
    def events_dlq(self) -> str:
        return self._name("events.dlq")

    @property
    def catalog(self) -> str:
        return self._name("catalog")

    @property
    def recommendation_requests(self) -> str:
        return self._name("recommendation-requests")

    @property
    def rank_requests(self) -> str:
        return self._name("rank-requests")

    @property
    def rank_requests_dlq(self) -> str:
        return self._name("rank-requests.dlq")

    @property
    def recommendations(self) -> str:
        return self._name("recommendations")

    @property
    def bandit_weights(self) -> str:
        return self._name("bandit-weights")

    @property
    def outcomes(self) -> str:
        return self._name("outcomes")

    @property
    def unattributed(self) -> str:
        return self._name("outcomes.unattributed")

    @property
    def item_signals(self) -> str:
        return self._name("item-signals")

    @property
    def fusion_weights(self) -> str:
        return self._name("fusion-weights")

    @property
    def forget_requests(self) -> str:
        return self._name("forget-requests")

    @property
    def forgotten(self) -> str:
        return self._name("forgotten")

    def all(self) -> list[str]:
        """Every topic streamrec creates."""
        return [
            self.events,
            self.events_dlq,
            self.catalog,
            self.recommendation_requests,
            self.rank_requests,
            self.rank_requests_dlq,
            self.recommendations,
            self.bandit_weights,
            self.outcomes,
            self.unattributed,
            self.item_signals,
            self.fusion_weights,
            self.forget_requests,
            self.forgotten,
        ]

    def compacted(self) -> set[str]:
        """Topics that keep only the latest value per key."""
        return {self.catalog, self.bandit_weights, self.item_signals, self.fusion_weights}


class _Message(BaseModel):
    """The base of every record: frozen, strict (no coercion: a string is not a
    number, a float not an int), unknown fields refused."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    #: The field whose value is the record's Kafka key (None: records have no key).
    KEY_FIELD: ClassVar[str | None] = "user_id"

    def to_bytes(self) -> bytes:
        """The record as its topic carries it: compact JSON, UTF-8."""
        return self.model_dump_json(exclude_none=False).encode("utf-8")

    def kafka_key(self) -> bytes | None:
        """The record's Kafka key (the README's topic table), UTF-8."""
        field = self.KEY_FIELD
        return None if field is None else getattr(self, field).encode("utf-8")

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record travels with (none but a control record's)."""
        return []


class _Internal(_Message):
    """A record only streamrec's processes write: NaN and infinities are refused as
    well (pydantic accepts them by default, and would write them as null)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", allow_inf_nan=False)


class _Stamp(_Internal):
    """A small immutable value copied into many records and user states: a deep copy
    (a recovery snapshot) shares it instead of copying it."""

    def __copy__(self) -> _Stamp:
        return self

    def __deepcopy__(self, memo: dict | None = None) -> _Stamp:
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A changed stamp is a new one: pydantic's own ``model_copy`` updates the
        ``__copy__`` result in place, which here is the shared instance itself.

        >>> a = AssignedPolicy(); b = a.model_copy(update={"artifact": "x"})
        >>> (a.artifact, b.artifact)
        (None, 'x')
        """
        if not update:
            return self
        return type(self)(**{**self.__dict__, **update})


def _as_float(v: int | float, name: str) -> float:
    # float() of a huge int raises OverflowError, which pydantic does not turn into
    # a validation error: it would escape the "never raises" parse functions.
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float") from None


def _in_range(v: float | None, low: float, high: float) -> float | None:
    if v is not None and not low <= v <= high:
        raise ValueError(f"must be between {low:g} and {high:g}, got {v:g}")
    return v


def _event_time(v: Any) -> Any:
    """Epoch seconds (int or float) or an ISO-8601 string (naive = UTC) -> float."""
    if v is None:
        return v
    if isinstance(v, bool):
        raise ValueError("ts must be epoch seconds or an ISO-8601 string, not a boolean")
    if isinstance(v, (int, float)):
        return _as_float(v, "ts")
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"ts is not ISO-8601: {v!r}") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise ValueError("ts must be epoch seconds or an ISO-8601 string")


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


#: Longest id (event, user, item, request, list, session) a record may carry: an id
#: is copied into every request and list, so one huge id would grow them past any limit.
MAX_ID_CHARS = 256
#: Event times accepted: from 1970 to 2100 (epoch seconds, both ends included).
TS_RANGE = (0.0, 4_102_444_800.0)
#: The most characters of a bad record a dead letter keeps in ``raw``.
MAX_RAW_CHARS = 4096

#: An id as records carry it: 1 to ``MAX_ID_CHARS`` characters.
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]


class Event(_Message):
    """A storefront interaction on ``events``. Unknown extra fields are kept.

    Ranges: ids of 1 to ``MAX_ID_CHARS`` characters; ``ts`` inside
    ``TS_RANGE``; ``price`` from 0 to 10^9; ``quantity`` from 1 to 10^7.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")

    event_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    type: EventType
    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    item_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    ts: float
    rec_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    session_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    price: float | None = None
    quantity: int | None = Field(None, ge=1, le=10_000_000)

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> float:
        return _event_time(v)

    @field_validator("price", mode="before")
    @classmethod
    def _price_number(cls, v: Any) -> Any:
        # Strict mode refuses an int for a float field; a price of 3 is fine.
        return _as_float(v, "price") if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("ts")
    @classmethod
    def _ts_in_range(cls, v: float) -> float:
        return _in_range(_finite(v), *TS_RANGE)

    @field_validator("price")
    @classmethod
    def _price_in_range(cls, v: float | None) -> float | None:
        return _in_range(_finite(v), 0.0, 1e9)


class RecommendationRequest(_Message):
    """An explicit ask on ``recommendation-requests`` (a page view wants a list).

    ``ts``: when the page asked, in the store's event time (epoch seconds or
    ISO-8601, as ``Event.ts``); without it, the record's Kafka timestamp. The
    list's attribution window starts there.
    """

    request_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    k: int = Field(10, ge=1, le=1000)
    ts: float | None = None
    context: dict[str, Any] | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> float | None:
        return _event_time(v)

    @field_validator("ts")
    @classmethod
    def _ts_in_range(cls, v: float | None) -> float | None:
        return _in_range(_finite(v), *TS_RANGE)


class CatalogItem(_Internal):
    """Item metadata on ``catalog`` (key = item_id, compacted): the fields of one
    item in a catalog folder's ``items.json`` (``streams.catalog``).

    Reserved: the topic is created, but today the catalog reaches the processes as
    a folder (``streamrec index``), and nothing produces or reads this record.
    """

    KEY_FIELD: ClassVar[str] = "item_id"

    item_id: Id
    title: str
    category: str | None = None


class ExperimentStamp(_Stamp):
    """The experiment and variant a list was served under (``experiment`` on
    :class:`RankRequest`, :class:`Recommendation` and :class:`Outcome`); the
    defaults are a user outside every experiment (:data:`NO_EXPERIMENT`).

    >>> ExperimentStamp(name="div", variant="bandit").to_bytes()
    b'{"name":"div","variant":"bandit"}'
    """

    name: str = "none"
    variant: str = "default"

    @staticmethod
    @lru_cache(maxsize=1024)
    def of(name: str, variant: str) -> ExperimentStamp:
        """The stamp, shared: there are few distinct ones, and every request has one."""
        return ExperimentStamp(name=name, variant=variant)


#: The experiment stamp of a user outside every experiment's traffic.
NO_EXPERIMENT = ExperimentStamp()


class AssignedPolicy(_Stamp):
    """What the dataflow asks the worker to serve (``RankRequest.policy``).

    ``mode``: ``fixed`` (the ``arm``, or the worker's default arm when None) or
    ``bandit`` (the worker's bandit picks the arm for ``segment``).
    ``artifact``: the model a variant serves instead of the worker's own; absent
    from the JSON when None.

    >>> AssignedPolicy(mode="bandit", segment="h1-e0-new").to_bytes()
    b'{"mode":"bandit","arm":null,"segment":"h1-e0-new"}'
    """

    mode: Literal["fixed", "bandit"] = "fixed"
    arm: str | None = None
    segment: str = "all"
    artifact: str | None = Field(None, exclude_if=lambda v: v is None)

    @staticmethod
    @lru_cache(maxsize=4096)
    def of(
        mode: Literal["fixed", "bandit"], arm: str | None, segment: str, artifact: str | None = None
    ) -> AssignedPolicy:
        """The stamp, shared: there are few distinct ones (modes x arms x segments),
        and the dataflow stamps every request."""
        return AssignedPolicy(mode=mode, arm=arm, segment=segment, artifact=artifact)


class ServedPolicy(_Stamp):
    """What the worker served a list with (``Recommendation.policy``, copied into
    its outcomes): the reranker, the arm (``reranker:trade_off``), its trade-off
    (``lambda`` in the JSON), the mode it was chosen in and the user's segment.

    >>> ServedPolicy(reranker="mmr", arm="mmr:0.7", trade_off=0.7).to_bytes()
    b'{"reranker":"mmr","arm":"mmr:0.7","lambda":0.7,"mode":"fixed","segment":"all"}'
    """

    model_config = ConfigDict(
        frozen=True,
        strict=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    reranker: str
    arm: str
    trade_off: float = Field(alias="lambda")
    mode: Literal["fixed", "bandit"] = "fixed"
    segment: str = "all"


class ForgetRequest(_Message):
    """A shopper's data must go (``forget-requests``, key = user_id).

    The dataflow drops the user's whole state (embedding, sequence, seen set,
    counts, open lists, pending attribution), tells the worker to drop what it
    holds of the user, and answers on ``forgotten``.
    """

    request_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)


class Forgotten(_Message):
    """The answer to a :class:`ForgetRequest` on ``forgotten`` (key = user_id):
    the user's state is gone from the dataflow (``had_state``: there was one),
    and from its recovery store from the next snapshot on."""

    request_id: str
    user_id: str
    had_state: bool
    done_ts: float


class ForgetControl(_Internal):
    """A control record on ``rank-requests`` (key = the user; header
    ``streamrec-control: forget``), behind the user's queued rank requests in
    their partition: the user's state is gone from the dataflow, so the worker
    drops the requests of ``forget`` it has not ranked yet (they were built from
    that state). ``request_id``: the :class:`ForgetRequest` it answers.

    >>> ForgetControl(forget="u1", request_id="f1").kafka_headers()
    [('streamrec-control', b'forget')]
    """

    KEY_FIELD: ClassVar[str] = "forget"
    #: The value of the record's ``CONTROL_HEADER``.
    CONTROL: ClassVar[bytes] = b"forget"

    forget: Id
    request_id: Id

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        return [(CONTROL_HEADER, self.CONTROL)]


class RankRequest(_Message):
    """Dataflow -> worker: rank candidates for this user (``rank-requests``).

    The dataflow sends what it knows of the user and the worker retrieves
    the candidates itself (``streams.retrieval``), batched over its
    micro-batch: one matrix product for a whole batch instead of one index
    search per event in the dataflow, where it cost most of the time.

    ``m``: the ``ann`` (or, for a cold user, ``popular``) candidates to
    retrieve. ``user_vector``: the user's unit embedding as base64 of
    little-endian float32 (:func:`encode_vector`; None while the user is
    cold). ``exclude``: items no source may propose (the seen set when the
    dataflow filters seen items). ``counts``: item -> (times, last event time)
    of the user's items when repeats are allowed (the ``repeat`` source and
    the ``repeat_count`` / ``repeat_age_s`` features); empty otherwise.
    ``last_ts``: the user's latest event time (the clock of those ages).

    ``policy``: the :class:`AssignedPolicy` (mode, arm or None for the
    worker's default, segment, and the artifact when a variant serves another
    model); ``experiment``: the :class:`ExperimentStamp`. ``context``: the
    bandit's feature vector for this user.

    ``request_id`` is unique per trigger: the explicit request's id, or
    ``evt:<event_id>`` for an event trigger, so a replayed trigger yields the
    same ``rec_id`` and duplicates can be dropped downstream.
    """

    request_id: str
    explicit_request_id: str | None = None
    user_id: str
    k: int
    m: int = Field(100, ge=0)
    user_vector: str | None = None
    last_ts: float | None = None
    recent_items: list[str] = Field(default_factory=list)
    # The user's ordered items, oldest first, consecutive repeats collapsed, and
    # their event times: what the sequence model reads.
    sequence: list[str] = Field(default_factory=list)
    sequence_ts: list[float] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    counts: dict[str, tuple[float, float]] = Field(default_factory=dict)
    # True when the list may not repeat the user's items (the seen filter is
    # on): the fusion ranker then scores with its weights fitted for that case.
    filter_seen: bool = False
    category_mix: dict[str, float] = Field(default_factory=dict)
    trigger_event_id: str | None = None
    arrival_ts: float
    created_ts: float
    experiment: ExperimentStamp = NO_EXPERIMENT
    policy: AssignedPolicy = AssignedPolicy()
    context: list[float] | None = None

    def vector(self) -> np.ndarray | None:
        """The user's unit embedding (float32), or None while the user is cold."""
        return None if self.user_vector is None else decode_vector(self.user_vector)


def encode_vector(vector: np.ndarray) -> str:
    """A float vector as base64 of little-endian float32: exact, a third of the
    JSON text of its numbers, and far faster to write and read.

    >>> decode_vector(encode_vector(np.array([0.5, -1.0]))).tolist()
    [0.5, -1.0]
    """
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    """The inverse of :func:`encode_vector`; ValueError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 float32 vector: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"not a float32 vector: {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


class RankedItem(_Message):
    """One list entry; ``features`` are the fusion ranker's inputs for it (the
    dataflow learns the fusion weights from them when outcomes come back).

    ``reason`` (optional; ``Settings.reasons``) says why the item is listed:
    ``{"source", "because", "top"}``, with ``source`` the candidate source
    that proposed it (``retrieval``, ``popular``, ``repeat``, ``seq``,
    ``covis``, ``trending``), ``because`` the user's item that explains it or
    null, and ``top`` the features that added most to its score,
    ``{name: contribution}`` largest first (the fusion ranker's; empty for
    others). See :mod:`model.reasons`.
    """

    item_id: str
    score: float
    rank: int
    features: dict[str, float] | None = None
    reason: dict[str, Any] | None = None


class Recommendation(_Message):
    """A published list on ``recommendations`` (the ARCHITECTURE.md shape)."""

    rec_id: str
    request_id: str | None
    user_id: str
    items: list[RankedItem]
    experiment: ExperimentStamp
    policy: ServedPolicy
    model_version: str
    trigger_event_id: str | None
    created_ts: float
    latency_ms: float


class _Interaction(_Message):
    """The interaction an outcome record is about (the event's own fields)."""

    rec_id: str
    user_id: str
    item_id: str
    type: EventType
    event_id: str
    ts: float


class Outcome(_Interaction):
    """An interaction attributed to a shown list, on ``outcomes`` (key = user_id).

    Emitted once per (rec_id, item_id, type): ``attributed_by`` says whether
    the event carried the list's ``rec_id`` or hit an item of the user's last
    shown list inside the attribution window. ``revenue`` = price x quantity
    for purchases that carry both, else None.
    """

    experiment: ExperimentStamp
    policy: ServedPolicy
    revenue: float | None = None
    attributed_by: Literal["rec_id", "window"]


class Unattributed(_Interaction):
    """An interaction that named a list (``rec_id``) it could not be credited to,
    on ``outcomes.unattributed`` (key = user_id), so nothing is dropped silently.

    ``reason``: ``unknown`` (no list of that id was shown to the user, nor
    came within the window), ``expired`` (the user's list, but the event falls
    outside the attribution window from the list's clock), ``other_user`` (a
    list shown to someone else).
    """

    reason: Literal["unknown", "expired", "other_user"]


#: A published row holds the top ``covis_n`` neighbours (20 by default); anything far
#: longer did not come from the dataflow.
MAX_ROW_NEIGHBOURS = 1000


class SignalRow(_Internal):
    """One item's published signals on ``item-signals`` (key = item_id, compacted),
    decayed to ``ts`` (the item's latest event time); see :mod:`streams.signals`.

    ``neighbours``: (item_id, weight) of the heaviest co-visitation neighbours,
    heaviest first; ``short``, ``long``: the decayed event counts; ``records``:
    the signal records the item's state has applied so far, so a reader that
    knows how many were produced can tell when its table has caught up.

    >>> row = SignalRow(item_id="i9", neighbours=(("i7", 2.5),), short=3.2, long=41.0, ts=1.0)
    >>> row.to_bytes()
    b'{"item_id":"i9","neighbours":[["i7",2.5]],"short":3.2,"long":41.0,"ts":1.0,"records":0}'
    >>> parse(SignalRow, row.to_bytes()) == row
    True
    >>> nan = b'{"item_id":"i9","neighbours":[["i7",NaN]],"short":1,"long":1,"ts":1}'
    >>> parse(SignalRow, nan).error
    'neighbours.0.1: Input should be a finite number'
    """

    # Item ids repeat little from row to row: pydantic's cache of JSON strings only
    # costs here (decoding 10,000 rows of 20 neighbours took 40% longer with it).
    model_config = ConfigDict(cache_strings="keys")
    KEY_FIELD: ClassVar[str] = "item_id"

    item_id: Id
    neighbours: tuple[tuple[Id, float], ...] = Field(max_length=MAX_ROW_NEIGHBOURS)
    short: float
    long: float
    ts: float
    records: int = Field(0, ge=0)


class WeightSet(_Internal):
    """One linear weight set of the fusion ranker: ``score = bias + sum_f w_f * x_f``."""

    bias: float
    weights: dict[str, float]


class FusionWeights(WeightSet):
    """The fusion ranker's weights: a record on ``fusion-weights`` (key ``global``,
    compacted; see :mod:`streams.fusion_learner`), and what a warm-start file holds.

    A published record carries ``updates`` (the learner's SGD steps) and
    ``filter_seen`` (which of the worker's two sets it replaces); a warm start
    carries the set for lists that may repeat the user's items and, under
    ``masked``, the one for lists that may not. Fields that are None are left
    out of the JSON.

    >>> FusionWeights(bias=-1.2, weights={"covis": 0.8}, updates=50, filter_seen=False).to_bytes()
    b'{"bias":-1.2,"weights":{"covis":0.8},"updates":50,"filter_seen":false}'
    >>> parse(FusionWeights, b'{"bias": "x", "weights": {}}').error
    'bias: Input should be a valid number'
    """

    KEY_FIELD: ClassVar[None] = None

    masked: WeightSet | None = Field(None, exclude_if=lambda v: v is None)
    updates: int | None = Field(None, ge=0, exclude_if=lambda v: v is None)
    filter_seen: bool | None = Field(None, exclude_if=lambda v: v is None)

    def kafka_key(self) -> bytes:
        return GLOBAL_KEY.encode("utf-8")

    def weight_set(self, filter_seen: bool) -> WeightSet:
        """The set for lists with (True) or without the seen filter; without a
        ``masked`` set both use the main one.

        >>> w = FusionWeights(bias=1.0, weights={}, masked=WeightSet(bias=0.0, weights={}))
        >>> w.weight_set(True).bias, w.weight_set(False).bias
        (0.0, 1.0)
        """
        if filter_seen and self.masked is not None:
            return self.masked
        return WeightSet(bias=self.bias, weights=self.weights)


class ArmStats(_Internal):
    """One arm's counts in a :class:`BanditState`, readable by people and dashboards."""

    pulls: int = Field(ge=0)
    reward_sum: float
    mean_reward: float


#: Two numbers (a JSON array of two).
Pair = Annotated[list[float], Field(min_length=2, max_length=2)]


class ThompsonParams(_Internal):
    """Thompson sampling's statistics: each arm's Beta posterior (alpha, beta),
    river's step count ``n`` and pulls per arm."""

    beta: dict[str, Pair]
    n: int
    counts: dict[str, int]


class UCBParams(_Internal):
    """UCB's statistics: each arm's running mean (weight, mean), river's step count
    ``n`` and pulls per arm, and ``delta``."""

    mean: dict[str, Pair]
    n: int
    counts: dict[str, int]
    delta: float


class LinUCBParams(_Internal):
    """LinUCB's statistics: ``alpha``, ``ridge``, and per arm the inverse ``A^-1``
    (arms x d x d) and ``b`` (arms x d); both None before the first context."""

    alpha: float
    ridge: float
    a_inv: list[list[list[float]]] | None
    b: list[list[float]] | None


def _params_kind(value: Any) -> str | None:
    """Which policy's statistics ``value`` holds, by its fields."""
    if isinstance(value, dict):
        keys: Any = value
    elif isinstance(value, BaseModel):
        keys = type(value).model_fields
    else:
        return None
    for kind, marker in (("thompson", "beta"), ("ucb", "mean"), ("linucb", "a_inv")):
        if marker in keys:
            return kind
    return None


#: The statistics model of each bandit policy (``streams.bandit.POLICIES`` has the
#: same names).
BANDIT_PARAMS: dict[str, type[_Internal]] = {
    "thompson": ThompsonParams,
    "ucb": UCBParams,
    "linucb": LinUCBParams,
}

BanditParams = Annotated[
    Annotated[ThompsonParams, Tag("thompson")]
    | Annotated[UCBParams, Tag("ucb")]
    | Annotated[LinUCBParams, Tag("linucb")],
    Discriminator(
        _params_kind,
        custom_error_type="bandit_params",
        custom_error_message="not the statistics of a known policy",
    ),
]


class BanditState(_Internal):
    """A bandit's state after an update, on ``bandit-weights`` (key = ``key``,
    compacted): plain numbers only, never code (the worker rebuilds a policy of a
    known class from them: ``streams.bandit.policy_from_state``).

    ``key``: the bandit key (``streams.bandit.bandit_key``: the segment, or
    ``global`` for LinUCB); ``updated_ts``: when it was published; then the
    policy's own state (``DiversityPolicy.to_state``): its name, arms, updates,
    exploration floor and seed, readable ``stats`` per arm, and ``params``, its
    sufficient statistics.
    """

    KEY_FIELD: ClassVar[str] = "key"

    key: Id
    updated_ts: float
    policy: Literal["thompson", "ucb", "linucb"]
    arms: list[Id] = Field(min_length=1)
    updates: int = Field(ge=0)
    min_exploration: float
    seed: int
    stats: dict[str, ArmStats]
    params: BanditParams

    @model_validator(mode="after")
    def _consistent(self) -> BanditState:
        if set(self.stats) != set(self.arms):
            raise ValueError("stats must hold every arm, and only the arms")
        if _params_kind(self.params) != self.policy:
            raise ValueError(f"params are not the statistics of a {self.policy} policy")
        return self


class DeadLetter(_Message):
    """A record that could not be processed, as written to a ``*.dlq`` topic."""

    KEY_FIELD: ClassVar[None] = None

    error: str
    raw: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


#: The model of every (data) record on each topic, by base name (without the prefix).
TOPIC_RECORDS: dict[str, type[_Message]] = {
    "events": Event,
    "events.dlq": DeadLetter,
    "catalog": CatalogItem,
    "recommendation-requests": RecommendationRequest,
    "rank-requests": RankRequest,
    "rank-requests.dlq": DeadLetter,
    "recommendations": Recommendation,
    "bandit-weights": BanditState,
    "outcomes": Outcome,
    "outcomes.unattributed": Unattributed,
    "item-signals": SignalRow,
    "fusion-weights": FusionWeights,
    "forget-requests": ForgetRequest,
    "forgotten": Forgotten,
}

#: Control records: on a topic (base name), by the value of their ``CONTROL_HEADER``.
CONTROL_RECORDS: dict[str, dict[bytes, type[_Message]]] = {
    "rank-requests": {ForgetControl.CONTROL: ForgetControl},
}


def rec_id_for(request_id: str, user_id: str) -> str:
    """Deterministic list id: the same trigger always gives the same ``rec_id``.

    ``rec-<user tag>-<trigger hash>``: the tag (6 hex digits of the user id's
    hash) lets attribution tell a click on someone else's list from one on a
    list it never saw, without a lookup.

    >>> rec_id_for("evt:e1", "u1").startswith("rec-" + user_tag("u1"))
    True
    """
    trigger = hashlib.sha1(request_id.encode("utf-8")).hexdigest()[:14]
    return f"rec-{user_tag(user_id)}-{trigger}"


def user_tag(user_id: str) -> str:
    """The user part of :func:`rec_id_for`'s ids."""
    return hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:6]


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


M = TypeVar("M", bound=_Message)


def _parse(model: type[_Message], raw: bytes | str | None) -> Any:
    """Decode JSON into ``model`` or return the reason it failed.

    The fast path lets pydantic read the bytes directly (a third of the time
    of ``json.loads`` + validation); only a record it refuses takes the slow
    path below, which names the reason for the dead letter.
    """
    if raw is None:
        return "empty record (no value)"
    try:
        return model.model_validate_json(raw)
    except (ValidationError, ValueError, OverflowError, RecursionError):
        pass
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except (ValueError, RecursionError) as exc:  # an int over the digit limit, deep nesting
        return f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return f"not a JSON object: got {type(obj).__name__}"
    try:
        # The JSON again, not ``obj``: strict validation of Python objects would
        # refuse what JSON cannot say otherwise (a list for a tuple), and name
        # reasons the record does not have.
        return model.model_validate_json(text)
    except ValidationError as exc:
        return _describe(exc)
    except (ValueError, OverflowError, RecursionError) as exc:
        return f"{type(exc).__name__}: {exc}"


def parse(
    model: type[M],
    raw: bytes | str | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> M | DeadLetter:
    """Parse one record of ``model`` (the model of its topic, :data:`TOPIC_RECORDS`),
    or return the :class:`DeadLetter` that says why not; never raises.

    ``topic``, ``partition`` and ``offset`` say where the record came from, for
    the dead letter. The one parser of every topic: readers of public topics
    dead-letter what it refuses, the worker's followers of the compacted
    internal ones log and skip it.

    >>> parse(Event, b'{"event_id":"e1","type":"click","user_id":"u1","item_id":"i1","ts":1}').type
    'click'
    >>> parse(Event, b'{"event_id":"e1"').error[:8]
    'not JSON'
    >>> parse(ForgetRequest, b'{"request_id": "f1"}', "forget-requests", 0, 7).error
    'user_id: Field required'
    >>> parse(FusionWeights, b"[]").error
    'not a JSON object: got list'
    """
    result = _parse(model, raw)
    if isinstance(result, str):
        return dead_letter(result, raw, topic, partition, offset)
    return result


def dead_letter(
    error: str,
    raw: bytes | str | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> DeadLetter:
    """The dead letter of a record: the reason and the record as text, cut to
    ``MAX_RAW_CHARS`` (so a dead letter is never too large to produce).

    >>> len(dead_letter("too big", b"x" * 10**6).raw) < 5000
    True
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    text = "" if raw is None else raw[: 4 * MAX_RAW_CHARS].decode("utf-8", errors="replace")
    if len(text) > MAX_RAW_CHARS or (raw is not None and len(raw) > 4 * MAX_RAW_CHARS):
        text = f"{text[:MAX_RAW_CHARS]}... [cut: {len(raw or b'')} bytes in all]"
    return DeadLetter(error=error, raw=text, topic=topic, partition=partition, offset=offset)


def too_large(raw: bytes | None, limit: int) -> str | None:
    """The reason a record over ``limit`` bytes is refused unread, or None."""
    if raw is not None and len(raw) > limit:
        return f"record of {len(raw)} bytes is over the {limit}-byte limit (max_record_bytes)"
    return None
