"""Cut the shipped online-retail sample (:data:`streams.sample_data.ONLINE_RETAIL`)
out of the full data, with the dataset reader's own rules::

    python -m corpus.sample --source ../shared/data/online-retail
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from streams.sample_data import ONLINE_RETAIL

__all__ = ["SampleSpec", "SampleSummary", "make_online_retail_sample"]


@dataclass(frozen=True)
class SampleSpec:
    """Which part of the full data the slice keeps.

    Every row (purchases, cancellations, postage, ...) of the customers who have at
    least ``min_baskets`` invoices with a valid purchase line on the days ``start`` to
    ``end`` (inclusive, ``YYYY-MM-DD``), keeping a customer when the first 8 bytes of
    sha256 of its id (``17850``), read as a fraction of 2**64, are below ``fraction``.
    """

    start: str = "2011-09-01"
    end: str = "2011-11-30"
    min_baskets: int = 3
    fraction: float = 0.4


@dataclass(frozen=True)
class SampleSummary:
    """What the slice holds: source rows, days, customers."""

    rows: int
    days: int
    customers: int


def _user(customer: str) -> str:
    """The user id the loader makes of a CustomerID (``17850.0`` -> ``17850``)."""
    return customer[:-2] if customer.endswith(".0") else customer


def _kept(user: str, fraction: float) -> bool:
    digest = hashlib.sha256(user.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def make_online_retail_sample(
    source: Path | str, out: Path | str, spec: SampleSpec = SampleSpec()
) -> SampleSummary:
    """Write the slice of the online-retail folder ``source`` into ``out/by-day``.

    Each day file becomes ``by-day/<day>.csv.gz`` (gzip level 9, no name or time in
    the header) holding the source header line and the kept rows, byte for byte and in
    source order; days without a kept row are left out. Earlier ``*.csv.gz`` files in
    ``out/by-day`` are removed first.
    """
    from corpus.datasets import DatasetError, _read_online_retail, _Reader

    files = [
        p for p in sorted(Path(source, "by-day").glob("*.csv")) if spec.start <= p.stem <= spec.end
    ]
    if not files:
        raise DatasetError(f"{source}: no by-day/*.csv files from {spec.start} to {spec.end}")
    # The loader's own rule for a valid purchase line decides what a basket is.
    reader = _Reader()
    _read_online_retail(reader, files)
    interactions = reader.interactions(None)
    baskets: dict[str, set[str | None]] = defaultdict(set)
    for user, basket in zip(interactions.user_id, interactions.basket, strict=True):
        baskets[user].add(basket)
    users = {
        u for u, b in baskets.items() if len(b) >= spec.min_baskets and _kept(u, spec.fraction)
    }

    by_day = Path(out, "by-day")
    by_day.mkdir(parents=True, exist_ok=True)
    for old in by_day.glob("*.csv.gz"):
        old.unlink()
    rows = days = 0
    for path in files:
        lines = io.StringIO(path.read_text(encoding="utf-8"), newline="").readlines()
        records = csv.reader(lines)
        next(records)  # the header; the loader checks it
        kept, end = [lines[0]], records.line_num
        for fields in records:
            start, end = end, records.line_num
            if len(fields) > 6 and fields[6] and _user(fields[6]) in users:
                kept.extend(lines[start:end])
        if len(kept) > 1:
            data = "".join(kept).encode("utf-8")
            (by_day / f"{path.name}.gz").write_bytes(gzip.compress(data, 9, mtime=0))
            rows += len(kept) - 1
            days += 1
    return SampleSummary(rows=rows, days=days, customers=len(users))


def main(argv: list[str] | None = None) -> None:
    default = SampleSpec()
    parser = argparse.ArgumentParser(
        prog="python -m corpus.sample",
        description="Cut the shipped online-retail sample out of the full data.",
    )
    parser.add_argument("--source", type=Path, required=True, help="full online-retail folder")
    parser.add_argument("--out", type=Path, default=ONLINE_RETAIL, help="sample folder")
    parser.add_argument("--start", default=default.start, help="first day (YYYY-MM-DD)")
    parser.add_argument("--end", default=default.end, help="last day (YYYY-MM-DD)")
    parser.add_argument(
        "--min-baskets", type=int, default=default.min_baskets, help="baskets per customer"
    )
    parser.add_argument(
        "--fraction", type=float, default=default.fraction, help="share of customers kept"
    )
    args = parser.parse_args(argv)
    spec = SampleSpec(args.start, args.end, args.min_baskets, args.fraction)
    summary = make_online_retail_sample(args.source, args.out, spec)
    print(
        f"{args.out}: {summary.rows} rows of {summary.customers} customers over {summary.days} days"
    )


if __name__ == "__main__":
    main()
