"""The A/B report: ``recommendations`` + ``outcomes`` -> per-variant statistics.

Reads both topics from the beginning (or takes records already read, for
tests and simulations), keeps each list once by ``rec_id`` and each outcome
once by (rec_id, item_id, type) (delivery is at-least-once), joins outcomes to
their list, aggregates :class:`~experiments.stats.VariantCounts` per
(experiment, variant) and hands them to :func:`experiments.stats.build_report`.

An outcome counts for the variant of the list it names (the list is the
record of what the user was shown); an outcome whose list was not read, or
fell outside the time window, is an orphan and counts nowhere. Lists outside
every experiment (``NO_EXPERIMENT`` or no stamp) are left out.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from experiments.stats import ExperimentReport, VariantCounts, build_report
from experiments.stats import render_json as _render_json
from experiments.stats import render_markdown as _render_markdown
from streams.contracts import (
    NO_EXPERIMENT,
    DeadLetter,
    Outcome,
    Recommendation,
    Topics,
    Unattributed,
    parse,
)
from streams.kafka import TopicFollower

__all__ = [
    "ReadStats",
    "Report",
    "read_topics",
    "aggregate",
    "experiment_report",
    "experiment_report_from_kafka",
]

Record = Mapping[str, Any] | bytes | str


@dataclass(frozen=True)
class ReadStats:
    """What was read and what was left out, to judge the data behind a report."""

    lists: int = 0
    duplicate_lists: int = 0
    unassigned_lists: int = 0
    outcomes: int = 0
    duplicate_outcomes: int = 0
    orphan_outcomes: int = 0
    outside_window: int = 0
    invalid_records: int = 0
    users_in_several_variants: int = 0
    # Interactions that named a list and were not credited, by reason (the dataflow's
    # ``outcomes.unattributed``): how much of the data the counts above leave out.
    unattributed_unknown: int = 0
    unattributed_expired: int = 0
    unattributed_other_user: int = 0


@dataclass(frozen=True)
class Report:
    """Every experiment's report plus the read statistics."""

    experiments: tuple[ExperimentReport, ...]
    stats: ReadStats
    since: float | None = None
    until: float | None = None

    def _meta(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, **asdict(self.stats)}

    def to_markdown(self) -> str:
        notes = [f"{k.replace('_', ' ')}: {v}" for k, v in self._meta().items() if v is not None]
        return _render_markdown(self.experiments, notes)

    def to_json(self) -> str:
        return _render_json(self.experiments, self._meta())


