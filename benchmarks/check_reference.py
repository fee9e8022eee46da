"""Check the quality harness against EVALUATION.md's reference figures.

Runs P1 (no mask and masked) on online-retail and taobao and P2 on online-retail
with the reference baselines, prints every figure next to the reference one with
the run time of each evaluation, and exits 1 when a figure is off by more than
``--tolerance`` (tie-breaking alone moves figures by about 0.002).

    .venv/bin/python benchmarks/check_reference.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from time import perf_counter

import numpy as np

from corpus.datasets import load_dataset
from evaluation import (
    PrequentialReplay,
    ReferenceEmbeddings,
    default_methods,
    evaluate_p1,
    evaluate_p2,
    leave_last_out,
)

# (dataset, table) -> method -> (first metric, second metric), as in EVALUATION.md.
REFERENCE: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("online-retail", "P1 no mask"): {
        "popularity": (0.0393, 0.0210),
        "repeat-buy": (0.0869, 0.0416),
        "item-knn": (0.1272, 0.0715),
        "content": (0.0842, 0.0408),
    },
    ("online-retail", "P1 masked"): {
        "popularity": (0.0239, 0.0130),
        "item-knn": (0.0994, 0.0571),
        "content": (0.0630, 0.0364),
    },
    ("online-retail", "P2 all"): {
        "popularity": (0.5254, 0.1135),
        "repeat-buy": (0.7150, 0.2548),
        "item-knn": (0.4874, 0.1349),
    },
    ("online-retail", "P2 new"): {
        "popularity": (0.3331, 0.0663),
        "item-knn": (0.2731, 0.0607),
    },
    ("taobao", "P1 no mask"): {"popularity": (0.0373, 0.0143), "item-knn": (0.5394, 0.3464)},
}
COUNTS = {
    "online-retail P1": "4,095 users, 3,185 items, 393,322 interactions, 28% repeat targets",
    "online-retail P2": "18,402 invoices, 3,053 test baskets (2,567 with a new item), "
    "22.3 distinct items per basket, 52% repeats",
    "taobao P1": "241 users, 727 items, 5,208 interactions",
}


def _table(
    dataset: str, table: str, results: dict, metrics: tuple[str, str], seconds: float
) -> float:
    """Print one table; return the largest |ours - reference|."""
    print(f"\n{dataset} {table}  ({seconds:.1f} s)")
    print(f"  {'method':<12} {'n':>5}  " + "  ".join(f"{m:>18}" for m in metrics) + "  seconds")
    worst = 0.0
    reference = REFERENCE.get((dataset, table), {})
    for name, values in results.items():
        cells = []
        for pos, metric in enumerate(metrics):
            ref = reference.get(name, (None, None))[pos]
            if ref is None:
                cells.append(f"{values[metric]:.4f} (ref    -)")
            else:
                worst = max(worst, abs(values[metric] - ref))
                cells.append(f"{values[metric]:.4f} (ref {ref:.4f})")
        n, secs = int(values["n"]), values["seconds"]
        print(f"  {name:<12} {n:>5}  " + "  ".join(f"{c:>18}" for c in cells) + f"  {secs:6.1f}")
    return worst


def _p2_counts(replay: PrequentialReplay) -> str:
    """The replay's own figures: test baskets, their size and share of repeat items.

    The repeat share is the mean over baskets of the share of the basket's distinct
    items its customer bought before (pooled over all items it is 48%).
    """
    sizes, repeat_shares, with_new = [], [], 0
    for step in replay:
        for test in step.tests:
            sizes.append(len(test.basket.items))
            repeat_shares.append(float(np.isin(test.basket.items, test.earlier).mean()))
            with_new += bool(len(test.new_items))
    return (
        f"{len(replay.baskets):,} invoices, {len(sizes):,} test baskets ({with_new:,} with a "
        f"new item), {np.mean(sizes):.1f} distinct items per basket, "
        f"{np.mean(repeat_shares):.0%} repeats"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("STREAMREC_DATA_DIR", "/work/shared/data")),
        help="folder holding online-retail/ and taobao-userbehavior-sample/ "
        "[env: STREAMREC_DATA_DIR]",
    )
    parser.add_argument("--tolerance", type=float, default=0.002)
    args = parser.parse_args()
    worst = 0.0
    p1_metrics, p2_metrics = ("recall@10", "ndcg@10"), ("hr@10", "ndcg@10")

    for folder in ("online-retail", "taobao-userbehavior-sample"):
        start = perf_counter()
        data = load_dataset(args.data / folder)
        split = leave_last_out(data.interactions)
        embeddings = ReferenceEmbeddings(data.items)
        embeddings(split.item_ids)
        print(
            f"\n== {data.name}: load + split + reference embeddings {perf_counter() - start:.1f} s"
        )
        print(
            f"P1: {len(split.user_ids):,} users, {len(split.item_ids):,} items, "
            f"{split.n_interactions:,} interactions, {split.repeat_share:.0%} repeat targets"
        )
        print(f"reference: {COUNTS[f'{data.name} P1']}")
        for mask, table in ((False, "P1 no mask"), (True, "P1 masked")):
            methods = default_methods(embeddings, "p1")
            start = perf_counter()
            results = evaluate_p1(data, methods, mask=mask, split=split, embeddings=embeddings)
            worst = max(
                worst, _table(data.name, table, results, p1_metrics, perf_counter() - start)
            )

        if data.name == "online-retail":
            replay = PrequentialReplay(data.interactions)
            print(f"\nP2: {_p2_counts(replay)}")
            print(f"reference: {COUNTS['online-retail P2']}")
            start = perf_counter()
            p2 = evaluate_p2(data, default_methods(embeddings, "p2"), replay=replay)
            seconds = perf_counter() - start
            for variant, results in p2.items():
                table = f"P2 {variant}"
                worst = max(worst, _table(data.name, table, results, p2_metrics, seconds))

    verdict = "OK" if worst <= args.tolerance else "PROTOCOL DIFFERS"
    print(f"\nlargest difference from the reference: {worst:.4f} -> {verdict}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
