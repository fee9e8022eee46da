"""Message contracts and topic names shared by the dataflow and the worker.

Every message that crosses a topic is a frozen pydantic model here, and input
from outside (``events``, ``recommendation-requests``) has exactly one parse
function that returns either the message or a :class:`DeadLetter` for the
dead-letter topic. Nothing in this module imports torch.

Topics (names get ``Settings.topic_prefix`` in front):

``events``                   storefront interactions (key = user_id)
``events.dlq``               records the dataflow could not parse, with the reason
``catalog``                  item metadata (key = item_id, compacted)
``recommendation-requests``  explicit asks from a page view (key = user_id)
``rank-requests``            internal: dataflow -> worker, one per trigger (key = user_id)
``rank-requests.dlq``        internal: rank requests the worker could not parse
``recommendations``          output lists (key = user_id)
``bandit-weights``           internal: per-segment bandit statistics (compacted)
``outcomes``                 interactions attributed to a shown list (key = user_id)
``outcomes.unattributed``    interactions naming a list they could not be credited to,
                             with the reason (key = user_id)
``item-signals``             internal: per-item co-visitation neighbours and trend counts
                             kept by the dataflow (key = item_id, compacted)
``fusion-weights``           internal: the fusion ranker's online-learned weights (compacted)
``forget-requests``          a shopper's data must go (key = user_id)
``forgotten``                the dataflow's answer: the user's state is gone (key = user_id)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "EVENT_TYPES",
    "TIMING_HEADER",
    "Topics",
    "Event",
    "RecommendationRequest",
    "RankRequest",
    "ForgetRequest",
    "Forgotten",
    "CONTROL_HEADER",
    "parse_forget_request",
    "RankedItem",
    "Recommendation",
    "Outcome",
    "Unattributed",
    "DeadLetter",
    "dead_letter",
    "too_large",
    "MAX_ID_CHARS",
    "user_tag",
    "parse_event",
    "parse_recommendation_request",
    "parse_recommendation",
    "parse_rank_request",
    "rec_id_for",
    "encode_vector",
    "decode_vector",
]

#: The header the worker puts on every ``recommendations`` record: JSON epoch seconds
#: ``consumed_ts`` (its window left Kafka), ``batch_start_ts`` and ``done_ts`` (the
#: batch's ranking), so a reader can split a list's latency into hop, wait and compute.
TIMING_HEADER = "streamrec-timing"

EventType = Literal["view", "click", "add_to_cart", "favorite", "purchase"]
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "favorite", "purchase")


@dataclass(frozen=True)
class Topics:
    """Topic names, optionally prefixed so runs and tests can share a broker."""

    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

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
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode("utf-8")


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


#: The header of a control record on ``rank-requests`` (not a rank request): value
#: ``forget``, the record's key the user whose queued requests the worker drops.
CONTROL_HEADER = "streamrec-control"


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

    ``policy``: ``mode`` (``fixed`` or ``bandit``), ``arm`` (a fixed variant's
    ``reranker:trade_off``, or None for the worker's default), ``segment``,
    and ``artifact`` when a variant serves another model. ``context``: the
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
    experiment: dict[str, str] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
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
    experiment: dict[str, str]
    policy: dict[str, Any]
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

    experiment: dict[str, str]
    policy: dict[str, Any]
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


class DeadLetter(_Message):
    """A record that could not be processed, as written to a ``*.dlq`` topic."""

    error: str
    raw: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


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


def _parse(model: type[_Message], raw: bytes | None) -> Any:
    """Decode JSON bytes into ``model`` or return the reason it failed.

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
        text = raw.decode("utf-8")
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
        return model.model_validate(obj)
    except ValidationError as exc:
        return _describe(exc)


def dead_letter(
    error: str,
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> DeadLetter:
    """The dead letter of a record: the reason and the record as text, cut to
    ``MAX_RAW_CHARS`` (so a dead letter is never too large to produce).

    >>> len(dead_letter("too big", b"x" * 10**6).raw) < 5000
    True
    """
    text = "" if raw is None else raw[: 4 * MAX_RAW_CHARS].decode("utf-8", errors="replace")
    if len(text) > MAX_RAW_CHARS or (raw is not None and len(raw) > 4 * MAX_RAW_CHARS):
        text = f"{text[:MAX_RAW_CHARS]}... [cut: {len(raw or b'')} bytes in all]"
    return DeadLetter(error=error, raw=text, topic=topic, partition=partition, offset=offset)


def too_large(raw: bytes | None, limit: int) -> str | None:
    """The reason a record over ``limit`` bytes is refused unread, or None."""
    if raw is not None and len(raw) > limit:
        return f"record of {len(raw)} bytes is over the {limit}-byte limit (max_record_bytes)"
    return None


def parse_event(
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Event | DeadLetter:
    """Parse one ``events`` record; never raises.

    >>> parse_event(b'{"event_id":"e1","type":"click","user_id":"u1","item_id":"i1","ts":1}').type
    'click'
    >>> parse_event(b'{"event_id":"e1"').error[:8]
    'not JSON'
    """
    result = _parse(Event, raw)
    if isinstance(result, str):
        return dead_letter(result, raw, topic, partition, offset)
    return result


def parse_recommendation_request(
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> RecommendationRequest | DeadLetter:
    """Parse one ``recommendation-requests`` record; never raises."""
    result = _parse(RecommendationRequest, raw)
    if isinstance(result, str):
        return dead_letter(result, raw, topic, partition, offset)
    return result


def parse_recommendation(
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Recommendation | DeadLetter:
    """Parse one ``recommendations`` record (read back by the dataflow); never raises."""
    result = _parse(Recommendation, raw)
    if isinstance(result, str):
        return dead_letter(result, raw, topic, partition, offset)
    return result


def parse_forget_request(
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> ForgetRequest | DeadLetter:
    """Parse one ``forget-requests`` record; never raises."""
    result = _parse(ForgetRequest, raw)
    if isinstance(result, str):
        return dead_letter(result, raw, topic, partition, offset)
    return result


def parse_rank_request(
    raw: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> RankRequest | DeadLetter:
    """Parse one ``rank-requests`` record; never raises."""
    result = _parse(RankRequest, raw)
    if isinstance(result, str):
        return dead_letter(result, raw, topic, partition, offset)
    return result