def read_topics(
    brokers: str, topics: Topics, idle_s: float = 3.0, timeout_s: float = 10.0
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Every record of ``recommendations``, ``outcomes`` and ``outcomes.unattributed``.

    Stops once no new record arrived for ``idle_s`` seconds (the embedded
    broker has no reliable high watermarks to read up to). ``timeout_s``
    bounds the metadata lookup.
    """
    names = [topics.recommendations, topics.outcomes, topics.unattributed]
    follower = TopicFollower(brokers, names, timeout_s)
    read: dict[str, list[bytes]] = {name: [] for name in names}
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            messages = follower.poll(1000, min(0.2, idle_s))
            if messages:
                last = time.monotonic()
            for m in messages:
                read[m.topic()].append(m.value())
    finally:
        follower.close()
    return read[names[0]], read[names[1]], read[names[2]]


def _parse(model: type[Recommendation | Outcome | Unattributed], record: Record) -> Any:
    """The contract model, or None when the record does not satisfy it."""
    if isinstance(record, (bytes, str)):
        parsed = parse(model, record)
        return None if isinstance(parsed, DeadLetter) else parsed
    try:
        return model.model_validate(dict(record))
    except ValidationError:
        return None


def _inside(ts: float, since: float | None, until: float | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


def aggregate(
    recommendations: Iterable[Record],
    outcomes: Iterable[Record],
    since: float | None = None,
    until: float | None = None,
    unattributed: Iterable[Record] = (),
) -> tuple[dict[str, dict[str, VariantCounts]], ReadStats]:
    """Counts per experiment and variant, and what was read.

    Records are dicts, or JSON bytes/str as read from Kafka; each must satisfy
    its contract model (:class:`Recommendation`, :class:`Outcome`), else it is
    counted in ``invalid_records`` and skipped. The window ``[since, until)``
    (epoch seconds) applies to a list's ``created_ts`` and an outcome's ``ts``.
    """
    invalid = duplicate_lists = unassigned = outside = 0
    lists: dict[str, tuple[str, str, str]] = {}  # rec_id -> (experiment, variant, user)
    for raw in recommendations:
        rec = _parse(Recommendation, raw)
        if rec is None:
            invalid += 1
        elif rec.rec_id in lists:
            duplicate_lists += 1
        elif not _inside(rec.created_ts, since, until):
            outside += 1
            lists[rec.rec_id] = ("", "", "")  # seen, so a duplicate is not counted again
        elif rec.experiment.name == NO_EXPERIMENT.name or not rec.experiment.variant:
            unassigned += 1
            lists[rec.rec_id] = ("", "", "")
        else:
            lists[rec.rec_id] = (rec.experiment.name, rec.experiment.variant, rec.user_id)
    assigned = {k: v for k, v in lists.items() if v[0]}

    seen: set[tuple[str, str, str]] = set()
    duplicate_outcomes = orphans = used = 0
    clicked: set[str] = set()
    clicks: dict[tuple[str, str], int] = defaultdict(int)
    purchases: dict[tuple[str, str], int] = defaultdict(int)
    revenue: dict[tuple[str, str, str], float] = defaultdict(float)  # per (exp, variant, user)
    for raw in outcomes:
        out = _parse(Outcome, raw)
        if out is None:
            invalid += 1
            continue
        key = (out.rec_id, out.item_id, out.type)
        if key in seen:
            duplicate_outcomes += 1
            continue
        seen.add(key)
        if not _inside(out.ts, since, until):
            outside += 1
            continue
        if out.rec_id not in assigned:
            orphans += int(out.rec_id not in lists)
            continue
        used += 1
        exp, variant, user = assigned[out.rec_id]
        if out.type == "click":
            clicks[exp, variant] += 1
            clicked.add(out.rec_id)
        elif out.type == "purchase":
            purchases[exp, variant] += 1
            revenue[exp, variant, user] += out.revenue or 0.0

    n_lists: dict[tuple[str, str], int] = defaultdict(int)
    n_clicked: dict[tuple[str, str], int] = defaultdict(int)
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rec_id, (exp, variant, user) in assigned.items():
        n_lists[exp, variant] += 1
        n_clicked[exp, variant] += rec_id in clicked
        users[exp, variant].add(user)
    buyers: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (exp, variant, _), r in revenue.items():
        buyers[exp, variant].append(r)

    counts: dict[str, dict[str, VariantCounts]] = defaultdict(dict)
    for exp, variant in sorted(n_lists):
        b = buyers[exp, variant]
        counts[exp][variant] = VariantCounts(
            users=len(users[exp, variant]),
            lists=n_lists[exp, variant],
            clicked_lists=n_clicked[exp, variant],
            clicks=clicks[exp, variant],
            purchases=purchases[exp, variant],
            purchasers=len(b),
            revenue=sum(b),
            revenue_sq=sum(r * r for r in b),
        )
    lost: dict[str, int] = defaultdict(int)
    lost_seen: set[str] = set()
    for raw in unattributed:
        rec = _parse(Unattributed, raw)
        if rec is None:
            invalid += 1
        elif rec.event_id not in lost_seen and _inside(rec.ts, since, until):
            lost_seen.add(rec.event_id)
            lost[rec.reason] += 1
    per_user: dict[tuple[str, str], int] = defaultdict(int)
    for exp, variant in users:
        for user in users[exp, variant]:
            per_user[exp, user] += 1
    stats = ReadStats(
        lists=len(assigned),
        duplicate_lists=duplicate_lists,
        unassigned_lists=unassigned,
        outcomes=used,
        duplicate_outcomes=duplicate_outcomes,
        orphan_outcomes=orphans,
        outside_window=outside,
        invalid_records=invalid,
        users_in_several_variants=sum(1 for k in per_user.values() if k > 1),
        unattributed_unknown=lost["unknown"],
        unattributed_expired=lost["expired"],
        unattributed_other_user=lost["other_user"],
    )
    return dict(counts), stats


def experiment_report(
    recommendations: Iterable[Record],
    outcomes: Iterable[Record],
    *,
    experiment: str | None = None,
    weights: Mapping[str, float] | None = None,
    since: float | None = None,
    until: float | None = None,
    alpha: float = 0.05,
    sequential: bool = False,
    tau_relative: float = 0.1,
    srm_threshold: float = 0.001,
    unattributed: Iterable[Record] = (),
) -> Report:
    """The report over records already read (dicts or JSON bytes).

    ``experiment`` restricts it to one experiment (one with no traffic is
    reported, with zero counts, only when ``weights`` declare its variants).
    Outcomes of lists left out (outside the window or every experiment) are
    left out too. ``weights`` (variant ->
    weight, as in the experiment's config) are the expected shares for the
    SRM check and declare the variant order; None means equal shares. They
    apply to every experiment reported, so name ``experiment`` with them when
    several run. The other options go to :func:`experiments.stats.build_report`.
    """
    counts, stats = aggregate(recommendations, outcomes, since, until, unattributed)
    names = [experiment] if experiment is not None else sorted(counts)
    reports = tuple(
        build_report(
            name,
            counts.get(name, {}),
            weights,
            alpha=alpha,
            sequential=sequential,
            tau_relative=tau_relative,
            srm_threshold=srm_threshold,
        )
        for name in names
        if counts.get(name) or weights
    )
    return Report(reports, stats, since, until)


def experiment_report_from_kafka(
    brokers: str, topics: Topics, *, idle_s: float = 3.0, **options: Any
) -> Report:
    """:func:`experiment_report` over ``recommendations``, ``outcomes`` and
    ``outcomes.unattributed``."""
    recs, outcomes, unattributed = read_topics(brokers, topics, idle_s)
    return experiment_report(recs, outcomes, unattributed=unattributed, **options)
