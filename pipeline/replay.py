"""Replay a loaded dataset onto the ``events`` topic, in time order, at a chosen rate.

The caller owns the ``confluent_kafka.Producer`` (its config, its lifetime); this
module only produces, paces, and checks that every message was delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import confluent_kafka
from tqdm import tqdm

from corpus.datasets import Dataset

__all__ = ["ReplayError", "ReplayStats", "replay"]


class ReplayError(RuntimeError):
    """Some replayed messages were not delivered; the topic holds an incomplete replay."""


@dataclass(frozen=True)
class ReplayStats:
    """What one replay produced.

    ``events`` and ``bad_records`` count delivered messages, ``skipped`` is the dataset's
    count of source rows that are deliberately not events, ``seconds`` is the wall time
    including the final flush and ``rate`` the achieved messages per second.
    """

    events: int
    bad_records: int
    skipped: dict[str, int]
    seconds: float
    rate: float


def replay(
    dataset: Dataset,
    producer: confluent_kafka.Producer,
    topic: str,
    rate: float | None = None,
    limit: int | None = None,
    include_bad: bool = True,
    progress: bool = True,
    *,
    flush_timeout: float = 60.0,
) -> ReplayStats:
    """Produce the dataset's events to ``topic`` and wait until all are delivered.

    Each event goes out as key = user_id (UTF-8), value = ``Event.to_bytes()``, in time
    order. With ``include_bad`` the raw text of every bad record follows the events
    (key None), so the dataflow's parser dead-letters it and nothing is silently lost;
    bad records describe the whole source, so they are sent even when ``limit`` cuts
    the events short.

    Steps:

    1. Pace: message ``i`` is due ``i / rate`` seconds after the start on a monotonic
       clock; sleep only when ahead, so a replay that falls behind catches up at full
       speed (``rate`` None or 0 = as fast as possible).
    2. Produce; when the local queue is full (``BufferError``) serve delivery reports
       and retry the same message.
    3. Serve delivery reports after every message; stop at the first failed delivery.
    4. Flush, then raise :class:`ReplayError` if any message failed or is still queued
       after ``flush_timeout`` seconds.

    Raises :class:`ReplayError` on delivery failures, ``ValueError`` on a negative
    ``rate`` or ``limit``.
    """
    if rate is not None and rate < 0:
        raise ValueError(f"rate must be >= 0 events/s or None, got {rate}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    interactions = dataset.interactions
    n_events = len(interactions) if limit is None else min(limit, len(interactions))
    bad = dataset.bad_records if include_bad else []
    failures: list[str] = []

    def on_delivery(err: confluent_kafka.KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    def messages() -> Iterator[tuple[bytes | None, bytes]]:
        for event in interactions.events(0, n_events):
            yield event.user_id.encode("utf-8"), event.to_bytes()
        for record in bad:
            yield None, record.raw.encode("utf-8")

    interval = 1.0 / rate if rate else 0.0
    start = time.monotonic()
    with tqdm(total=n_events + len(bad), unit="ev", disable=not progress, desc=topic) as bar:
        for i, (key, value) in enumerate(messages()):
            # 1. Pace: sleep only when ahead of schedule (1 ms slack saves tiny sleeps).
            ahead = start + i * interval - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
            # 2. Produce, waiting for room in the local queue when it is full.
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            # 3. Serve delivery reports; a failure means the replay is already incomplete.
            producer.poll(0)
            if failures:
                raise ReplayError(
                    f"delivery to {topic!r} failed after {i + 1} messages: {failures[0]}; "
                    "check that the topic exists and the brokers are reachable"
                )
            bar.update()
    # 4. Flush and check that everything arrived.
    remaining = producer.flush(flush_timeout)
    if failures or remaining:
        raise ReplayError(
            f"{len(failures)} messages failed and {remaining} were still queued after a "
            f"{flush_timeout:g}s flush to {topic!r}"
            + (f"; first error: {failures[0]}" if failures else "")
            + "; check that the topic exists and the brokers are reachable"
        )
    seconds = time.monotonic() - start
    total = n_events + len(bad)
    return ReplayStats(
        events=n_events,
        bad_records=len(bad),
        skipped=dict(dataset.skipped),
        seconds=seconds,
        rate=total / seconds if seconds > 0 else 0.0,
    )
