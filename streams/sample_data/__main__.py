"""``python -m streams.sample_data``: rebuild the shipped online-retail slice."""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.sample_data import ONLINE_RETAIL, SampleSpec, make_online_retail_sample


def main(argv: list[str] | None = None) -> None:
    default = SampleSpec()
    parser = argparse.ArgumentParser(
        prog="python -m streams.sample_data",
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
